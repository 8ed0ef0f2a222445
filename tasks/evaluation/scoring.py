"""Score one model on one test split, per task: what the quality gate and the champion comparison rest on.

The model contract: a classifier answers ``[N, C]`` in the order of its ``gpuflow.labels`` tag (logits from the
torch path, softmaxed here; probabilities from a pyfunc ``predict``); a regressor answers ``[N]`` or ``[N, 1]``.
Scoring maps the split's labels onto the model's order, so two models with different label orders (champion and
challenger) are still compared on the same rows. Custom metric functions run last, on the same predictions.
The evaluate flow streams the test split (one row group, one batch at a time) and keeps only each row's output
and label, so a split of any size is scored in bounded memory (what the outputs take aside).

The pieces live beside this module: metrics.py (pure figures), model_loading.py (flavors, signatures),
labelled_split.py (the test split, whole or streamed), reporting.py (MLflow and Prefect artifacts),
custom_metrics.py. Their public names are re-exported here for the callers that import them from ``scoring``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from blocks.data_store import DataStore
from blocks.mlflow_tracking import MLflowTracking
from blocks.quality_gate import CustomMetric
from tasks.core.errors import ConfigurationError, DataValidationError
from tasks.evaluation import custom_metrics
from tasks.evaluation.labelled_split import (
    LabelledSplit,
    ScoredSplit,
    StreamedSplit,
    open_test_split,
    read_test_split,
)
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
    "ScoredSplit",
    "StreamedSplit",
    "classification_metrics",
    "confusion_figure",
    "confusion_rows",
    "expected_calibration_error",
    "gate_tags",
    "label_indices",
    "load_model",
    "load_test_split",
    "log_evaluation",
    "open_test_split",
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


def _predict(model: LoadedModel, split: ScoredSplit) -> tuple[np.ndarray, np.ndarray, float, list[float]]:
    """Every row's output and true label, the batched pass's seconds, and single-row seconds over the first
    ``LATENCY_ROWS`` rows.

    The split is scored batch by batch (``BATCH_ROWS`` rows; a streamed split reads one row group at a time), and
    only the outputs and labels are kept: one value or one row of class scores per example, small next to the
    features. The batches are those of the split read whole, so the figures do not depend on how it is read.
    ``inference_ms_per_sample`` is the model's time over all batches (after one warm-up row) divided by the rows;
    ``latency_p50_ms`` the median single-row call, the figure a server answering one request at a time sees.
    """
    call = model.predictor()
    shapes, vocabularies = split.tensor_shapes(), split.category_vocabularies()
    outputs: list[Any] = []
    truth: list[np.ndarray] = []
    first: Any = None
    seconds = 0.0
    for features, labels in split.batches(BATCH_ROWS):
        inputs = model.inputs(features, split.feature_names, shapes, vocabularies)
        if first is None:
            first = inputs[:LATENCY_ROWS]
            call(inputs[:1])  # warm-up: first call allocates and picks kernels
        started = time.perf_counter()
        outputs.append(call(inputs))
        seconds += time.perf_counter() - started
        truth.append(labels)
    if first is None:
        raise DataValidationError("the test split has no rows")
    single: list[float] = []
    for i in range(len(first)):
        begin = time.perf_counter()
        call(first[i : i + 1])
        single.append(time.perf_counter() - begin)
    return _merge(model, outputs), np.concatenate(truth), seconds, single


def _merge(model: LoadedModel, outputs: list[Any]) -> np.ndarray:
    """The batches' outputs as one float numpy array."""
    if model.module is not None:
        import torch

        return torch.cat(outputs).float().numpy()
    try:
        return np.concatenate([np.asarray(o, dtype=np.float64) for o in outputs])
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"{model.uri}: its predict returned values that are not numbers: {exc}") from exc


def _run(model: LoadedModel, split: ScoredSplit) -> tuple[np.ndarray, np.ndarray, float, list[float]]:
    """:func:`_predict`, under ``torch.inference_mode`` for a torch model."""
    if model.module is None:
        return _predict(model, split)
    import torch

    with torch.inference_mode():
        return _predict(model, split)


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
    model: LoadedModel, split: ScoredSplit, model_labels: Sequence[Any], task_name: str, custom: Resolved = ()
) -> ModelScore:
    """Test metrics (built-in, custom) and timings of one loaded model on one split, for ``task_name``.

    The split is read batch by batch (see :func:`_predict`); the metrics are computed once at the end from the
    outputs and labels of every row, so they are the figures of the whole split, exactly.
    """
    raw, truth, seconds, single = _run(model, split)
    if task_name == "regression":
        result = _regress(model, raw, truth, custom)
    else:
        result = _classify(model, raw, truth, model_labels, custom)
    _timings(result.metrics, seconds, single, truth.shape[0])
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
def load_test_split(store: DataStore, dataset_uri: str, scratch: str | None = None) -> StreamedSplit:
    """The dataset's test split, checked now and streamed when scored (``ConfigurationError`` when the URI holds
    no published dataset); an S3 split is downloaded once into ``scratch``, which the caller removes."""
    return open_test_split(store.object_store(), dataset_uri, Path(scratch) if scratch else None)


@task(name="score-model", cache_policy=NO_CACHE)
def score_model(
    tracking: MLflowTracking,
    model_uri: str,
    model_labels: list[str],
    split: ScoredSplit,
    task_name: str = "classification",
    custom: Sequence[CustomMetric] = (),
) -> ModelScore:
    """Load a logged or registered model (any flavor) and score it on the split."""
    resolved = [(metric, custom_metrics.resolve(metric.function, metric.name)) for metric in custom]
    with loaded_model(tracking, model_uri) as model:
        return score_loaded(model, split, model_labels, task_name, resolved)


report_evaluation = task(name="log-evaluation", cache_policy=NO_CACHE)(log_evaluation)
report_artifacts = task(name="publish-artifacts", cache_policy=NO_CACHE)(publish_artifacts)
