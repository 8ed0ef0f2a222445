"""Score one model on one test split, per task: what the quality gate and the champion comparison rest on.

The model contract: a classifier answers ``[N, C]`` in the order of its ``gpuflow.labels`` tag (logits from the
torch path, softmaxed here; probabilities from a pyfunc ``predict``); a regressor answers ``[N]`` or ``[N, 1]``.
Scoring maps the split's labels onto the model's order, so two models with different label orders (champion and
challenger) are still compared on the same rows. Custom metric functions run last, on the same predictions.

The pieces live beside this module: metrics.py (pure figures), model_loading.py (flavors, signatures),
labelled_split.py (the test split), reporting.py (MLflow and Prefect artifacts), custom_metrics.py. Their
public names are re-exported here for the callers that import them from ``scoring``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from blocks.data_store import DataStore
from blocks.mlflow_tracking import MLflowTracking
from blocks.quality_gate import CustomMetric
from tasks.core.errors import ConfigurationError, DataValidationError
from tasks.evaluation import custom_metrics
from tasks.evaluation.labelled_split import LabelledSplit, read_test_split
from tasks.evaluation.metrics import (
    classification_metrics,
    expected_calibration_error,
    label_indices,
    regression_metrics,
    softmax,
)
from tasks.evaluation.model_loading import LoadedModel, load_model, loaded_model
from tasks.evaluation.reporting import (
    confusion_figure,
    confusion_rows,
    gate_tags,
    log_evaluation,
    publish_artifacts,
)
from tasks.evaluation.result import Evaluation, ModelScore

__all__ = [
    "BATCH_ROWS",
    "LATENCY_ROWS",
    "Evaluation",
    "LabelledSplit",
    "ModelScore",
    "classification_metrics",
    "confusion_figure",
    "confusion_rows",
    "expected_calibration_error",
    "gate_tags",
    "label_indices",
    "load_model",
    "load_test_split",
    "log_evaluation",
    "publish_artifacts",
    "read_test_split",
    "regression_metrics",
    "score",
    "score_loaded",
    "score_model",
    "softmax",
]

LATENCY_ROWS = 100
BATCH_ROWS = 4096
RESIDUAL_POINTS = 2000  # a regression's (true, predicted) pairs kept for its plot
PROBABILITY_SLACK = 1e-3

Resolved = Sequence[tuple[CustomMetric, Callable[..., Any]]]


def _timed(call: Callable[[Any], Any], inputs: Any, n: int) -> tuple[list[Any], float, list[float]]:
    """Outputs per batch, the batched pass's seconds, and single-row seconds over the first ``LATENCY_ROWS`` rows.

    ``inference_ms_per_sample`` is the batched pass over the whole split (after one warm-up row) divided by its
    rows; ``latency_p50_ms`` the median single-row call, the figure a server answering one request at a time sees.
    """
    call(inputs[:1])  # warm-up: first call allocates and picks kernels
    started = time.perf_counter()
    outputs = [call(inputs[i : i + BATCH_ROWS]) for i in range(0, n, BATCH_ROWS)]
    batch_seconds = time.perf_counter() - started
    single: list[float] = []
    for i in range(min(LATENCY_ROWS, n)):
        begin = time.perf_counter()
        call(inputs[i : i + 1])
        single.append(time.perf_counter() - begin)
    return outputs, batch_seconds, single


def _run(model: LoadedModel, inputs: Any, n: int) -> tuple[np.ndarray, float, list[float]]:
    """All outputs as one float numpy array, with the timings of :func:`_timed`."""
    if n == 0:
        raise DataValidationError("the test split has no rows")
    if model.module is not None:
        import torch

        with torch.inference_mode():
            outputs, seconds, single = _timed(model.predictor(), inputs, n)
            return torch.cat(outputs).float().numpy(), seconds, single
    outputs, seconds, single = _timed(model.predictor(), inputs, n)
    try:
        merged = np.concatenate([np.asarray(o, dtype=np.float64) for o in outputs])
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"{model.uri}: its predict returned values that are not numbers: {exc}") from exc
    return merged, seconds, single


def _timings(metrics: dict[str, float], seconds: float, single: list[float], n: int) -> None:
    metrics["inference_ms_per_sample"] = seconds * 1000.0 / n
    metrics["latency_p50_ms"] = statistics.median(single) * 1000.0


def _probabilities(model: LoadedModel, raw: np.ndarray, n: int, labels: Sequence[Any]) -> np.ndarray:
    """Class probabilities ``[n, C]``: softmax of torch logits, or a pyfunc answer checked to be probabilities."""
    expected = (n, len(labels))
    if model.is_torch:
        if raw.ndim != 2 or raw.shape != expected:
            raise ConfigurationError(
                f"the model returned logits of shape {tuple(raw.shape)}; expected {expected} for {n} rows and the "
                f"{len(labels)} labels in its gpuflow.labels tag"
            )
        return softmax(raw)
    if raw.ndim != 2 or raw.shape != expected:
        raise ConfigurationError(
            f"{model.uri}: its predict returned shape {tuple(raw.shape)}; a classifier must return class "
            f"probabilities {expected} for {n} rows and the {len(labels)} labels in its gpuflow.labels tag "
            '(log a scikit-learn classifier with pyfunc_predict_fn="predict_proba")'
        )
    sums = raw.sum(axis=1)
    if (
        raw.min() < -PROBABILITY_SLACK
        or raw.max() > 1 + PROBABILITY_SLACK
        or np.abs(sums - 1).max() > PROBABILITY_SLACK
    ):
        raise ConfigurationError(
            f"{model.uri}: its predict returned values that are not class probabilities (each row must lie in "
            f"[0, 1] and sum to 1; row sums range {sums.min():.3f}..{sums.max():.3f})"
        )
    return raw


def _classify(
    model: LoadedModel, raw: np.ndarray, truth: np.ndarray, labels: Sequence[Any], custom: Resolved
) -> ModelScore:
    from sklearn.metrics import confusion_matrix

    n = truth.shape[0]
    y_true = label_indices(truth, labels)
    probs = _probabilities(model, raw, n, labels)
    metrics = classification_metrics(probs, y_true)
    predicted = probs.argmax(axis=1)
    names = np.asarray([str(label) for label in labels], dtype=object)
    for metric, fn in custom:
        metrics[metric.name] = custom_metrics.call(
            metric.name, metric.function, fn, names[y_true], names[predicted], probabilities=probs, labels=list(names)
        )
    matrix = confusion_matrix(y_true, predicted, labels=list(range(len(labels))))
    return ModelScore(
        metrics=metrics, confusion=matrix.astype(int).tolist(), labels=[str(label) for label in labels], rows=n
    )


def _regress(model: LoadedModel, raw: np.ndarray, truth: np.ndarray, custom: Resolved) -> ModelScore:
    n = truth.shape[0]
    if raw.shape not in ((n,), (n, 1)):
        raise ConfigurationError(
            f"{model.uri}: the model returned shape {tuple(raw.shape)}; a regressor must return ({n},) or ({n}, 1) "
            f"for {n} rows"
        )
    predicted = raw.reshape(n).astype(np.float64)
    actual = np.asarray(truth, dtype=np.float64)
    metrics = regression_metrics(predicted, actual)
    for metric, fn in custom:
        metrics[metric.name] = custom_metrics.call(metric.name, metric.function, fn, actual, predicted)
    keep = np.sort(np.random.default_rng(0).permutation(n)[:RESIDUAL_POINTS])
    return ModelScore(
        task="regression",
        metrics=metrics,
        rows=n,
        actual=actual[keep].tolist(),
        predicted=predicted[keep].tolist(),
    )


def score_loaded(
    model: LoadedModel, split: LabelledSplit, model_labels: Sequence[Any], task_name: str, custom: Resolved = ()
) -> ModelScore:
    """Test metrics (built-in, custom) and timings of one loaded model on one split, for ``task_name``."""
    inputs = model.inputs(split.features, split.feature_names, split.tensor_shapes(), split.category_vocabularies())
    raw, seconds, single = _run(model, inputs, split.rows)
    truth = split.labels
    if task_name == "regression":
        result = _regress(model, raw, truth, custom)
    else:
        result = _classify(model, raw, truth, model_labels, custom)
    _timings(result.metrics, seconds, single, split.rows)
    return result


def score(
    model: Any,
    features: np.ndarray,
    labels: Sequence[Any] | np.ndarray,
    model_labels: Sequence[Any],
) -> ModelScore:
    """A torch classifier's test metrics and timings on raw features and label values (no signature, no manifest)."""
    from tasks.evaluation.model_loading import ModelInput

    loaded = LoadedModel("the model", "pytorch", ModelInput(), module=model)
    names = [f"f{j}" for j in range(np.asarray(features).shape[1])]
    split = LabelledSplit("", "", np.asarray(features), np.asarray(labels), names)
    return score_loaded(loaded, split, model_labels, "classification")


# --------------------------------------------------------------------------- Prefect tasks


@task(name="read-test-split", cache_policy=NO_CACHE)
def load_test_split(store: DataStore, dataset_uri: str) -> LabelledSplit:
    """The dataset's test split (``ConfigurationError`` when the URI holds no published dataset)."""
    return read_test_split(store.object_store(), dataset_uri)


@task(name="score-model", cache_policy=NO_CACHE)
def score_model(
    tracking: MLflowTracking,
    model_uri: str,
    model_labels: list[str],
    split: LabelledSplit,
    task_name: str = "classification",
    custom: Sequence[CustomMetric] = (),
) -> ModelScore:
    """Load a logged or registered model (any flavor) and score it on the split."""
    resolved = [(metric, custom_metrics.resolve(metric.function, metric.name)) for metric in custom]
    with loaded_model(tracking, model_uri) as model:
        return score_loaded(model, split, model_labels, task_name, resolved)


report_evaluation = task(name="log-evaluation", cache_policy=NO_CACHE)(log_evaluation)
report_artifacts = task(name="publish-artifacts", cache_policy=NO_CACHE)(publish_artifacts)
