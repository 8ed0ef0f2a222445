"""The canary's Markdown report: the decision, then one table per step with each check's figures and verdict
(logged on the rollout's MLflow run and published as the Prefect artifact ``canary-<model>``)."""

from __future__ import annotations

import re

from blocks.canary_policy import CanaryPolicy
from tasks.rollout.canary import CheckName, RolloutResult, StepFigures, fmt_ms, fmt_number


def artifact_key(model_name: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes."""
    slug = re.sub(r"[^a-z0-9]+", "-", model_name.lower()).strip("-")
    return f"canary-{slug or 'model'}"


_HEADLINES = {
    "promoted": "promoted",
    "rolled_back": "ROLLED BACK",
    "promoted_without_canary": "promoted without a canary",
}


def _check_cell(step: StepFigures, name: CheckName) -> str:
    check = next((c for c in step.checks if c.name == name), None)
    if check is None:
        return "—"
    return "pass" if check.passed else "**FAIL**"


def _labelled_rows(step: StepFigures, policy: CanaryPolicy) -> list[str]:
    """The task's labelled figures: accuracy for a classifier, RMSE (and its ratio) for a regressor."""
    s, c = step.stable, step.canary
    thresholds = policy.for_task(step.task)
    agreement = f"| agreement with stable | — | {fmt_number(step.agreement)} ({step.compared} rows) | "
    if step.task == "regression":
        tolerance = f"within {thresholds.agreement_atol:g} + {thresholds.agreement_rtol:g} x abs(stable)"
        return [
            f"| RMSE (labelled) | {fmt_number(s.rmse)} | {fmt_number(c.rmse)} | | |",
            f"| RMSE ratio on the same rows | — | {fmt_number(step.rmse_ratio)} | ≤ {thresholds.max_rmse_ratio:.3f} "
            f"| {_check_cell(step, 'rmse_ratio')} |",
            f"{agreement}≥ {policy.min_agreement:.3f} ({tolerance}) | {_check_cell(step, 'agreement')} |",
        ]
    return [
        f"| accuracy (labelled) | {fmt_number(s.accuracy)} | {fmt_number(c.accuracy)} "
        f"| ≥ {thresholds.min_accuracy:.3f} | {_check_cell(step, 'accuracy')} |",
        f"{agreement}≥ {policy.min_agreement:.3f} | {_check_cell(step, 'agreement')} |",
    ]


def render_markdown(result: RolloutResult, policy: CanaryPolicy) -> str:
    """The rollout as Markdown: the verdict, then one table per step with both versions side by side."""
    stable_label = f"stable v{result.previous_champion_version}" if result.previous_champion_version else "stable"
    canary_label = f"canary v{result.candidate_version}"
    lines = [
        f"# Canary rollout of `{result.model_name}` version {result.candidate_version}: {_HEADLINES[result.decision]}",
        "",
        result.reason,
        "",
        f"Champion before: {result.previous_champion_version or '—'}; after: {result.champion_version or '—'}. "
        f"Time to decision: {fmt_number(result.time_to_decision_seconds, 2)} s; stage: {result.seconds:.1f} s.",
        "",
        f"Policy: steps {policy.step_weights} %, window {policy.analysis_seconds:g} s, checks every "
        f"{min(policy.check_interval_seconds, policy.analysis_seconds):g} s, at least {policy.min_requests} canary "
        "requests per step.",
    ]
    for step in result.steps:
        verdict = {"continue": "passed", "promote": "passed, promote", "roll_back": "roll back"}[step.decision]
        failed = f" — failed check `{step.failed_check}`" if step.failed_check else ""
        s, c = step.stable, step.canary
        lines += [
            "",
            f"## Step {step.step}: {step.weight}% to the canary, {step.seconds:.1f} s — {verdict}{failed}",
            "",
            f"| figure | {stable_label} | {canary_label} | threshold | check |",
            "|---|---|---|---|---|",
            f"| requests (/metrics + transport errors) | {s.requests} | {c.requests} | ≥ {policy.min_requests} "
            f"| {_check_cell(step, 'min_requests')} |",
            f"| error rate | {fmt_number(s.error_rate)} | {fmt_number(c.error_rate)} | ≤ {policy.max_error_rate:.3f} "
            f"| {_check_cell(step, 'error_rate')} |",
            f"| p95 latency, server side | {fmt_ms(s.p95_seconds)} | {fmt_ms(c.p95_seconds)} | ratio "
            f"{fmt_number(step.p95_ratio, 2)} ≤ {policy.max_p95_latency_ratio:.2f} (or within "
            f"{fmt_ms(policy.latency_tolerance_seconds)}) | {_check_cell(step, 'p95_latency_ratio')} |",
            *_labelled_rows(step, policy),
            f"| routed by the driver | {s.routed} | {c.routed} | | |",
            f"| p95 latency, client side | {fmt_ms(s.client_p95_seconds)} | {fmt_ms(c.client_p95_seconds)} | | |",
            "",
            f"Canary failures answered by stable: {step.retried_on_stable}; unanswered requests: {step.unanswered}; "
            f"shadow requests to stable: {step.shadow_requests}; stable p95 scope: {step.stable_p95_scope}.",
        ]
        for check in step.checks:
            if not check.passed:
                lines += ["", f"**{check.name}**: {check.detail}"]
    if not result.steps:
        lines += ["", "No canary steps ran."]
    return "\n".join(lines) + "\n"
