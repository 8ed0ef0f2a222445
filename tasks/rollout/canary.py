"""Canary analysis: scraped /metrics samples and the traffic record in, per-step figures and a decision out.

Reading /metrics is server_metrics.py, the Markdown report canary_report.py.

Pure functions and frozen models, so every rule is unit-tested without servers. What is read from where:

- error rate and p95 latency: each server's own ``/metrics``, as deltas between two scrapes (the step's
  start and the check), exactly as a Prometheus query would read them on a cluster; p95 is estimated from the
  latency histogram's buckets the way PromQL's ``histogram_quantile`` does;
- accuracy (classification), RMSE and its ratio to stable's on the same rows (regression), and agreement: the
  traffic driver's labelled record (tasks/rollout/traffic.py), since only the driver knows the labels;
- requests that never reached the canary (refused, reset, timed out) are in no server's counters; the
  driver's transport errors are added to the canary's requests and errors so a dying canary cannot look clean.

The rules (docs/rollout.md): a check fails -> roll back, at once, even mid-window; a window ends with every
check passed -> continue to the next step, or promote after the last one.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from blocks.canary_policy import CanaryPolicy, TaskThresholds
from tasks.rollout.server_metrics import ServerSample, histogram_quantile
from tasks.rollout.traffic import TargetRecord, TrafficRecord

P95 = 0.95
CheckName = Literal[
    "canary_ready",
    "canary_up",
    "min_requests",
    "error_rate",
    "p95_latency_ratio",
    "accuracy",
    "rmse_ratio",
    "agreement",
]
StepDecision = Literal["continue", "promote", "roll_back"]
Decision = Literal["promoted", "rolled_back", "promoted_without_canary"]


# -- figures and checks --------------------------------------------------------------------------


class CheckResult(BaseModel):
    """One rule applied at one step: the figure, the threshold, and a sentence naming both."""

    model_config = ConfigDict(frozen=True)

    name: CheckName
    passed: bool
    value: float | None = None
    threshold: float | None = None
    detail: str = ""


class TargetFigures(BaseModel):
    """One version's figures in one step: server-side from /metrics, labelled ones from the driver."""

    model_config = ConfigDict(frozen=True)

    version: str
    requests: int = Field(description="Prediction requests: /metrics delta plus the driver's transport errors.")
    errors: int = Field(description="Of those, answered non-2xx (/metrics) or not at all (driver).")
    error_rate: float | None
    p95_seconds: float | None = Field(description="Server-side p95 latency from the /metrics histogram delta.")
    routed: int = Field(description="User requests the driver routed here.")
    transport_errors: int
    answered: int
    accuracy: float | None = Field(description="Correct answers / answered, on labelled traffic (classification).")
    rmse: float | None = Field(default=None, description="Root mean squared error of its answers (regression).")
    client_p95_seconds: float | None = Field(description="p95 latency the driver measured (HTTP round trip).")


class StepFigures(BaseModel):
    """One canary step: both versions' figures, the comparison, every check, and what it decided."""

    model_config = ConfigDict(frozen=True)

    step: int = Field(description="1-based step index (the MLflow step of its metrics).")
    weight: int = Field(description="Percent of traffic routed to the canary.")
    effective_weight: float | None = Field(
        default=None,
        description="Percent the serving backend really gives the canary: the weight locally, canary pods / all "
        "pods with a cluster's replica ratio (rounded, never 0 during a step).",
    )
    seconds: float
    stable: TargetFigures
    canary: TargetFigures
    stable_p95_scope: Literal["step", "rollout"] = Field(
        description="Where the ratio's stable p95 came from: this step, or every step so far when this step "
        "gave stable fewer than min_requests requests (at weight 100)."
    )
    p95_ratio: float | None
    agreement: float | None
    rmse_ratio: float | None = Field(
        default=None, description="Regression: canary RMSE / stable RMSE on the compared rows (the same rows)."
    )
    task: str = Field(default="classification", description="The model's task: which labelled checks ran.")
    compared: int = Field(description="Canary answers compared with stable's answer for the same row.")
    retried_on_stable: int
    unanswered: int
    shadow_requests: int
    checks: list[CheckResult]
    decision: StepDecision
    failed_check: CheckName | None = None

    @property
    def failure(self) -> CheckResult | None:
        return next((check for check in self.checks if not check.passed), None)

    def summary(self) -> dict[str, Any]:
        """The step's headline figures, JSON-ready, for events and logs."""
        return {
            "step": self.step,
            "weight": self.weight,
            "seconds": round(self.seconds, 3),
            "requests": {"stable": self.stable.requests, "canary": self.canary.requests},
            "error_rate": {"stable": self.stable.error_rate, "canary": self.canary.error_rate},
            "p95_seconds": {"stable": self.stable.p95_seconds, "canary": self.canary.p95_seconds},
            "p95_ratio": self.p95_ratio,
            "accuracy": {"stable": self.stable.accuracy, "canary": self.canary.accuracy},
            "rmse": {"stable": self.stable.rmse, "canary": self.canary.rmse},
            "rmse_ratio": self.rmse_ratio,
            "agreement": self.agreement,
            "decision": self.decision,
            "failed_check": self.failed_check,
        }


