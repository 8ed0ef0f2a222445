"""What a rollout leaves behind: its step figures as MLflow metrics, its decision as tags, its Markdown report
(on the run and as the Prefect artifact ``canary-<model>``)."""

from __future__ import annotations

import time
from collections.abc import Callable

from prefect import task
from prefect.cache_policies import NO_CACHE

from blocks.canary_policy import CanaryPolicy
from blocks.mlflow_tracking import MLflowTracking
from tasks.rollout.canary import RolloutResult, StepFigures
from tasks.rollout.canary_report import artifact_key, render_markdown
from tasks.tracking.runs import client_for
from workloads.tags import (
    TAG_CHAMPION_VERSION,
    TAG_MODEL_NAME,
    TAG_MODEL_VERSION,
    TAG_PREVIOUS_CHAMPION_VERSION,
    TAG_ROLLOUT_BACKEND,
    TAG_ROLLOUT_DECISION,
    TAG_ROLLOUT_FAILED_CHECK,
    TAG_ROLLOUT_REASON,
)

__all__ = ["REPORT_PATH", "STEPS_PATH", "report"]

REPORT_PATH = "rollout/canary.md"
STEPS_PATH = "rollout/steps.json"


_STEP_METRICS: dict[str, Callable[[StepFigures], float | None]] = {
    "weight": lambda f: f.weight,
    "effective_weight": lambda f: f.effective_weight,
    "step_seconds": lambda f: f.seconds,
    "stable_requests": lambda f: f.stable.requests,
    "canary_requests": lambda f: f.canary.requests,
    "stable_error_rate": lambda f: f.stable.error_rate,
    "canary_error_rate": lambda f: f.canary.error_rate,
    "stable_p95_seconds": lambda f: f.stable.p95_seconds,
    "canary_p95_seconds": lambda f: f.canary.p95_seconds,
    "p95_ratio": lambda f: f.p95_ratio,
    "stable_accuracy": lambda f: f.stable.accuracy,
    "canary_accuracy": lambda f: f.canary.accuracy,
    "stable_rmse": lambda f: f.stable.rmse,
    "canary_rmse": lambda f: f.canary.rmse,
    "rmse_ratio": lambda f: f.rmse_ratio,
    "agreement": lambda f: f.agreement,
    "retried_on_stable": lambda f: f.retried_on_stable,
    "unanswered": lambda f: f.unanswered,
}


@task(name="report-rollout", cache_policy=NO_CACHE)
def report(tracking: MLflowTracking, run_id: str, result: RolloutResult, policy: CanaryPolicy) -> str:
    """Step figures as MLflow metrics (step index = MLflow step), the decision as tags, the Markdown report
    on the run and as the Prefect artifact ``canary-<model>``; returns the Markdown."""
    from mlflow.entities import Metric, RunTag
    from prefect.artifacts import create_markdown_artifact

    client = client_for(tracking)
    now = int(time.time() * 1000)
    metrics = [
        Metric(name, float(value), now, step.step)
        for step in result.steps
        for name, read in _STEP_METRICS.items()
        if (value := read(step)) is not None
    ]
    metrics.append(Metric("stage_seconds", result.seconds, now, 0))
    metrics.extend(Metric(name, value, now, 0) for name, value in result.server_startup.items())
    if result.time_to_decision_seconds is not None:
        metrics.append(Metric("time_to_decision_seconds", result.time_to_decision_seconds, now, 0))
    tags = {
        TAG_ROLLOUT_DECISION: result.decision,
        TAG_ROLLOUT_FAILED_CHECK: result.failed_check or "",
        TAG_ROLLOUT_REASON: result.reason[:4000],
        TAG_MODEL_NAME: result.model_name,
        TAG_MODEL_VERSION: result.candidate_version,
        TAG_PREVIOUS_CHAMPION_VERSION: result.previous_champion_version or "",
        TAG_CHAMPION_VERSION: result.champion_version or "",
        TAG_ROLLOUT_BACKEND: result.backend,
    }
    client.log_batch(run_id, metrics=metrics, tags=[RunTag(k, v) for k, v in tags.items()])
    markdown = render_markdown(result, policy)
    client.log_text(run_id, markdown, REPORT_PATH)
    client.log_dict(run_id, {"steps": [step.model_dump(mode="json") for step in result.steps]}, STEPS_PATH)
    client.set_model_version_tag(result.model_name, result.candidate_version, TAG_ROLLOUT_DECISION, result.decision)
    create_markdown_artifact(
        markdown=markdown,
        key=artifact_key(result.model_name),
        description=f"Canary rollout of {result.model_name} version {result.candidate_version}: {result.decision}",
    )
    return markdown
