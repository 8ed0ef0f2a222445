"""What a trainer that exited 0 must have left behind (docs/trainers.md, "Outputs"), checked point by point.

A model logged to the run (a LoggedModel whose source run it is, or a model folder among the run's
artifacts) that loads, whose signature takes the dataset's features and whose answers on five validation
rows have the task's shape; and the task's primary metric reported. Each failed point becomes one
:class:`ContractBreach` line that names the point and the fix; any of them ends the launch with exit 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from workloads.dataset import DatasetManifest, read_split
from workloads.model_input import InputMismatch, category_forms, category_vocabularies, model_frame, signature_columns
from workloads.sdk.contract import CONTRACT, ENV_METRICS_FILE, ENV_RUN_ID, MODEL_NAME, PRIMARY_METRIC, tensor_shape
from workloads.store import ObjectStore
from workloads.trainer.config import EXIT_CONFIG, TrainerError

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.types import Schema

SAMPLE_ROWS = 5
LOG_HINT = f"mlflow.<flavor>.log_model(..., name='{MODEL_NAME}', signature=...) into {ENV_RUN_ID}"


class ContractBreach(TrainerError):
    """A trainer exited 0 without keeping a point of the contract; permanent (exit 2)."""

    exit_code = EXIT_CONFIG


@dataclass(frozen=True)
class CheckedModel:
    uri: str
    flavors: tuple[str, ...]


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join("N" if n == -1 else str(n) for n in shape) + "]"


def find_model(client: MlflowClient, run_id: str) -> tuple[str, dict[str, Any]] | None:
    """The run's model URI (its newest LoggedModel named ``model``, else its newest) and its flavors."""
    experiment_id = client.get_run(run_id).info.experiment_id
    found = list(client.search_logged_models([experiment_id], filter_string=f"source_run_id = '{run_id}'"))
    if found:
        found.sort(key=lambda m: (m.name == MODEL_NAME, m.creation_timestamp or 0), reverse=True)
        model = found[0]
        return model.model_uri, _flavors(model.model_uri)
    for entry in client.list_artifacts(run_id):
        if entry.is_dir and any(f.path.endswith("/MLmodel") for f in client.list_artifacts(run_id, entry.path)):
            uri = f"runs:/{run_id}/{entry.path}"
            return uri, _flavors(uri)
    return None


def _flavors(uri: str) -> dict[str, Any]:
    from mlflow.models import get_model_info

    try:
        return dict(get_model_info(uri).flavors)
    except Exception:  # unreadable MLmodel: loading will say why
        return {}


def load(uri: str, flavors: dict[str, Any]) -> tuple[Any, Schema | None]:
    """The model as pyfunc (a pytorch model without a pyfunc flavor: as the torch module) and its input schema."""
    import mlflow.pyfunc

    if "python_function" not in flavors and "pytorch" in flavors:
        import mlflow.pytorch
        from mlflow.models import get_model_info

        module = mlflow.pytorch.load_model(uri, map_location="cpu")
        signature = get_model_info(uri).signature
        return module, signature.inputs if signature is not None else None
    # On a GPU node MLflow loads torch models onto CUDA, and refuses an exported (pt2) module whose weights were
    # saved on the CPU: the check asks whether the model loads and answers, on the CPU, where log_model put it.
    model = mlflow.pyfunc.load_model(uri, model_config={"device": "cpu"} if "pytorch" in flavors else None)
    return model, model.metadata.get_input_schema()


def check_schema(schema: Schema | None, manifest: DatasetManifest, uri: str) -> list[str]:
    """Problems of the signature's input against the manifest's features (empty: it fits)."""
    features = manifest.features
    shape = tensor_shape(manifest)
    wanted = f"{_shape((-1, len(features)))}" + (f" or {_shape((-1, *shape))}" if shape else "")
    if schema is None:
        return [
            f"model {uri} has no signature: log it with signature=mlflow.models.infer_signature(x, y), x being "
            f"the dataset's features {wanted}"
        ]
    if schema.is_tensor_spec():
        specs: list[Any] = list(schema.inputs)
        if len(specs) != 1:
            return [f"model {uri} takes {len(specs)} input tensors; the dataset gives one: {wanted}"]
        got = tuple(specs[0].shape)
        fits = got[1:] == (len(features),) or (shape is not None and got[1:] == shape)
        if not fits:
            return [
                f"model {uri} signature takes a tensor {_shape(got)}; the dataset's features are {wanted}: "
                "log the model with a signature inferred from the dataset's rows"
            ]
        return []
    names = schema.input_names()
    if len(names) != len(features):
        return [
            f"model {uri} signature takes {len(names)} columns; the dataset has {len(features)} features "
            f"{_names(features)}: log the model with a signature inferred from the dataset's rows"
        ]
    if schema.has_input_names() and set(map(str, names)) != set(features):
        unknown = [n for n in names if n not in features]
        return [
            f"model {uri} signature names columns {_names([str(n) for n in unknown])} the dataset does not have; "
            f"its features are {_names(features)}"
        ]
    try:  # a category column is taken as its strings or its codes; another type fits neither
        category_forms(signature_columns(schema, features) or (), category_vocabularies(manifest))
    except InputMismatch as exc:
        return [f"model {uri}: {exc}"]
    return []


