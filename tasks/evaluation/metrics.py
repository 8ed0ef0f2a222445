"""Test-split metrics per task, as pure functions, and the table of what each task produces.

Classification: accuracy, macro-F1, log loss, expected calibration error, and ROC-AUC when there are two
classes. Regression: RMSE, MAE and R². Both add the timings the scorer measures. The table says which way
is better for each, so the quality gate knows what "worse than the champion" means for any metric.

Metrics come from scikit-learn where it has them; expected calibration error is written here (it is
not in scikit-learn) and documented in :func:`expected_calibration_error`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from tasks.core.errors import ConfigurationError, DataValidationError

Task = Literal["classification", "regression"]
TASKS: tuple[Task, ...] = ("classification", "regression")
ECE_BINS = 15

# name -> higher is better. ROC-AUC is produced for binary classification only.
CLASSIFICATION_METRICS: dict[str, bool] = {
    "accuracy": True,
    "macro_f1": True,
    "log_loss": False,
    "ece": False,
    "roc_auc": True,
}
REGRESSION_METRICS: dict[str, bool] = {"rmse": False, "mae": False, "r2": True}
TIMING_METRICS: dict[str, bool] = {"inference_ms_per_sample": False, "latency_p50_ms": False}
PRIMARY_METRIC: dict[str, str] = {"classification": "accuracy", "regression": "rmse"}
BINARY_ONLY = frozenset({"roc_auc"})

# How a reason sentence names a metric (the three classification defaults keep the wording they always had).
DISPLAY_NAMES: dict[str, str] = {
    "accuracy": "test accuracy",
    "macro_f1": "test macro-F1",
    "log_loss": "test log loss",
    "ece": "expected calibration error",
    "roc_auc": "test ROC-AUC",
    "rmse": "test RMSE",
    "mae": "test MAE",
    "r2": "test R²",
    "inference_ms_per_sample": "inference time per sample (ms)",
    "latency_p50_ms": "median single-row latency (ms)",
}


def check_task(task: str, where: str = "the dataset") -> Task:
    """``task`` itself when it is one gpuflow evaluates, else a ``ConfigurationError`` saying what is known."""
    if task not in TASKS:
        raise ConfigurationError(f"{where} has task {task!r}; gpuflow evaluates {' or '.join(TASKS)}")
    return task


def task_metrics(task: str, n_classes: int | None = None) -> dict[str, bool]:
    """The figures an evaluation of ``task`` produces (name -> higher is better), timings included.

    ``n_classes`` narrows classification: ROC-AUC only with two classes. ``None`` (not known yet, e.g. before
    the dataset is prepared) keeps it, so a rule on it is refused only once the class count says so.
    """
    base = CLASSIFICATION_METRICS if check_task(task) == "classification" else REGRESSION_METRICS
    found = {k: v for k, v in base.items() if not (k in BINARY_ONLY and n_classes not in (None, 2))}
    return {**found, **TIMING_METRICS}


def headline_metrics(task: str, n_classes: int | None = None) -> tuple[str, ...]:
    """The quality figures (no timings) the event, the registry tags and the champion comparison carry."""
    return tuple(name for name in task_metrics(task, n_classes) if name not in TIMING_METRICS)


def display_name(metric: str) -> str:
    return DISPLAY_NAMES.get(metric, f"test {metric}")


# --------------------------------------------------------------------------- classification


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (stable: subtracts the row maximum)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def expected_calibration_error(probabilities: np.ndarray, y_true: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Expected calibration error over equal-width bins of top-label confidence (Guo et al., 2017).

    Each row's confidence is its largest probability and it is "correct" when that class is the true
    one. Rows fall into ``n_bins`` bins ``((m-1)/M, m/M]`` of confidence; then
    ``ECE = sum_m |B_m|/n * |accuracy(B_m) - mean confidence(B_m)|``. Empty bins add nothing.
    0 means confidence matches accuracy; a model 90% sure but right half the time scores about 0.4.

    Args:
        probabilities: ``[n, n_classes]`` class probabilities (rows sum to 1).
        y_true: ``[n]`` true class indices into the columns.
        n_bins: Number of equal-width bins on [0, 1].
    """
    probs = np.asarray(probabilities, dtype=np.float64)
    truth = np.asarray(y_true)
    if probs.ndim != 2 or probs.shape[0] != truth.shape[0]:
        raise ValueError(f"probabilities {probs.shape} and labels {truth.shape} do not match")
    if probs.shape[0] == 0:
        raise ValueError("expected calibration error of zero rows is undefined")
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == truth).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # right=True: bin m holds (edges[m], edges[m+1]]; a confidence of exactly 0 joins the first bin.
    bins = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    n = probs.shape[0]
    ece = 0.0
    for m in range(n_bins):
        in_bin = bins == m
        count = int(in_bin.sum())
        if count:
            ece += count / n * abs(float(correct[in_bin].mean()) - float(confidence[in_bin].mean()))
    return ece


