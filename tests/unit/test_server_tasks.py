"""A model's task decides what the server checks before it is ready: refusals name the tag or the output that does
not fit it. Real MLflow SQLite store, models logged with MLflow's own flavors."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import mlflow
import mlflow.pytorch
import mlflow.sklearn
import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from sklearn.linear_model import LogisticRegression
from torch import nn

from workloads.server.config import EXIT_USAGE, ServerConfig
from workloads.server.errors import ModelLoadError
from workloads.server.model_loading import load, resolve
from workloads.server.predictor import build
from workloads.tags import TAG_LABELS, TAG_TASK

X = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)
Y = np.where(X[:, 0] > 0, "up", "down")


@dataclass(frozen=True)
class Logged:
    tracking_uri: str
    runs: dict[str, str]  # what -> models:/m-<id> URI (its run's tags hold the task and labels)


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Logged:
    root: Path = tmp_path_factory.mktemp("tasks")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("tasks", artifact_location=(root / "artifacts").as_uri())
    torch.manual_seed(0)
    models = {
        "three-outputs": (nn.Linear(4, 3).eval(), {TAG_TASK: "regression"}),
        "ranking": (nn.Linear(4, 1).eval(), {TAG_TASK: "ranking"}),
        "labels-not-probabilities": (LogisticRegression().fit(X, Y), {TAG_LABELS: json.dumps(["down", "up"])}),
    }
    runs = {}
    mlflow.set_tracking_uri(uri)
    try:
        for what, (model, tags) in models.items():
            run = client.create_run(experiment, tags=tags)
            with mlflow.start_run(run_id=run.info.run_id):
                if isinstance(model, nn.Module):
                    # named requirements: inferring them loads the model in a subprocess (seconds)
                    info = mlflow.pytorch.log_model(
                        model, name="model", input_example=X[:2], pip_requirements=[f"torch=={torch.__version__}"]
                    )
                else:  # predict gives labels: the classifier was not logged with pyfunc_predict_fn="predict_proba"
                    requirements = ["scikit-learn"]
                    info = mlflow.sklearn.log_model(
                        model, name="model", input_example=X[:2], pip_requirements=requirements
                    )
            runs[what] = f"models:/{info.model_id}"
    finally:
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]
    return Logged(uri, runs)


def refusal(logged: Logged, what: str, backend: str = "auto") -> str:
    uri = logged.runs[what]
    with pytest.raises(ModelLoadError) as caught:
        build(load(resolve(uri, logged.tracking_uri), logged.tracking_uri), ServerConfig(uri, backend=backend))
    assert caught.value.exit_code == EXIT_USAGE
    return str(caught.value)


def test_a_regressor_with_several_outputs_is_refused(logged: Logged) -> None:
    says = refusal(logged, "three-outputs")
    assert "a regression model (gpuflow.task) outputs shape [130, 3]; expected [rows] or [rows, 1]" in says


def test_an_unknown_task_tag_is_refused_naming_it(logged: Logged) -> None:
    with pytest.raises(
        ModelLoadError, match=r"gpuflow\.task tag 'ranking'; expected one of classification, regression"
    ):
        resolve(logged.runs["ranking"], logged.tracking_uri)


def test_a_pyfunc_classifier_must_answer_probabilities(logged: Logged) -> None:
    says = refusal(logged, "labels-not-probabilities")
    assert "predict returns <U4 values, not numbers" in says and "pyfunc_predict_fn='predict_proba'" in says


def test_a_pyfunc_model_cannot_be_forced_onto_a_torch_backend(logged: Logged) -> None:
    assert "--backend torch needs a pytorch model" in refusal(logged, "labels-not-probabilities", backend="torch")
