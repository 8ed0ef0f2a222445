"""Test-split metrics for a trained classifier: what the quality gate and the champion comparison rest on.

The model contract (stage 2): an ``nn.Module`` taking float32 ``[N, n_features]`` raw features and
returning logits ``[N, n_classes]`` in the order of the training run's ``gpuflow.labels`` tag. Scoring
maps the split's label values onto that order, so two models with different label orders (champion and
challenger) are still compared on the same rows.

Metrics come from scikit-learn where it has them; expected calibration error is written here (it is
not in scikit-learn) and documented in :func:`expected_calibration_error`.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field

from blocks.data_store import DataStore
from blocks.mlflow_tracking import MLflowTracking
from tasks.core.errors import ConfigurationError, DataValidationError
from tasks.core.mlflow_errors import is_not_found
from tasks.evaluation.gate import GateDecision
from tasks.tracking.model_registry import model_location
from tasks.tracking.runs import client_for
from workloads.dataset import DatasetCorrupt, DatasetNotFound, load_manifest, read_split
from workloads.store import ObjectStore
from workloads.tags import TAG_GATE_PASSED, TAG_GATE_REASONS

if TYPE_CHECKING:  # torch, matplotlib and scikit-learn are imported where used: loading the flow stays cheap
    import torch
    from matplotlib.figure import Figure

CONFUSION_ARTIFACT_KEY = "confusion-matrix"
GATE_ARTIFACT_KEY = "quality-gate"
CONFUSION_PNG = "evaluation/confusion_matrix.png"
CONFUSION_JSON = "evaluation/confusion_matrix.json"
GATE_REPORT = "evaluation/quality_gate.md"
ECE_BINS = 15
LATENCY_ROWS = 100
BATCH_ROWS = 4096
# The figures the gate, the event and the champion comparison use; the rest are timings.
HEADLINE_METRICS = ("accuracy", "macro_f1", "log_loss", "ece")


class ModelScore(BaseModel):
    """One model's figures on one test split."""

    model_config = ConfigDict(frozen=True)

    metrics: dict[str, float] = Field(
        description="accuracy, macro_f1, log_loss, ece, inference_ms_per_sample, latency_p50_ms."
    )
    confusion: list[list[int]] = Field(description="Confusion matrix: rows are true labels, columns predicted.")
    labels: list[str] = Field(description="Class labels in the matrix's row/column order (the model's logit order).")
    rows: int


class Evaluation(BaseModel):
    """What the evaluate stage decided and why; returned even when the gate fails."""

    model_config = ConfigDict(frozen=True)

    model_name: str
    model_version: str = Field(description="Registry version created (or reused) for the training run's model.")
    model_uri: str = Field(description="models:/<name>/<version> of that version.")
    train_run_id: str
    evaluate_run_id: str
    dataset_uri: str
    dataset_version: str
    metrics: dict[str, float] = Field(description="The challenger's test figures (no prefix).")
    champion_metrics: dict[str, float] | None = Field(description="The previous champion's figures on the same split.")
    regression: float | None = Field(description="champion accuracy - challenger accuracy; None without a champion.")
    gate: GateDecision
    previous_champion_version: str | None
    champion_version: str | None = Field(description="Version holding the champion alias after this stage.")
    promoted: bool
    seconds: float = Field(description="Time the stage spent on its own work.")
    telemetry: dict[str, Any] = Field(
        default_factory=dict,
        description="GPU telemetry of the stage's work, TelemetrySummary.as_dict() (GPU-seconds, utilisation, energy).",
    )

    def event_payload(self) -> dict[str, Any]:
        """The ``gpuflow.model.evaluated`` payload: what rollout and automations need, JSON-ready."""
        return {
            "model_name": self.model_name,
            "model_version": self.model_version,
            "run_id": self.train_run_id,
            "evaluate_run_id": self.evaluate_run_id,
            "passed": self.gate.passed,
            "reasons": list(self.gate.reasons),
            "metrics": {key: self.metrics[key] for key in HEADLINE_METRICS},
            "champion_version": self.champion_version,
            "previous_champion_version": self.previous_champion_version,
            "promoted": self.promoted,
            "dataset_uri": self.dataset_uri,
            "dataset_version": self.dataset_version,
        }


# --------------------------------------------------------------------------- metrics (pure)


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


def classification_metrics(probabilities: np.ndarray, y_true: np.ndarray) -> dict[str, float]:
    """accuracy, macro-F1, log loss and ECE of class probabilities against true class indices."""
    from sklearn.metrics import accuracy_score, f1_score, log_loss

    probs = np.asarray(probabilities, dtype=np.float64)
    predicted = probs.argmax(axis=1)
    return {
        "accuracy": float(accuracy_score(y_true, predicted)),
        # Macro over the classes present in truth or predictions; a class never seen scores nothing.
        "macro_f1": float(f1_score(y_true, predicted, average="macro", zero_division=0)),
        # labels= keeps the columns aligned with the model even when the split lacks some classes.
        "log_loss": float(log_loss(y_true, probs, labels=list(range(probs.shape[1])))),
        "ece": expected_calibration_error(probs, y_true),
    }