def roc_auc(probabilities: np.ndarray, y_true: np.ndarray) -> float:
    """Area under the ROC curve of a binary model, the second class being the positive one (NaN when the
    split holds one class only: the curve is undefined)."""
    from sklearn.metrics import roc_auc_score

    truth = np.asarray(y_true)
    if len(np.unique(truth)) < 2:
        return math.nan
    return float(roc_auc_score(truth, np.asarray(probabilities, dtype=np.float64)[:, 1]))


def classification_metrics(probabilities: np.ndarray, y_true: np.ndarray) -> dict[str, float]:
    """accuracy, macro-F1, log loss and ECE (plus ROC-AUC for two classes) against true class indices."""
    from sklearn.metrics import accuracy_score, f1_score, log_loss

    probs = np.asarray(probabilities, dtype=np.float64)
    predicted = probs.argmax(axis=1)
    metrics = {
        "accuracy": float(accuracy_score(y_true, predicted)),
        # Macro over the classes present in truth or predictions; a class never seen scores nothing.
        "macro_f1": float(f1_score(y_true, predicted, average="macro", zero_division=0)),
        # labels= keeps the columns aligned with the model even when the split lacks some classes.
        "log_loss": float(log_loss(y_true, probs, labels=list(range(probs.shape[1])))),
        "ece": expected_calibration_error(probs, y_true),
    }
    if probs.shape[1] == 2:
        metrics["roc_auc"] = roc_auc(probs, y_true)
    return metrics


def label_indices(values: Sequence[Any] | np.ndarray, model_labels: Sequence[Any]) -> np.ndarray:
    """Map label values onto the model's output indices (compared as text: 3 and "3" are one label).

    Each distinct value is turned into text once (a test split of millions of rows has a few classes), so the
    mapping costs one index array, not a Python string per row.
    """
    index = {str(label): i for i, label in enumerate(model_labels)}
    array = np.asarray(values)
    try:
        distinct, inverse = np.unique(array, return_inverse=True)
    except TypeError:  # values of kinds that do not sort together: each on its own
        distinct, inverse = array.reshape(-1), np.arange(array.size)
    texts = [str(v) for v in distinct.tolist()]
    unknown = sorted({t for t in texts if t not in index})
    if unknown:
        raise DataValidationError(
            f"the test split has label(s) {unknown[:10]} that the model does not know; "
            f"model labels: {[str(label) for label in model_labels]}"
        )
    return np.array([index[t] for t in texts], dtype=np.int64)[inverse.reshape(-1)]


# --------------------------------------------------------------------------- regression


def regression_metrics(predicted: np.ndarray, y_true: np.ndarray) -> dict[str, float]:
    """RMSE, MAE and R² of predicted values against true values (R² is NaN when the truth is constant)."""
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    truth = np.asarray(y_true, dtype=np.float64)
    guess = np.asarray(predicted, dtype=np.float64)
    constant = truth.size < 2 or float(truth.std()) == 0.0
    return {
        "rmse": float(math.sqrt(mean_squared_error(truth, guess))),
        "mae": float(mean_absolute_error(truth, guess)),
        "r2": math.nan if constant else float(r2_score(truth, guess)),
    }
