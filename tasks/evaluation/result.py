"""What the evaluate stage produces: one model's score on a split, and the stage's result and event payload."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tasks.evaluation.gate import GateDecision
from tasks.evaluation.metrics import headline_metrics


class ModelScore(BaseModel):
    """One model's figures on one test split."""

    model_config = ConfigDict(frozen=True)

    task: str = Field(default="classification", description="classification or regression.")
    metrics: dict[str, float] = Field(
        description="The task's metrics (classification: accuracy, macro_f1, log_loss, ece, roc_auc when binary; "
        "regression: rmse, mae, r2), custom metrics by name, inference_ms_per_sample, latency_p50_ms."
    )
    confusion: list[list[int]] = Field(
        default_factory=list, description="Confusion matrix: rows are true labels, columns predicted (classification)."
    )
    labels: list[str] = Field(
        default_factory=list, description="Class labels in the matrix's row/column order (the model's output order)."
    )
    rows: int
    actual: list[float] = Field(default_factory=list, description="Regression: a sample of true values, for the plot.")
    predicted: list[float] = Field(default_factory=list, description="Regression: the predictions of those rows.")


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
    task: str = Field(default="classification", description="classification or regression (the dataset's).")
    primary_metric: str = Field(default="accuracy", description="accuracy (classification) or rmse (regression).")
    metrics: dict[str, float] = Field(description="The challenger's test figures (no prefix).")
    champion_metrics: dict[str, float] | None = Field(description="The previous champion's figures on the same split.")
    regression: float | None = Field(
        description="How much worse the challenger's primary metric is than the champion's (champion - challenger "
        "for accuracy, challenger - champion for rmse; positive = worse); None without a champion."
    )
    gate: GateDecision
    previous_champion_version: str | None
    champion_version: str | None = Field(description="Version holding the champion alias after this stage.")
    promoted: bool
    seconds: float = Field(description="Time the stage spent on its own work.")
    telemetry: dict[str, Any] = Field(
        default_factory=dict,
        description="GPU telemetry of the stage's work, TelemetrySummary.as_dict() (GPU-seconds, utilisation, energy).",
    )
    custom_metrics: list[str] = Field(default_factory=list, description="Names of the gate's custom metrics.")

    def headline(self) -> dict[str, float]:
        """The task's quality figures and the custom metrics (no timings): what the event and the registry carry."""
        names = [*headline_metrics(self.task), *self.custom_metrics]
        return {key: self.metrics[key] for key in names if key in self.metrics}

    def event_payload(self) -> dict[str, Any]:
        """The ``gpuflow.model.evaluated`` payload: what rollout and automations need, JSON-ready."""
        return {
            "model_name": self.model_name,
            "model_version": self.model_version,
            "run_id": self.train_run_id,
            "evaluate_run_id": self.evaluate_run_id,
            "passed": self.gate.passed,
            "reasons": list(self.gate.reasons),
            "task": self.task,
            "primary_metric": self.primary_metric,
            "metrics": self.headline(),
            "regression": self.regression,
            "champion_version": self.champion_version,
            "previous_champion_version": self.previous_champion_version,
            "promoted": self.promoted,
            "dataset_uri": self.dataset_uri,
            "dataset_version": self.dataset_version,
        }