def label_indices(values: Sequence[Any] | np.ndarray, model_labels: Sequence[Any]) -> np.ndarray:
    """Map label values onto the model's logit indices (compared as text: 3 and "3" are one label)."""
    index = {str(label): i for i, label in enumerate(model_labels)}
    texts = [str(v) for v in np.asarray(values).tolist()]
    unknown = sorted({t for t in texts if t not in index})
    if unknown:
        raise DataValidationError(
            f"the test split has label(s) {unknown[:10]} that the model does not know; "
            f"model labels: {[str(label) for label in model_labels]}"
        )
    return np.array([index[t] for t in texts], dtype=np.int64)


# --------------------------------------------------------------------------- scoring a model


def _forward(model: torch.nn.Module, features: torch.Tensor) -> torch.Tensor:
    import torch

    return torch.cat([model(features[i : i + BATCH_ROWS]) for i in range(0, features.shape[0], BATCH_ROWS)])


def score(
    model: torch.nn.Module,
    features: np.ndarray,
    labels: Sequence[Any] | np.ndarray,
    model_labels: Sequence[Any],
) -> ModelScore:
    """Test metrics and timings of one model on one split.

    Timings: ``inference_ms_per_sample`` is the batched forward pass over the whole split (after one
    warm-up row) divided by its rows; ``latency_p50_ms`` is the median of single-row forward passes over
    the first ``LATENCY_ROWS`` rows, the figure a server answering one request at a time would see.
    """
    import torch
    from sklearn.metrics import confusion_matrix

    y_true = label_indices(labels, model_labels)
    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    n = x.shape[0]
    if n == 0:
        raise DataValidationError("the test split has no rows")
    with torch.inference_mode():
        model(x[:1])  # warm-up: first call allocates and picks kernels
        started = time.perf_counter()
        logits = _forward(model, x)
        batch_seconds = time.perf_counter() - started
        single: list[float] = []
        for i in range(min(LATENCY_ROWS, n)):
            begin = time.perf_counter()
            model(x[i : i + 1])
            single.append(time.perf_counter() - begin)
    if logits.ndim != 2 or logits.shape != (n, len(model_labels)):
        raise ConfigurationError(
            f"the model returned logits of shape {tuple(logits.shape)}; expected ({n}, {len(model_labels)}) "
            f"for {n} rows and the {len(model_labels)} labels in its gpuflow.labels tag"
        )
    probs = softmax(logits.float().numpy())
    metrics = classification_metrics(probs, y_true)
    metrics["inference_ms_per_sample"] = batch_seconds * 1000.0 / n
    metrics["latency_p50_ms"] = statistics.median(single) * 1000.0
    matrix = confusion_matrix(y_true, probs.argmax(axis=1), labels=list(range(len(model_labels))))
    return ModelScore(
        metrics=metrics,
        confusion=matrix.astype(int).tolist(),
        labels=[str(label) for label in model_labels],
        rows=n,
    )


# torch.export's deserializer is process-global ("_CURRENT_DESERIALIZER is already set"): pipelines evaluated in
# threads of one process (ml_pipeline called from several threads) load their models one at a time.
_TORCH_LOAD = threading.Lock()


def load_model(tracking: MLflowTracking, model_uri: str) -> torch.nn.Module:
    """Download a logged or registered PyTorch model through this tracking store and load it."""
    import mlflow.artifacts
    import mlflow.pytorch
    import torch
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory(prefix="gpuflow-model-") as tmp:
        try:
            location = model_location(client_for(tracking), model_uri)
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=location, dst_path=tmp, tracking_uri=tracking.uri, registry_uri=tracking.uri
            )
        except MlflowException as exc:
            if is_not_found(exc):
                raise ConfigurationError(f"no model at {model_uri} in MLflow at {tracking.uri}: {exc.message}") from exc
            raise
        with _TORCH_LOAD:
            model = mlflow.pytorch.load_model(local)
    if not isinstance(model, torch.nn.Module):
        raise ConfigurationError(f"{model_uri} is not a PyTorch module (got {type(model).__name__})")
    return model


# --------------------------------------------------------------------------- reading the test split


@dataclass(frozen=True)
class LabelledSplit:
    """One split of a prepared dataset as arrays: raw float32 features and raw label values."""

    dataset_uri: str
    version: str
    features: np.ndarray
    labels: np.ndarray
    feature_names: list[str]

    @property
    def rows(self) -> int:
        return int(self.features.shape[0])


