"""What the server serves (:class:`Predictor`), and the check that a model's outputs fit its task.

Shared by both ways to build one: the torch path (predictor.py) and the pyfunc path (pyfunc_path.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from workloads.server.config import EXIT_USAGE
from workloads.server.errors import ModelLoadError
from workloads.server.inputs import InputSpec
from workloads.server.model_loading import ModelSource

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Predictor:
    """What the server serves: the inference function and the facts requests are checked against."""

    name: str
    version: str
    uri: str
    labels: list[Any]  # classification: in output order; empty for regression
    n_features: int
    feature_names: list[str] | None
    backend: str  # numpy, torch or pyfunc
    infer: Callable[[np.ndarray], np.ndarray]
    load_seconds: float
    backend_note: str = ""
    task: str = "classification"
    output: str = "logits"  # what infer returns: logits or probabilities [rows, classes], or values (regression)
    inputs: InputSpec | None = None  # None: plain float32 rows of n_features
    refusals_are_client_errors: bool = False  # the model alone can refuse a request's values (unknown categories)
    device: str = "cpu"  # where inference runs: cpu, or cuda:<n> for a torch model served with --device cuda

    @property
    def n_classes(self) -> int:
        return len(self.labels)

    @property
    def input_spec(self) -> InputSpec:
        return self.inputs or InputSpec(self.n_features)

    @property
    def regression(self) -> bool:
        return self.task == "regression"


def _is_probabilities(out: np.ndarray) -> bool:
    return bool(np.all((out >= -1e-6) & (out <= 1 + 1e-6)) and np.allclose(out.sum(axis=1), 1.0, atol=1e-3))


def task_labels(source: ModelSource, task: str, out: np.ndarray, output: str) -> list[Any]:
    """The labels to answer with, once the model's output on real rows fits its task; else ModelLoadError."""
    uri = source.uri
    if task == "regression":
        if out.ndim == 1 or (out.ndim == 2 and out.shape[1] == 1):
            return []
        raise ModelLoadError(
            f"{uri}: a regression model (gpuflow.task) outputs shape {list(out.shape)}; expected [rows] or [rows, 1]",
            EXIT_USAGE,
        )
    what = "logits" if output == "logits" else "class probabilities"
    expected = f"{what} [rows, classes]"
    if output == "probabilities":
        expected += " (log a scikit-learn classifier with pyfunc_predict_fn='predict_proba')"
    if out.ndim != 2 or (output == "probabilities" and not _is_probabilities(out)):
        shown = f"values {list(out.shape)} that are not probabilities" if out.ndim == 2 else f"shape {list(out.shape)}"
        raise ModelLoadError(f"{uri}: a classifier outputs {shown}; expected {expected}", EXIT_USAGE)
    labels = source.labels
    n_classes = int(out.shape[1])
    if labels is None:
        log.warning("%s has no gpuflow.labels tag: answering class indices 0..%d", uri, n_classes - 1)
        labels = list(range(n_classes))
    if len(labels) != n_classes:
        raise ModelLoadError(
            f"{uri}: {len(labels)} labels in gpuflow.labels but the model outputs {n_classes} {what}", EXIT_USAGE
        )
    return labels