def _ratio(part: float, whole: float) -> float | None:
    return part / whole if whole > 0 else None


def _client_p95(latencies: list[float]) -> float | None:
    if not latencies:
        return None
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, math.ceil(P95 * len(ordered)) - 1)]


def target_figures(
    version: str, sample: ServerSample | None, record: TargetRecord, task: str = "classification"
) -> TargetFigures:
    """One version's figures; ``sample`` is None when its /metrics could not be read."""
    served = sample.total if sample else 0.0
    failed = sample.errors if sample else 0.0
    requests = int(served) + record.transport_errors
    errors = int(failed) + record.transport_errors
    return TargetFigures(
        version=version,
        requests=requests,
        errors=errors,
        error_rate=_ratio(errors, requests),
        p95_seconds=histogram_quantile(P95, sample.buckets) if sample else None,
        routed=record.routed,
        transport_errors=record.transport_errors,
        answered=record.answered,
        accuracy=_ratio(record.correct, record.answered) if task == "classification" else None,
        rmse=record.rmse if task == "regression" else None,
        client_p95_seconds=_client_p95(record.latencies),
    )


def fmt_number(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def fmt_ms(value: float | None) -> str:
    return "—" if value is None else f"{value * 1000:.2f} ms"


def _judge(
    policy: CanaryPolicy,
    thresholds: TaskThresholds,
    canary: TargetFigures,
    stable_p95: float | None,
    record: TrafficRecord,
) -> list[CheckResult]:
    """The threshold checks, in the order their failures are reported."""
    checks: list[CheckResult] = []
    rate = canary.error_rate if canary.error_rate is not None else 0.0
    checks.append(
        CheckResult(
            name="error_rate",
            passed=rate <= policy.max_error_rate,
            value=rate,
            threshold=policy.max_error_rate,
            detail=f"canary error rate {rate:.3f} ({canary.errors} of {canary.requests} requests) "
            f"{'≤' if rate <= policy.max_error_rate else 'is above the maximum'} {policy.max_error_rate:.3f}",
        )
    )
    p95 = canary.p95_seconds
    if p95 is None or stable_p95 is None or stable_p95 <= 0:
        checks.append(
            CheckResult(
                name="p95_latency_ratio",
                passed=True,
                threshold=policy.max_p95_latency_ratio,
                detail="p95 latency ratio not measured (no latency observations on one side)",
            )
        )
    else:
        ratio = p95 / stable_p95
        limit, tolerance = policy.max_p95_latency_ratio, policy.latency_tolerance_seconds
        measured = f"canary p95 {fmt_ms(p95)} / stable p95 {fmt_ms(stable_p95)} = {ratio:.2f}"
        if ratio <= limit:
            detail, passed = f"{measured} ≤ {limit:.2f}", True
        elif p95 - stable_p95 <= tolerance:
            detail, passed = f"{measured}, above {limit:.2f} but within the {fmt_ms(tolerance)} tolerance", True
        else:
            detail, passed = f"{measured} is above the maximum {limit:.2f}", False
        checks.append(CheckResult(name="p95_latency_ratio", passed=passed, value=ratio, threshold=limit, detail=detail))
    checks += _labelled_checks(policy, thresholds, canary, record)
    return checks


def _labelled_checks(
    policy: CanaryPolicy, thresholds: TaskThresholds, canary: TargetFigures, record: TrafficRecord
) -> list[CheckResult]:
    """The task's labelled check (accuracy, or RMSE against stable's), then agreement with stable."""
    agreement = _ratio(record.agreed, record.compared)
    basis = f"{record.compared} rows"
    if thresholds.task == "regression":
        assert thresholds.max_rmse_ratio is not None
        within = f"within {thresholds.agreement_atol:g} + {thresholds.agreement_rtol:g} x |stable|"
        return [
            _at_most("rmse_ratio", record.rmse_ratio, thresholds.max_rmse_ratio, basis, record),
            _at_least("agreement", agreement, policy.min_agreement, basis, f"agreement with stable ({within})"),
        ]
    assert thresholds.min_accuracy is not None
    answered = f"{canary.answered} labelled answers"
    return [
        _at_least("accuracy", canary.accuracy, thresholds.min_accuracy, answered, "accuracy"),
        _at_least("agreement", agreement, policy.min_agreement, basis, "agreement with stable"),
    ]


def _at_most(name: CheckName, value: float | None, maximum: float, basis: str, record: TrafficRecord) -> CheckResult:
    """A ceiling check on the canary's RMSE over stable's on the same rows; no figure yet passes (min_requests)."""
    passed = value is None or value <= maximum
    verdict = "≤" if passed else "is above the maximum"
    rmse = f"canary RMSE {_rmse(record.paired_canary_squared_error, record.compared)} / stable RMSE "
    rmse += f"{_rmse(record.paired_stable_squared_error, record.compared)}"
    return CheckResult(
        name=name,
        passed=passed,
        value=value,
        threshold=maximum,
        detail=f"{rmse} = {fmt_number(value)} on the same {basis} {verdict} {maximum:.3f}",
    )


def _rmse(squared_error: float, rows: int) -> str:
    return fmt_number((squared_error / rows) ** 0.5 if rows else None)


def _at_least(name: CheckName, value: float | None, minimum: float, basis: str, what: str) -> CheckResult:
    """A floor check; no figure (nothing answered yet) passes here and is caught by min_requests."""
    passed = value is None or value >= minimum
    verdict = "≥" if passed else "is below the minimum"
    return CheckResult(
        name=name,
        passed=passed,
        value=value,
        threshold=minimum,
        detail=f"canary {what} {fmt_number(value)} on {basis} {verdict} {minimum:.3f}",
    )


def analyse_step(
    policy: CanaryPolicy,
    *,
    step: int,
    weight: int,
    stable_version: str,
    canary_version: str,
    stable: ServerSample,
    stable_so_far: ServerSample,
    canary: ServerSample | None,
    record: TrafficRecord,
    canary_down: str | None = None,
    final: bool,
    last_step: bool,
    task: str = "classification",
) -> StepFigures:
    """Judge one step at one check.

    Args:
        policy: The thresholds.
        step: 1-based step index.
        weight: Percent of traffic the canary gets in this step.
        stable_version: Registry version serving as stable.
        canary_version: Registry version serving as canary.
        stable: Stable's /metrics delta since the step began.
        stable_so_far: Stable's /metrics delta since the rollout began (the p95 reference when this step
            gave stable fewer than ``min_requests`` requests).
        canary: The canary's /metrics delta since the step began; None when it could not be scraped.
        record: The driver's record of the step so far.
        canary_down: Why the canary is not answering (exited, unreachable), or None while it is up.
        final: The step's window is over: the decision may continue or promote; before, it can only roll back.
        last_step: This is the policy's last step (passing it promotes).
        task: The model's task (its labelled checks); a policy threshold of the other task is refused.
    """
    thresholds = policy.for_task(task)
    stable_figures = target_figures(stable_version, stable, record.stable, task)
    canary_figures = target_figures(canary_version, canary, record.canary, task)
    scope: Literal["step", "rollout"] = "step"
    stable_p95 = stable_figures.p95_seconds
    if stable.total < policy.min_requests:
        scope, stable_p95 = "rollout", histogram_quantile(P95, stable_so_far.buckets)
    agreement = _ratio(record.agreed, record.compared)
    p95_ratio = (
        canary_figures.p95_seconds / stable_p95 if canary_figures.p95_seconds is not None and stable_p95 else None
    )

    checks: list[CheckResult] = []
    if canary_down is not None or canary is None:
        checks.append(CheckResult(name="canary_up", passed=False, detail=canary_down or "canary /metrics unreadable"))
    else:
        enough = canary_figures.requests >= policy.min_requests
        checks.append(
            CheckResult(
                name="min_requests",
                passed=enough or not final,
                value=float(canary_figures.requests),
                threshold=float(policy.min_requests),
                detail=f"canary received {canary_figures.requests} requests; the step needs {policy.min_requests}",
            )
        )
        if enough:
            checks += _judge(policy, thresholds, canary_figures, stable_p95, record)

    failed = next((check for check in checks if not check.passed), None)
    decision: StepDecision = "roll_back" if failed else ("promote" if final and last_step else "continue")
    return StepFigures(
        step=step,
        weight=weight,
        seconds=record.seconds,
        stable=stable_figures,
        canary=canary_figures,
        stable_p95_scope=scope,
        p95_ratio=p95_ratio,
        agreement=agreement,
        rmse_ratio=record.rmse_ratio if task == "regression" else None,
        task=task,
        compared=record.compared,
        retried_on_stable=record.retried_on_stable,
        unanswered=record.unanswered,
        shadow_requests=record.shadow_requests,
        checks=checks,
        decision=decision,
        failed_check=failed.name if failed else None,
    )


def step_is_judged(figures: StepFigures) -> bool:
    """Whether a mid-window check had enough canary requests to apply the thresholds."""
    return any(check.name not in ("canary_up", "min_requests") for check in figures.checks)


# -- the result ------------------------------------------------------------------------------------


class RolloutResult(BaseModel):
    """What one rollout did: the decision, the check that decided it, and every step's figures."""

    model_config = ConfigDict(frozen=True)

    model_name: str
    candidate_version: str
    previous_champion_version: str | None
    champion_version: str | None = Field(description="The champion after the rollout.")
    decision: Decision
    failed_check: CheckName | None = None
    reason: str
    steps: list[StepFigures] = Field(default_factory=list)
    seconds: float = Field(description="Wall time of the whole stage, waiting for the lock included.")
    time_to_decision_seconds: float | None = Field(
        description="From the first request routed to the canary to the decision; None without a canary."
    )
    rollout_run_id: str = Field(description="MLflow run of this stage.")
    dataset_version: str | None = None
    backend: str = Field(default="local", description="Where the versions ran: local processes or kubernetes.")
    telemetry: dict[str, Any] = Field(
        default_factory=dict, description="GPU telemetry of the stage's work, TelemetrySummary.as_dict()."
    )
    server_startup: dict[str, float] = Field(
        default_factory=dict,
        description="Time to useful work of each server, from its /metrics: e.g. canary_model_load_seconds.",
    )

    def failing_check(self) -> CheckResult | None:
        for step in self.steps:
            if step.failure is not None:
                return step.failure
        return None

    def event_payload(self) -> dict[str, Any]:
        """The gpuflow.model.promoted / gpuflow.model.rolled-back payload, JSON-ready."""
        payload: dict[str, Any] = {
            "model_name": self.model_name,
            "version": self.candidate_version,
            "previous_version": self.previous_champion_version,
            "champion_version": self.champion_version,
            "decision": self.decision,
            "reason": self.reason,
            "time_to_decision_seconds": self.time_to_decision_seconds,
            "rollout_run_id": self.rollout_run_id,
            "steps": [step.summary() for step in self.steps],
        }
        if self.decision == "rolled_back":
            failing = self.failing_check()
            payload["failed_check"] = self.failed_check
            payload["figures"] = {
                "value": failing.value if failing else None,
                "threshold": failing.threshold if failing else None,
                "step": self.steps[-1].step if self.steps else None,
                "weight": self.steps[-1].weight if self.steps else None,
            }
        return payload
