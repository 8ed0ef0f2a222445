"""What evaluate leaves behind for people: MLflow metrics, tags and plots, and Prefect artifacts, per task.

Classification: the confusion matrix (PNG and JSON on the MLflow run, a table artifact in Prefect).
Regression: a residual plot (PNG) and the residuals' quantiles (JSON, and a table artifact).
Both: the ``test_*`` / ``champion_test_*`` metrics, the gate's tags and the gate report (Markdown).
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from blocks.mlflow_tracking import MLflowTracking
from tasks.evaluation.gate import GateDecision
from tasks.evaluation.result import ModelScore
from tasks.tracking.runs import client_for
from workloads.tags import TAG_GATE_PASSED, TAG_GATE_REASONS

if TYPE_CHECKING:  # matplotlib is imported where used: loading the flow stays cheap
    from matplotlib.figure import Figure

CONFUSION_ARTIFACT_KEY = "confusion-matrix"
RESIDUALS_ARTIFACT_KEY = "residuals"
GATE_ARTIFACT_KEY = "quality-gate"
CONFUSION_PNG = "evaluation/confusion_matrix.png"
CONFUSION_JSON = "evaluation/confusion_matrix.json"
RESIDUALS_PNG = "evaluation/residuals.png"
RESIDUALS_JSON = "evaluation/residuals.json"
GATE_REPORT = "evaluation/quality_gate.md"
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def _canvas(width: float, height: float) -> Figure:
    """A figure on an Agg canvas (no pyplot global state: flows in threads do not share one)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def confusion_figure(result: ModelScore, title: str) -> Figure:
    """The confusion matrix as a heat map with counts."""
    matrix = np.asarray(result.confusion)
    size = max(4.0, 0.5 * len(result.labels) + 2.0)
    figure = _canvas(size, size)
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


def residual_figure(result: ModelScore, title: str) -> Figure:
    """Predicted vs true (with the diagonal) and residual (true - predicted) vs predicted, side by side."""
    actual, predicted = np.asarray(result.actual), np.asarray(result.predicted)
    figure = _canvas(10.0, 4.5)
    left, right = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    left.scatter(actual, predicted, s=8, alpha=0.6)
    if actual.size:
        low, high = float(min(actual.min(), predicted.min())), float(max(actual.max(), predicted.max()))
        left.plot([low, high], [low, high], color="grey", linewidth=1)
    left.set_xlabel("true")
    left.set_ylabel("predicted")
    right.scatter(predicted, actual - predicted, s=8, alpha=0.6)
    right.axhline(0.0, color="grey", linewidth=1)
    right.set_xlabel("predicted")
    right.set_ylabel("residual (true - predicted)")
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def residual_rows(result: ModelScore) -> list[dict[str, Any]]:
    """Quantiles of the residuals (true - predicted) of the plotted rows: one table row per quantile."""
    residuals = np.asarray(result.actual) - np.asarray(result.predicted)
    if not residuals.size:
        return []
    return [{"quantile": q, "residual": float(np.quantile(residuals, q))} for q in QUANTILES]


def gate_tags(decision: GateDecision) -> dict[str, str]:
    """The gate verdict as MLflow tags, the same on the evaluate run and on the model version."""
    return {
        TAG_GATE_PASSED: str(decision.passed).lower(),
        TAG_GATE_REASONS: json.dumps(decision.reasons),
    }


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
    """Metrics (``test_*``, ``champion_test_*``), gate tags, the task's plot and the gate report on the evaluate run."""
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
    if challenger.task == "regression":
        client.log_figure(run_id, residual_figure(challenger, "Residuals (test split)"), RESIDUALS_PNG)
        client.log_dict(run_id, {"quantiles": residual_rows(challenger), "rows": challenger.rows}, RESIDUALS_JSON)
    else:
        client.log_figure(run_id, confusion_figure(challenger, "Confusion matrix (test split)"), CONFUSION_PNG)
        client.log_dict(run_id, {"labels": challenger.labels, "matrix": challenger.confusion}, CONFUSION_JSON)
    client.log_text(run_id, report, GATE_REPORT)


def publish_artifacts(challenger: ModelScore, report: str, *, model_name: str, model_version: str) -> None:
    """Prefect artifacts on the current flow run: the confusion matrix or residuals table, and the gate report."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    if challenger.task == "regression":
        create_table_artifact(
            table=residual_rows(challenger),
            key=RESIDUALS_ARTIFACT_KEY,
            description=f"Residual (true - predicted) quantiles of {model_name} version {model_version} on the test "
            "split.",
        )
    else:
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
