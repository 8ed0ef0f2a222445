"""Find the model a URI names in MLflow, download it and load it, through an explicit ``MlflowClient``.

MLflow's own ``models:/`` resolution reads the process-global tracking URI; the server is given its
tracking URI (``--tracking-uri`` or ``MLFLOW_TRACKING_URI``) and resolves through a client built from it,
the same logic as ``tasks/tracking/model_registry.py: model_location`` (copied: a workload imports nothing from tasks/).

Besides the module this gathers what serving needs: the class labels in logit order (the ``gpuflow.labels``
tag of the version, else of its training run), the feature count and names (from the signature, else the
input example, else the first linear layer) and an input example to warm up and verify with.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from workloads.server.config import EXIT_UNAVAILABLE, EXIT_USAGE
from workloads.server.errors import ModelLoadError
from workloads.tags import TAG_LABELS

log = logging.getLogger(__name__)

_NOT_FOUND = {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"}
_URI_FORMS = "models:/<name>/<version>, models:/<name>@<alias>, models:/m-<model id> or runs:/<run id>/<path>"


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


@dataclass(frozen=True)
class LoadedModel:
    """The module and what serving needs to feed it and name its outputs."""

    source: ModelSource
    module: Any
    n_features: int | None
    feature_names: list[str] | None
    example: np.ndarray | None
    seconds: float


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


def _run_labels(client: Any, run_id: str | None) -> list[Any] | None:
    if not run_id:
        return None
    run = client.get_run(run_id)
    return _labels_tag(run.data.tags.get(TAG_LABELS), f"MLflow run {run_id}")


def _resolve(client: Any, uri: str) -> ModelSource:
    if uri.startswith("runs:/"):
        run_id, _, path = uri.removeprefix("runs:/").partition("/")
        run = client.get_run(run_id)
        location = run.info.artifact_uri.rstrip("/") + (f"/{path}" if path else "")
        labels = _labels_tag(run.data.tags.get(TAG_LABELS), f"MLflow run {run_id}")
        return ModelSource(uri, f"run-{run_id}", run_id, location, run_id, labels)
    if not uri.startswith("models:/"):
        raise ModelLoadError(f"unsupported model URI {uri!r}: expected {_URI_FORMS}", EXIT_USAGE)
    rest = uri.removeprefix("models:/")
    alias = None
    if "@" in rest:
        name, _, alias = rest.partition("@")
        version = str(client.get_model_version_by_alias(name, alias).version)
    elif "/" in rest:
        name, _, version = rest.partition("/")
    elif not rest.startswith("m-"):
        raise ModelLoadError(f"model URI {uri!r} names no version or alias: expected {_URI_FORMS}", EXIT_USAGE)
    else:  # models:/m-<id>: a logged model outside the registry
        logged = client.get_logged_model(rest)
        labels = _labels_tag(logged.tags.get(TAG_LABELS), f"logged model {rest}") or _run_labels(
            client, logged.source_run_id
        )
        return ModelSource(uri, logged.name, rest, str(logged.artifact_location), logged.source_run_id, labels)
    found = client.get_model_version(name, version)
    labels = _labels_tag(found.tags.get(TAG_LABELS), f"model {name!r} version {version}")
    if labels is None:
        labels = _run_labels(client, found.run_id)
    location = str(client.get_model_version_download_uri(name, version))
    return ModelSource(uri, name, str(found.version), location, found.run_id, labels, alias)


def resolve(uri: str, tracking_uri: str | None) -> ModelSource:
    """The model ``uri`` names; :class:`ModelLoadError` with exit code 2 when it does not exist, 3 when
    MLflow cannot be reached or fails."""
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    try:
        return _resolve(client, uri)
    except MlflowException as exc:
        code = EXIT_USAGE if exc.error_code in _NOT_FOUND else EXIT_UNAVAILABLE
        raise ModelLoadError(f"cannot resolve {uri} in MLflow at {client.tracking_uri}: {exc.message}", code) from exc
    except ModelLoadError:
        raise
    except Exception as exc:  # connection errors and the like: retrying later may work
        raise ModelLoadError(
            f"cannot reach MLflow at {client.tracking_uri} for {uri}: {exc}", EXIT_UNAVAILABLE
        ) from exc


def _signature_features(model_meta: Any) -> tuple[int | None, list[str] | None]:
    """Feature count and names from the MLflow signature, when it has them."""
    signature = getattr(model_meta, "signature", None)
    if signature is None or signature.inputs is None:
        return None, None
    inputs = signature.inputs
    if inputs.has_input_names() and not inputs.is_tensor_spec():
        names = [str(name) for name in inputs.input_names()]
        return len(names), names
    specs = inputs.inputs
    if len(specs) == 1 and getattr(specs[0], "shape", None) is not None and len(specs[0].shape) == 2:
        width = int(specs[0].shape[1])
        return (width if width > 0 else None), None
    return None, None


def _example(model_meta: Any, path: str) -> np.ndarray | None:
    try:
        example = model_meta.load_input_example(path)
    except Exception as exc:  # a missing or odd example only costs the warm-up its realistic rows
        log.debug("no usable input example: %s", exc)
        return None
    if example is None:
        return None
    array = np.asarray(example.to_numpy() if hasattr(example, "to_numpy") else example)
    if array.ndim != 2 or array.dtype.kind not in "iuf":
        return None
    return np.ascontiguousarray(array, dtype=np.float32)


def load(source: ModelSource, tracking_uri: str | None) -> LoadedModel:
    """Download the model's files and load its PyTorch module on CPU."""
    started = time.perf_counter()
    import mlflow.artifacts
    import mlflow.pytorch
    from mlflow.models import Model

    try:
        path = mlflow.artifacts.download_artifacts(artifact_uri=source.location, tracking_uri=tracking_uri)
    except Exception as exc:
        raise ModelLoadError(f"cannot download {source.uri} from {source.location}: {exc}", EXIT_UNAVAILABLE) from exc
    try:
        meta = Model.load(path)
    except Exception as exc:
        raise ModelLoadError(f"{source.uri} at {source.location} is not an MLflow model: {exc}", EXIT_USAGE) from exc
    if "pytorch" not in meta.flavors:
        flavors = ", ".join(sorted(meta.flavors))
        raise ModelLoadError(f"{source.uri} has no pytorch flavor (it has {flavors}): expected a PyTorch model", 2)
    try:
        module = mlflow.pytorch.load_model(path, map_location="cpu")
    except Exception as exc:
        raise ModelLoadError(f"cannot load the PyTorch model {source.uri}: {exc}", EXIT_USAGE) from exc
    n_features, names = _signature_features(meta)
    example = _example(meta, path)
    if n_features is None and example is not None:
        n_features = int(example.shape[1])
    if example is not None and n_features is not None and example.shape[1] != n_features:
        example = None
    return LoadedModel(source, module, n_features, names, example, time.perf_counter() - started)
