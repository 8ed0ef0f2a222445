"""The trainer contract ``gpuflow-trainer/1`` in code: the variable names, the metrics line, the exit codes.

Both sides import it: the launcher (which sets the variables and reads the lines) and the SDK (which reads the
variables and writes the lines), so the two cannot drift apart. docs/trainers.md is the reference for people;
this module is the reference for code. Standard library only: a trainer process imports it first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from workloads.dataset import DatasetManifest

CONTRACT = "gpuflow-trainer/1"

# What the launcher sets for the trainer (docs/trainers.md, "Inputs").
ENV_CONTRACT = "GPUFLOW_TRAINER_CONTRACT"
ENV_DATASET_URI = "GPUFLOW_DATASET_URI"
ENV_DATASET_DIR = "GPUFLOW_DATASET_DIR"
ENV_TASK = "GPUFLOW_TASK"
ENV_PRIMARY_METRIC = "GPUFLOW_PRIMARY_METRIC"
ENV_HPARAMS = "GPUFLOW_HPARAMS"
ENV_HPARAMS_FILE = "GPUFLOW_HPARAMS_FILE"
ENV_CHECKPOINT_DIR = "GPUFLOW_CHECKPOINT_DIR"
ENV_METRICS_FILE = "GPUFLOW_METRICS_FILE"
ENV_FAILURE_FILE = "GPUFLOW_FAILURE_FILE"
ENV_STOP_FILE = "GPUFLOW_STOP_FILE"
ENV_STORED_FILE = "GPUFLOW_STORED_FILE"  # the launcher writes the last step whose checkpoint is in the store
ENV_DEVICE = "GPUFLOW_DEVICE"
ENV_DEVICE_REQUEST = "GPUFLOW_DEVICE_REQUEST"  # what --device asked for: auto, cpu or cuda
ENV_TRAINING_ID = "GPUFLOW_TRAINING_ID"
ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"
ENV_RUN_ID = "MLFLOW_RUN_ID"

EXIT_OK = 0
EXIT_FAILED = 1  # a retry may pass
EXIT_CONFIG = 2  # configuration error: permanent
EXIT_DATA = 3  # data error: permanent
EXIT_INTERRUPTED = 130

TASKS = ("classification", "regression")
# The validation figure each task's early stopping watches, and which way is better.
PRIMARY_METRIC = {"classification": "val_accuracy", "regression": "val_rmse"}
PRIMARY_MODE: dict[str, Literal["max", "min"]] = {"classification": "max", "regression": "min"}
MODEL_NAME = "model"  # the name the model is logged under


class MetricsLineError(ValueError):
    """A metrics line that does not follow the contract; the message says what was expected."""


@dataclass(frozen=True)
class MetricsLine:
    """One line of ``GPUFLOW_METRICS_FILE``: a step, its figures, and whether a checkpoint was just written."""

    step: int
    metrics: dict[str, float]
    checkpoint: bool = False

    def to_json(self) -> str:
        """The line as the launcher reads it (no trailing newline); NaN/inf are written as JSON's extensions."""
        body: dict[str, Any] = {"step": self.step, "metrics": self.metrics}
        if self.checkpoint:
            body["checkpoint"] = True
        return json.dumps(body, separators=(",", ":"))


def metrics_line(step: Any, metrics: Any, checkpoint: bool = False) -> MetricsLine:
    """Check and normalise one report: ``step`` a positive integer, ``metrics`` names -> numbers.

    Numbers may be anything ``float()`` takes (numpy and torch scalars too); NaN and infinity are kept (early
    stopping treats them as divergence).
    """
    if isinstance(step, bool) or not isinstance(step, int):
        try:
            as_int = int(step)
        except (TypeError, ValueError):
            raise MetricsLineError(f"step must be a positive integer, got {step!r}") from None
        if as_int != step:
            raise MetricsLineError(f"step must be a positive integer, got {step!r}")
        step = as_int
    if step < 1:
        raise MetricsLineError(f"step must be a positive integer, got {step}")
    if not isinstance(metrics, dict) or not metrics:
        raise MetricsLineError(f"metrics must be a non-empty object of name -> number, got {metrics!r}")
    figures: dict[str, float] = {}
    for key, value in metrics.items():
        if not isinstance(key, str) or not key:
            raise MetricsLineError(f"metric names must be non-empty strings, got {key!r}")
        if isinstance(value, bool):
            raise MetricsLineError(f"metric {key!r} must be a number, got {value!r}")
        try:
            figures[key] = float(value)
        except (TypeError, ValueError):
            raise MetricsLineError(f"metric {key!r} must be a number, got {value!r}") from None
    return MetricsLine(int(step), figures, bool(checkpoint))


def parse_metrics_line(text: str) -> MetricsLine:
    """One line of the metrics file; raises :class:`MetricsLineError` naming what is wrong."""
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MetricsLineError(f"not JSON ({exc.msg})") from None
    if not isinstance(body, dict) or "step" not in body or "metrics" not in body:
        raise MetricsLineError('expected an object {"step": N, "metrics": {...}}')
    checkpoint = body.get("checkpoint", False)
    if not isinstance(checkpoint, bool):
        raise MetricsLineError(f"checkpoint must be true or false, got {checkpoint!r}")
    return metrics_line(body["step"], body["metrics"], checkpoint)


def tensor_shape(manifest: DatasetManifest) -> tuple[int, ...] | None:
    """The declared shape of the features when they are one tensor column (``[1, 8, 8]``), else None."""
    columns = manifest.extra.get("columns")
    if not isinstance(columns, list) or len(columns) != 1:
        return None
    column = columns[0]
    if not isinstance(column, dict) or column.get("type") != "tensor" or not column.get("shape"):
        return None
    shape = tuple(int(n) for n in column["shape"])
    size = 1
    for n in shape:
        size *= n
    return shape if size == len(manifest.features) else None
