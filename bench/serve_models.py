"""The models bench_serve.py serves, each registered in a temporary MLflow store, with the request bodies every
server takes and a sample of rows whose answers are checked against the model loaded back through MLflow.

- ``mlp``: the digits MLP the tests train (the compiled numpy path; ``gpuflow-torch`` serves it with torch);
- ``cnn``: tests/fixtures/task_models.py's small CNN on digits as ``[1, 8, 8]`` images, trained on the digits
  prepared by their image spec (the torch path: a convolution is not compiled);
- ``sklearn``: a scikit-learn HistGradientBoostingClassifier on breast cancer with string labels, logged with
  ``pyfunc_predict_fn="predict_proba"`` (the pyfunc path).

``mlflow models serve`` is sent what its scoring server expects for the model's signature: ``{"inputs": ...}`` for
a tensor signature (nested to the tensor's shape), ``{"dataframe_split": ...}`` for a column signature.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = 20  # rows whose answers are checked on every server before it is measured


@dataclass(frozen=True)
class Model:
    kind: str
    tracking_uri: str
    uri: str
    path: str  # local folder of the MLflow model (MLServer, the reference server)
    gpuflow_body: dict[str, Any]  # one row, what wrk sends to gpuflow
    mlflow_body: dict[str, Any]  # the same row for mlflow models serve
    samples: list[tuple[dict[str, Any], dict[str, Any], Any]] = field(default_factory=list)  # bodies and label
    labels: list[Any] = field(default_factory=list)  # class order of mlflow's probabilities/logits

    @property
    def row(self) -> list[float]:
        return list(self.gpuflow_body["rows"][0])


def _register(tracking_uri: str, name: str, run_id: str) -> tuple[str, str]:
    import mlflow.artifacts
    from mlflow import MlflowClient

    from tasks.tracking.model_registry import model_location

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    tags = client.get_run(run_id).data.tags
    client.create_registered_model(name)
    source = model_location(client, tags["gpuflow.model_uri"])
    client.create_model_version(name, source=source, run_id=run_id, tags={"gpuflow.labels": tags["gpuflow.labels"]})
    return f"models:/{name}/1", mlflow.artifacts.download_artifacts(artifact_uri=source, tracking_uri=tracking_uri)


def make_model(kind: str, workdir: Path) -> Model:
    """Train, log and register the model of ``kind``; its sample answers come from the model loaded back."""
    sys.path.insert(0, str(ROOT))
    tracking_uri = f"sqlite:///{workdir / 'mlflow.db'}"
    if kind == "mlp":
        return _mlp(tracking_uri, workdir)
    if kind == "cnn":
        return _cnn(tracking_uri, workdir)
    if kind == "sklearn":
        return _sklearn(tracking_uri)
    raise SystemExit(f"unknown model {kind!r}: expected mlp, cnn or sklearn")


def _mlp(tracking_uri: str, workdir: Path) -> Model:
    import mlflow.pytorch
    import torch

    from tests.fixtures.datasets import write_digits_dataset
    from tests.fixtures.models import log_training_run, train_digits_model
    from workloads.dataset import read_split
    from workloads.store import ObjectStore

    dataset = write_digits_dataset((workdir / "store").as_uri())
    trained = train_digits_model(dataset)
    uri, path = _register(tracking_uri, "digits", log_training_run(tracking_uri, trained))
    features, _ = read_split(dataset, "test", ObjectStore())
    with torch.no_grad():
        logits = mlflow.pytorch.load_model(path)(torch.from_numpy(features[:SAMPLE])).numpy()
    rows = features.tolist()
    samples = [
        ({"rows": [rows[i]]}, {"inputs": [rows[i]]}, trained.labels[int(logits[i].argmax())]) for i in range(SAMPLE)
    ]
    return Model("mlp", tracking_uri, uri, path, samples[0][0], samples[0][1], samples, trained.labels)


def _cnn(tracking_uri: str, workdir: Path) -> Model:
    import mlflow.pytorch
    import torch

    from tasks.data.demo import write_digits_csv
    from tests.fixtures.spec_data import digits_tensor_spec, publish_by_spec
    from tests.fixtures.task_models import log_digits_cnn
    from workloads.dataset import read_split
    from workloads.store import ObjectStore

    write_digits_csv(str(workdir / "digits.csv"), ObjectStore())
    dataset = publish_by_spec(workdir / "store", workdir / "digits.csv", digits_tensor_spec(), "digits-image")
    uri, path = _register(tracking_uri, "digits-cnn", log_digits_cnn(tracking_uri, dataset))
    images = read_split(dataset, "test", ObjectStore())[0][:SAMPLE].reshape(-1, 1, 8, 8)
    with torch.no_grad():
        logits = mlflow.pytorch.load_model(path)(torch.from_numpy(images)).numpy()
    samples = [
        ({"rows": [image.reshape(-1).tolist()]}, {"inputs": [image.tolist()]}, int(logits[i].argmax()))
        for i, image in enumerate(images)
    ]
    return Model("cnn", tracking_uri, uri, path, samples[0][0], samples[0][1], samples, list(range(10)))


def _sklearn(tracking_uri: str) -> Model:
    import mlflow.pyfunc

    from tests.fixtures.models import (
        HGB_TRUSTED,
        breast_cancer_frame,
        log_sklearn_classifier,
        train_breast_cancer_classifier,
    )

    frame, _ = breast_cancer_frame()
    model = train_breast_cancer_classifier()
    uri, path = _register(
        tracking_uri, "breast-cancer", log_sklearn_classifier(tracking_uri, model, frame.iloc[:5], trusted=HGB_TRUSTED)
    )
    labels = [str(label) for label in model.classes_]
    picked = frame.sample(SAMPLE, random_state=0)
    probabilities = np.asarray(mlflow.pyfunc.load_model(path).predict(picked))
    columns = list(frame.columns)
    samples = [
        (
            {"rows": [row]},
            {"dataframe_split": {"columns": columns, "data": [row]}},
            labels[int(probabilities[i].argmax())],
        )
        for i, row in enumerate(picked.to_numpy().tolist())
    ]
    return Model("sklearn", tracking_uri, uri, path, samples[0][0], samples[0][1], samples, labels)


def answer_label(server: str, payload: bytes, labels: list[Any]) -> Any:
    """The label one server's answer to a one-row request names (gpuflow answers labels, mlflow the outputs)."""
    document = json.loads(payload)
    if server.startswith("gpuflow") or server == "reference":
        return document["predictions"][0]
    outputs = document["predictions"]
    first = outputs[0] if isinstance(outputs, list) else next(iter(outputs.values()))[0]
    return labels[int(np.asarray(first).argmax())]
