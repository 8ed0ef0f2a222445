"""Resolving every model URI form through an explicit client, and checking a model before serving it.

Runs against a real MLflow SQLite store (no server) with a tiny MLP logged the way the trainer logs models.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import mlflow.pytorch
import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from torch import nn

from workloads.server.config import EXIT_USAGE, ServerConfig
from workloads.server.errors import ModelLoadError
from workloads.server.model_loading import load, resolve
from workloads.server.predictor import build, warm_up

LABELS = ["setosa", "versicolor", "virginica"]


@dataclass(frozen=True)
class Logged:
    tracking_uri: str
    run_id: str
    model_id: str
    module: nn.Module


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Logged]:
    root: Path = tmp_path_factory.mktemp("loading")
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    experiment = client.create_experiment("serving", artifact_location=(root / "artifacts").as_uri())
    run = client.create_run(experiment, tags={"gpuflow.labels": json.dumps(LABELS)})
    mlflow.set_tracking_uri(tracking_uri)
    try:
        info = mlflow.pytorch.log_model(
            module,
            name="model",
            input_example=np.ones((2, 4), np.float32),
            run_id=run.info.run_id,
            pip_requirements=[f"torch=={torch.__version__}"],  # inferring them loads the model in a subprocess
        )
    finally:
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]
    client.create_registered_model("iris")
    location = str(client.get_logged_model(info.model_id).artifact_location)
    client.create_model_version("iris", source=location, run_id=run.info.run_id)  # labels only on the run
    client.create_model_version("iris", source=location, tags={"gpuflow.labels": json.dumps(["a", "b", "c"])})
    client.set_registered_model_alias("iris", "champion", "2")
    yield Logged(tracking_uri, run.info.run_id, info.model_id, module)


def test_every_uri_form_resolves_to_its_files_labels_and_identity(logged: Logged) -> None:
    by_version = resolve("models:/iris/1", logged.tracking_uri)
    by_alias = resolve("models:/iris@champion", logged.tracking_uri)
    by_id = resolve(f"models:/{logged.model_id}", logged.tracking_uri)
    by_run = resolve(f"runs:/{logged.run_id}/model", logged.tracking_uri)
    assert (by_version.name, by_version.version, by_version.labels) == ("iris", "1", LABELS)
    assert (by_alias.version, by_alias.alias, by_alias.labels) == ("2", "champion", ["a", "b", "c"])
    assert (by_id.version, by_id.labels) == (logged.model_id, LABELS)
    assert (by_run.name, by_run.labels) == (f"run-{logged.run_id}", LABELS)
    assert by_version.location == by_id.location


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("models:/iris/9", "not found"),
        ("models:/iris@nope", "alias nope not found"),
        ("models:/nothing@champion", "not found"),
        ("models:/iris", "names no version or alias"),
        ("s3://bucket/model", "unsupported model URI"),
    ],
)
def test_unknown_models_are_exit_code_2_naming_the_uri(logged: Logged, uri: str, says: str) -> None:
    with pytest.raises(ModelLoadError) as caught:
        resolve(uri, logged.tracking_uri)
    assert caught.value.exit_code == EXIT_USAGE
    assert uri in str(caught.value) and says in str(caught.value)


def test_the_loaded_model_is_compiled_and_answers_like_the_module(logged: Logged) -> None:
    loaded = load(resolve("models:/iris/1", logged.tracking_uri), logged.tracking_uri)
    assert loaded.n_features == 4 and loaded.example is not None
    predictor = build(loaded, ServerConfig(model_uri="models:/iris/1"))
    assert (predictor.backend, predictor.n_features, predictor.labels) == ("numpy", 4, LABELS)
    x = np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32)
    with torch.no_grad():
        expected = logged.module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(predictor.infer(x), expected, rtol=1e-5, atol=1e-5)
    seconds, full_batch = warm_up(predictor, ServerConfig(model_uri="m", warmup_batches=3), loaded.example)
    assert seconds > 0 and 0 < full_batch < seconds

    torch_predictor = build(loaded, ServerConfig(model_uri="models:/iris/1", backend="torch"))
    assert torch_predictor.backend == "torch"
    np.testing.assert_allclose(torch_predictor.infer(x), expected, rtol=1e-6)


def test_labels_that_do_not_match_the_outputs_are_refused(logged: Logged) -> None:
    source = resolve("models:/iris/1", logged.tracking_uri)
    loaded = load(source, logged.tracking_uri)
    wrong = dataclasses.replace(loaded, source=dataclasses.replace(source, labels=["x", "y"]))
    with pytest.raises(ModelLoadError, match=r"2 labels in gpuflow\.labels but the model outputs 3 logits") as caught:
        build(wrong, ServerConfig(model_uri="models:/iris/1"))
    assert caught.value.exit_code == EXIT_USAGE


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: tests/gpu serves on it")
def test_device_cuda_without_a_gpu_is_a_usage_error_naming_the_flag(logged: Logged) -> None:
    loaded = load(resolve("models:/iris/1", logged.tracking_uri), logged.tracking_uri)
    with pytest.raises(ModelLoadError, match=r"--device cuda was requested but no CUDA device") as caught:
        build(loaded, ServerConfig(model_uri="models:/iris/1", device="cuda"))
    assert caught.value.exit_code == EXIT_USAGE


def test_the_cpu_device_is_reported_for_both_backends(logged: Logged) -> None:
    loaded = load(resolve("models:/iris/1", logged.tracking_uri), logged.tracking_uri)
    for backend in ("auto", "torch"):
        assert build(loaded, ServerConfig(model_uri="models:/iris/1", backend=backend)).device == "cpu"
