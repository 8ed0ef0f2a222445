"""The quality gate as a pure function, so its rules are unit-tested apart from MLflow and Prefect.

A challenger passes when every check passes:

- ``min_accuracy``: test accuracy >= ``QualityGate.min_accuracy``;
- ``max_regression``: champion accuracy - challenger accuracy <= ``QualityGate.max_regression``
  (checked only when a champion exists; a negative regression is an improvement);
- ``max_ece``: expected calibration error <= ``QualityGate.max_ece`` (checked only when set).

Comparisons allow ``TOLERANCE`` so that a figure equal to its threshold passes even when floating-point
subtraction lands a hair beyond it (0.95 - 0.93 is 0.020000000000000018). A NaN figure always fails.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict

from blocks.quality_gate import QualityGate

TOLERANCE = 1e-9


class GateCheck(BaseModel):
    """One rule of the gate with the figure it saw and the threshold it applied."""

    model_config = ConfigDict(frozen=True)

    name: Literal["min_accuracy", "max_regression", "max_ece"]
    value: float
    threshold: float
    passed: bool


class GateDecision(BaseModel):
    """The gate's verdict: ``reasons`` holds one readable sentence per failing check (empty when passed)."""

    model_config = ConfigDict(frozen=True)

    passed: bool
    reasons: list[str]
    checks: list[GateCheck]


def _at_least(value: float, minimum: float) -> bool:
    return not math.isnan(value) and value >= minimum - TOLERANCE


def _at_most(value: float, maximum: float) -> bool:
    return not math.isnan(value) and value <= maximum + TOLERANCE


def decide(
    gate: QualityGate,
    *,
    accuracy: float,
    ece: float,
    champion_accuracy: float | None = None,
    champion_version: str | None = None,
) -> GateDecision:
    """Apply the gate's thresholds to a challenger's test figures (and the champion's, when there is one).

    Args:
        gate: The thresholds.
        accuracy: The challenger's test accuracy.
        ece: The challenger's expected calibration error.
        champion_accuracy: The champion's accuracy on the same test split; ``None`` when there is no champion.
        champion_version: The champion's registry version, only to name it in the reasons.
    """
    checks: list[GateCheck] = []
    reasons: list[str] = []

    ok = _at_least(accuracy, gate.min_accuracy)
    checks.append(GateCheck(name="min_accuracy", value=accuracy, threshold=gate.min_accuracy, passed=ok))
    if not ok:
        reasons.append(f"test accuracy {accuracy:.3f} is below the minimum {gate.min_accuracy:.3f}")

    if champion_accuracy is not None:
        regression = champion_accuracy - accuracy
        ok = _at_most(regression, gate.max_regression)
        checks.append(GateCheck(name="max_regression", value=regression, threshold=gate.max_regression, passed=ok))
        if not ok:
            who = f"champion (version {champion_version})" if champion_version else "champion"
            reasons.append(
                f"test accuracy {accuracy:.3f} is {regression:.3f} below the {who}'s {champion_accuracy:.3f}; "
                f"the largest regression allowed is {gate.max_regression:.3f}"
            )

    if gate.max_ece is not None:
        ok = _at_most(ece, gate.max_ece)
        checks.append(GateCheck(name="max_ece", value=ece, threshold=gate.max_ece, passed=ok))
        if not ok:
            reasons.append(f"expected calibration error {ece:.3f} is above the maximum {gate.max_ece:.3f}")

    return GateDecision(passed=not reasons, reasons=reasons, checks=checks)


def _figure(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def render_markdown(
    decision: GateDecision,
    *,
    model_name: str,
    model_version: str,
    metrics: dict[str, float],
    champion_metrics: dict[str, float] | None,
    champion_version: str | None,
    outcome: str,
) -> str:
    """The gate report as Markdown: verdict, the checks table, and challenger vs champion figures."""
    verdict = "passed" if decision.passed else "FAILED"
    lines = [
        f"# Quality gate {verdict}: `{model_name}` version {model_version}",
        "",
        outcome,
        "",
        "| check | value | threshold | result |",
        "|---|---|---|---|",
    ]
    for check in decision.checks:
        result = "pass" if check.passed else "**fail**"
        lines.append(f"| {check.name} | {check.value:.4f} | {check.threshold:.4f} | {result} |")
    if decision.reasons:
        lines += ["", "## Why it failed", ""] + [f"- {reason}" for reason in decision.reasons]
    champion_title = f"champion (v{champion_version})" if champion_version else "champion (none)"
    lines += [
        "",
        "## Challenger vs champion (same test split)",
        "",
        f"| metric | challenger (v{model_version}) | {champion_title} |",
        "|---|---|---|",
    ]
    for key, value in metrics.items():
        other = champion_metrics.get(key) if champion_metrics else None
        lines.append(f"| {key} | {_figure(value)} | {_figure(other)} |")
    return "\n".join(lines) + "\n"


def outcome(decision: GateDecision, *, version: str, promote_on_pass: bool, champion_version: str | None) -> str:
    """One sentence saying what the gate's verdict does to the aliases."""
    before = f"version {champion_version}" if champion_version else "none yet"
    if decision.passed and promote_on_pass:
        return f"Version {version} passed and becomes `champion` (previous champion: {before})."
    if decision.passed:
        return f"Version {version} passed; promotion is left to rollout, so it is `challenger` (champion: {before})."
    kept = f"`champion` stays version {champion_version}" if champion_version else "no `champion` is set"
    return f"Version {version} failed the gate: it stays `challenger` and {kept}."