def _names(names: list[str]) -> str:
    return "[" + ", ".join(names[:6]) + (f", ... ({len(names)} in all)" if len(names) > 6 else "") + "]"


def sample_input(schema: Schema, manifest: DatasetManifest, folder: Path) -> Any:
    """The first validation rows, shaped and typed as the signature asks (categories as its strings or codes,
    workloads/model_input.py, as evaluation and the canary give them)."""
    x, _ = read_split(str(folder), "val", ObjectStore(), manifest=manifest)
    x = x[:SAMPLE_ROWS]
    if schema.is_tensor_spec():
        spec: Any = schema.inputs[0]
        return x.reshape((x.shape[0], *spec.shape[1:])).astype(spec.type, copy=False)
    columns = signature_columns(schema, manifest.features) or ()
    frame = model_frame(x, manifest.features, columns, category_vocabularies(manifest))
    frame.columns = schema.input_names()  # unnamed columns keep MLflow's positions
    return frame


def predict(model: Any, sample: Any) -> np.ndarray:
    if hasattr(model, "predict"):
        out = model.predict(sample)
    else:  # a torch module
        import torch

        with torch.no_grad():
            out = model(torch.from_numpy(np.asarray(sample))).numpy()
    return np.asarray(out.to_numpy() if hasattr(out, "to_numpy") else out)


def check_output(output: np.ndarray, manifest: DatasetManifest, uri: str) -> list[str]:
    n = output.shape[0] if output.ndim else 0
    if manifest.task == "classification":
        classes = len(manifest.class_names)
        if output.shape != (n, classes) or n == 0:
            return [
                f"model {uri} answers {n or SAMPLE_ROWS} validation rows with shape {list(output.shape)}; the dataset "
                f"has {classes} classes: expected [{n or SAMPLE_ROWS}, {classes}] (class probabilities or logits in "
                "the manifest's class order)"
            ]
        return []
    if output.shape not in ((n,), (n, 1)) or n == 0:
        return [
            f"model {uri} answers {n or SAMPLE_ROWS} validation rows with shape {list(output.shape)}; a regression "
            f"model answers [{n or SAMPLE_ROWS}] or [{n or SAMPLE_ROWS}, 1] values"
        ]
    return []


def check_model(client: MlflowClient, run_id: str, manifest: DatasetManifest, folder: Path) -> CheckedModel:
    """Find, load and try the run's model; raises :class:`ContractBreach` at the first point it fails."""
    found = find_model(client, run_id)
    if found is None:
        raise ContractBreach(f"exited 0 but logged no model to run {run_id}: log one with {LOG_HINT}")
    uri, flavors = found
    try:
        model, schema = load(uri, flavors)
    except Exception as exc:
        raise ContractBreach(
            f"model {uri} does not load with mlflow.pyfunc.load_model ({type(exc).__name__}: {_first_line(exc)}): "
            "log it with a flavor whose libraries the serving image has"
        ) from exc
    problems = check_schema(schema, manifest, uri)
    if problems:
        raise ContractBreach(problems[0])
    assert schema is not None
    try:
        output = predict(model, sample_input(schema, manifest, folder))
    except Exception as exc:
        raise ContractBreach(
            f"model {uri} fails on {SAMPLE_ROWS} validation rows ({type(exc).__name__}: {_first_line(exc)})"
        ) from exc
    problems = check_output(output, manifest, uri)
    if problems:
        raise ContractBreach(problems[0])
    return CheckedModel(uri, tuple(sorted(flavors)))


def check_primary_metric(reported: bool, manifest: DatasetManifest, run_id: str) -> None:
    metric = PRIMARY_METRIC[manifest.task]
    if not reported:
        raise ContractBreach(
            f"exited 0 but never reported {metric}, the {manifest.task} task's primary metric, to run {run_id}: "
            f'append {{"step": N, "metrics": {{"{metric}": ...}}}} lines to {ENV_METRICS_FILE}'
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def breach_line(message: str) -> str:
    return f"error: contract {CONTRACT}: {message}"