def read_test_split(store: ObjectStore, dataset_uri: str) -> LabelledSplit:
    """The test split of a published dataset, read through its manifest (checksums verified).

    No manifest means "not a published dataset" (``ConfigurationError`` naming the URI); a manifest
    that does not match its files is a ``DataValidationError``.
    """
    base = dataset_uri.rstrip("/")
    try:
        manifest = load_manifest(base, store)
        features, labels = read_split(base, "test", store, manifest=manifest)
        if manifest.target.get("stored") == "index":  # string classes are stored as indices; models know names
            labels = np.asarray(manifest.class_names, dtype=object)[labels]
    except DatasetNotFound as exc:
        raise ConfigurationError(f"{exc} (run prepare first, or check dataset_uri)") from exc
    except DatasetCorrupt as exc:
        raise DataValidationError(str(exc)) from exc
    return LabelledSplit(
        dataset_uri=base,
        version=manifest.version,
        features=features,
        labels=labels,
        feature_names=manifest.features,
    )


# --------------------------------------------------------------------------- reporting


def confusion_figure(result: ModelScore, title: str) -> Figure:
    """The confusion matrix as a heat map with counts, drawn on an Agg canvas (no pyplot global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    matrix = np.asarray(result.confusion)
    size = max(4.0, 0.5 * len(result.labels) + 2.0)
    figure = Figure(figsize=(size, size), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    image = axes.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    ticks = list(range(len(result.labels)))
    axes.set_xticks(ticks, labels=result.labels)
    axes.set_yticks(ticks, labels=result.labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    threshold = matrix.max() / 2 if matrix.size else 0
    for (row, column), count in np.ndenumerate(matrix):
        colour = "white" if count > threshold else "black"
        axes.text(column, row, str(count), ha="center", va="center", color=colour, fontsize=8)
    figure.tight_layout()
    return figure


def confusion_rows(result: ModelScore) -> list[dict[str, Any]]:
    """The confusion matrix as table rows for a Prefect table artifact: one row per true label."""
    return [
        {"true \\ predicted": label, **{other: int(count) for other, count in zip(result.labels, row, strict=True)}}
        for label, row in zip(result.labels, result.confusion, strict=True)
    ]


def log_evaluation(
    tracking: MLflowTracking,
    run_id: str,
    *,
    challenger: ModelScore,
    champion: ModelScore | None,
    regression: float | None,
    decision: GateDecision,
    tags: dict[str, str],
    report: str,
) -> None:
    """Metrics (``test_*``, ``champion_test_*``), gate tags, confusion matrix PNG and JSON on the evaluate run."""
    from mlflow.entities import Metric, RunTag

    client = client_for(tracking)
    now = int(time.time() * 1000)
    metrics = [Metric(f"test_{k}", float(v), now, 0) for k, v in challenger.metrics.items()]
    metrics.append(Metric("test_rows", float(challenger.rows), now, 0))
    if champion is not None:
        metrics += [Metric(f"champion_test_{k}", float(v), now, 0) for k, v in champion.metrics.items()]
    if regression is not None:
        metrics.append(Metric("test_regression", float(regression), now, 0))
    all_tags = {**tags, **gate_tags(decision)}
    client.log_batch(run_id, metrics=metrics, tags=[RunTag(k, v) for k, v in all_tags.items()])
    client.log_figure(run_id, confusion_figure(challenger, "Confusion matrix (test split)"), CONFUSION_PNG)
    client.log_dict(run_id, {"labels": challenger.labels, "matrix": challenger.confusion}, CONFUSION_JSON)
    client.log_text(run_id, report, GATE_REPORT)


def gate_tags(decision: GateDecision) -> dict[str, str]:
    """The gate verdict as MLflow tags, the same on the evaluate run and on the model version."""
    return {
        TAG_GATE_PASSED: str(decision.passed).lower(),
        TAG_GATE_REASONS: json.dumps(decision.reasons),
    }


def publish_artifacts(challenger: ModelScore, report: str, *, model_name: str, model_version: str) -> None:
    """Prefect artifacts on the current flow run: the confusion matrix table and the gate report."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    create_table_artifact(
        table=confusion_rows(challenger),
        key=CONFUSION_ARTIFACT_KEY,
        description=f"Confusion matrix of {model_name} version {model_version} on the test split "
        "(rows: true label, columns: predicted).",
    )
    create_markdown_artifact(
        markdown=report,
        key=GATE_ARTIFACT_KEY,
        description=f"Quality gate for {model_name} version {model_version}.",
    )


# --------------------------------------------------------------------------- Prefect tasks


@task(name="read-test-split", cache_policy=NO_CACHE)
def load_test_split(store: DataStore, dataset_uri: str) -> LabelledSplit:
    """The dataset's test split (``ConfigurationError`` when the URI holds no published dataset)."""
    return read_test_split(store.object_store(), dataset_uri)


@task(name="score-model", cache_policy=NO_CACHE)
def score_model(tracking: MLflowTracking, model_uri: str, model_labels: list[str], split: LabelledSplit) -> ModelScore:
    """Load a logged or registered model and score it on the split."""
    return score(load_model(tracking, model_uri), split.features, split.labels, model_labels)


report_evaluation = task(name="log-evaluation", cache_policy=NO_CACHE)(log_evaluation)
report_artifacts = task(name="publish-artifacts", cache_policy=NO_CACHE)(publish_artifacts)
