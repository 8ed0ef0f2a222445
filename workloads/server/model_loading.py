"""Find the model a URI names in MLflow, download it and load it, through an explicit ``MlflowClient``.

MLflow's own ``models:/`` resolution reads the process-global tracking URI; the server is given its
tracking URI (``--tracking-uri`` or ``MLFLOW_TRACKING_URI``) and resolves through a client built from it,
the same logic as ``tasks/tracking/model_registry.py: model_location`` (copied: a workload imports nothing from tasks/).

Besides the model this gathers what serving needs: the task and the class labels in output order (the
``gpuflow.task`` and ``gpuflow.labels`` tags of the version, else of its training run), the input the
signature declares (inputs.py; without a signature the width comes from the input example, else the first
linear layer) and an input example to warm up and verify with. A model with the ``pytorch`` flavor loads as
its module; any other loads through ``mlflow.pyfunc``.
"""

from __future__ import annotations

import atexit
import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import numpy as np

from workloads.mlflow_errors import is_not_found
from workloads.server.config import EXIT_UNAVAILABLE, EXIT_USAGE, model_uri_problem
from workloads.server.errors import ModelLoadError
from workloads.server.inputs import InputSpec, example_rows, input_spec
from workloads.tags import TAG_LABELS, TAG_TASK

log = logging.getLogger(__name__)

TASKS = ("classification", "regression")


@dataclass(frozen=True)
class ModelSource:
    """Where a model URI points: its identity for metrics and logs, and its files."""

    uri: str
    name: str
    version: str
    location: str
    run_id: str | None
    labels: list[Any] | None
    alias: str | None = None
    task: str = "classification"


@dataclass(frozen=True)
class LoadedModel:
    """The model (a torch module, or a pyfunc model) and what serving needs to feed it and name its outputs."""

    source: ModelSource
    module: Any
    n_features: int | None
    feature_names: list[str] | None
    example: np.ndarray | None
    seconds: float
    flavor: str = "pytorch"  # or "pyfunc"
    inputs: InputSpec | None = None  # None: no signature (plain float rows of n_features)


def _client(tracking_uri: str | None) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _labels_tag(raw: str | None, where: str) -> list[Any] | None:
    if not raw:
        return None
    try:
        labels = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{where} has a {TAG_LABELS} tag that is not JSON: {raw[:80]!r}", EXIT_USAGE) from exc
    if not isinstance(labels, list) or not labels:
        raise ModelLoadError(f"{where} has a {TAG_LABELS} tag that is not a non-empty JSON list", EXIT_USAGE)
    return labels


def _task_tag(raw: str | None, where: str) -> str | None:
    if not raw:
        return None
    if raw not in TASKS:
        raise ModelLoadError(f"{where} has a {TAG_TASK} tag {raw[:40]!r}; expected one of {', '.join(TASKS)}", 2)
    return raw


def _described(tags: dict[str, str], where: str) -> tuple[list[Any] | None, str | None]:
    """The labels and the task a set of tags gives (each None when absent)."""
    return _labels_tag(tags.get(TAG_LABELS), where), _task_tag(tags.get(TAG_TASK), where)


def _with_run(
    client: Any, run_id: str | None, labels: list[Any] | None, task: str | None
) -> tuple[list[Any] | None, str]:
    """Fill what the model's own tags lack from its training run's tags; no task tag at all is classification."""
    if run_id and (labels is None or task is None):
        run_labels, run_task = _described(client.get_run(run_id).data.tags, f"MLflow run {run_id}")
        labels = labels if labels is not None else run_labels
        task = task or run_task
    return labels, task or "classification"


def _resolve(client: Any, uri: str) -> ModelSource:
    if (problem := model_uri_problem(uri)) is not None:
        raise ModelLoadError(problem, EXIT_USAGE)
    if uri.startswith("runs:/"):
        run_id, _, path = uri.removeprefix("runs:/").partition("/")
        run = client.get_run(run_id)
        location = run.info.artifact_uri.rstrip("/") + (f"/{path}" if path else "")
        labels, task = _described(run.data.tags, f"MLflow run {run_id}")
        return ModelSource(uri, f"run-{run_id}", run_id, location, run_id, labels, task=task or "classification")
    rest = uri.removeprefix("models:/")
    alias = None
    if "@" in rest:
        name, _, alias = rest.partition("@")
        version = str(client.get_model_version_by_alias(name, alias).version)
    elif "/" in rest:
        name, _, version = rest.partition("/")
    else:  # models:/m-<id>: a logged model outside the registry
        logged = client.get_logged_model(rest)
        labels, task = _with_run(client, logged.source_run_id, *_described(logged.tags, f"logged model {rest}"))
        location = str(logged.artifact_location)
        return ModelSource(uri, logged.name, rest, location, logged.source_run_id, labels, task=task)
    found = client.get_model_version(name, version)
    labels, task = _with_run(client, found.run_id, *_described(found.tags, f"model {name!r} version {version}"))
    location = str(client.get_model_version_download_uri(name, version))
    return ModelSource(uri, name, str(found.version), location, found.run_id, labels, alias, task)


