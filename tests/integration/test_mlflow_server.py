"""The evaluate stage against a real ``mlflow server`` over HTTP, as a team would run it.

Proves the client/server path: a model logged over HTTP with proxied artifacts (mlflow-artifacts:/),
loaded back by the flow, registered, the gate applied and the aliases moved on the server, with the
tracking server chosen by a saved MLflowTracking block.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from blocks.mlflow_tracking import MLflowTracking
from flows.evaluate import evaluate
from tasks.core import settings
from tasks.evaluation.scoring import load_model, read_test_split
from tests.conftest import MlflowServer
from tests.fixtures.datasets import write_digits_dataset
from tests.fixtures.models import log_training_run, train_digits_model
from workloads.store import ObjectStore

pytestmark = pytest.mark.usefixtures("prefect_api")


def test_register_gate_and_aliases_through_a_tracking_server(
    mlflow_server: MlflowServer, gpuflow_home: Path, tmp_path: Path
) -> None:
    suffix = uuid.uuid4().hex[:8]
    model_name, experiment, block = f"digits-{suffix}", f"gpuflow-{suffix}", f"team-mlflow-{suffix}"
    MLflowTracking(tracking_uri=mlflow_server.url, experiment_name=experiment).save(block)
    dataset_uri = write_digits_dataset(settings.store_uri())
    good_run = log_training_run(mlflow_server.url, train_digits_model(dataset_uri), experiment=experiment)
    bad_run = log_training_run(
        mlflow_server.url, train_digits_model(dataset_uri, "shuffled-labels"), experiment=experiment
    )

    first = evaluate(train_run_id=good_run, dataset_uri=dataset_uri, model_name=model_name, tracking=block)
    second = evaluate(train_run_id=bad_run, dataset_uri=dataset_uri, model_name=model_name, tracking=block)

    assert first.gate.passed and first.champion_version == "1"
    assert not second.gate.passed and (second.model_version, second.champion_version) == ("2", "1")
    client = MlflowClient(tracking_uri=mlflow_server.url, registry_uri=mlflow_server.url)
    assert dict(client.get_registered_model(model_name).aliases) == {"champion": "1", "challenger": "2"}
    champion = client.get_model_version_by_alias(model_name, "champion")
    assert champion.run_id == good_run
    assert str(champion.source).startswith("mlflow-artifacts:")  # stored behind the server's artifact proxy
    assert client.get_experiment(client.get_run(first.evaluate_run_id).info.experiment_id).name == experiment
    png = Path(client.download_artifacts(second.evaluate_run_id, "evaluation/confusion_matrix.png", str(tmp_path)))
    assert png.read_bytes()[:4] == b"\x89PNG"

    # What serving will do: load models:/<name>@champion from the server and predict the test split.
    served = load_model(MLflowTracking(tracking_uri=mlflow_server.url), f"models:/{model_name}@champion")
    split = read_test_split(ObjectStore(), dataset_uri)
    with torch.inference_mode():
        predicted = served(torch.from_numpy(split.features)).argmax(dim=1).numpy()
    assert float(np.mean(predicted == split.labels)) == pytest.approx(first.metrics["accuracy"])
    # Nothing leaked onto the embedded SQLite store.
    assert not (gpuflow_home / "mlflow.db").exists()