def resolve(uri: str, tracking_uri: str | None) -> ModelSource:
    """The model ``uri`` names; :class:`ModelLoadError` with exit code 2 when it does not exist, 3 when
    MLflow cannot be reached or fails."""
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    try:
        return _resolve(client, uri)
    except MlflowException as exc:
        code = EXIT_USAGE if is_not_found(exc) else EXIT_UNAVAILABLE
        raise ModelLoadError(f"cannot resolve {uri} in MLflow at {client.tracking_uri}: {exc.message}", code) from exc
    except ModelLoadError:
        raise
    except Exception as exc:  # connection errors and the like: retrying later may work
        raise ModelLoadError(
            f"cannot reach MLflow at {client.tracking_uri} for {uri}: {exc}", EXIT_UNAVAILABLE
        ) from exc


def _load_module(meta: Any, path: str, source: ModelSource) -> tuple[Any, str]:
    """The PyTorch module (``pytorch`` flavor) or the pyfunc model (any other flavor), and which it is."""
    if "pytorch" in meta.flavors:
        import mlflow.pytorch

        try:
            return mlflow.pytorch.load_model(path, map_location="cpu"), "pytorch"
        except Exception as exc:
            raise ModelLoadError(f"cannot load the PyTorch model {source.uri}: {exc}", EXIT_USAGE) from exc
    if "python_function" not in meta.flavors:
        flavors = ", ".join(sorted(meta.flavors))
        raise ModelLoadError(
            f"{source.uri} has neither a pytorch nor a python_function flavor (it has {flavors}): expected a "
            "model logged with mlflow.<flavor>.log_model",
            EXIT_USAGE,
        )
    import mlflow.pyfunc

    try:
        return mlflow.pyfunc.load_model(path), "pyfunc"
    except Exception as exc:
        raise ModelLoadError(f"cannot load {source.uri} through mlflow.pyfunc: {exc}", EXIT_USAGE) from exc


def _example(meta: Any, path: str, spec: InputSpec | None) -> np.ndarray | None:
    try:
        example = meta.load_input_example(path)
    except Exception as exc:  # a missing or odd example only costs the warm-up its realistic rows
        log.debug("no usable input example: %s", exc)
        return None
    return example_rows(example, spec)


def _download(location: str, tracking_uri: str | None) -> str:
    """The model's local folder: a local store's own folder as it is, else a copy in a folder the server removes
    when it exits (MLflow's default for a remote store, a new /tmp folder per download, is never removed: each
    server start against a tracking server left a copy of its model behind)."""
    import mlflow.artifacts

    if urlparse(location).scheme in ("", "file"):
        return str(mlflow.artifacts.download_artifacts(artifact_uri=location, tracking_uri=tracking_uri))
    folder = tempfile.mkdtemp(prefix="gpuflow-model-")
    atexit.register(shutil.rmtree, folder, True)
    return str(mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=folder, tracking_uri=tracking_uri))


def load(source: ModelSource, tracking_uri: str | None) -> LoadedModel:
    """Download the model's files and load it on CPU: its PyTorch module, or its pyfunc model."""
    started = time.perf_counter()
    from mlflow.models import Model

    try:
        path = _download(source.location, tracking_uri)
    except Exception as exc:
        raise ModelLoadError(f"cannot download {source.uri} from {source.location}: {exc}", EXIT_UNAVAILABLE) from exc
    try:
        meta = Model.load(path)
    except Exception as exc:
        raise ModelLoadError(f"{source.uri} at {source.location} is not an MLflow model: {exc}", EXIT_USAGE) from exc
    module, flavor = _load_module(meta, path, source)
    spec = input_spec(meta.signature, meta.metadata, torch=flavor == "pytorch", where=source.uri)
    example = _example(meta, path, spec)
    n_features = spec.n_features if spec else (int(example.shape[1]) if example is not None else None)
    names = spec.feature_names if spec else None
    seconds = time.perf_counter() - started
    return LoadedModel(source, module, n_features, names, example, seconds, flavor, spec)
