"""The quality gate as rules, applied by pure functions so they are unit-tested apart from MLflow and Prefect.

A rule (``blocks.quality_gate.GateRule``) names a metric and bounds it: ``at_least`` / ``at_most`` on the
challenger's figure, and/or ``max_regression`` against the champion's figure on the same split, where
regression means a move in the worse direction (champion - challenger when higher is better, challenger -
champion when lower is better; positive = worse), in the metric's units or ``relative`` to the champion's
figure. Directions come from the metric table (tasks/evaluation/metrics.py) or a custom metric's declaration.

Without rules on the block, each task has its default set:

- classification (today's three checks, same names and sentences): ``min_accuracy`` (accuracy >=
  ``QualityGate.min_accuracy``), ``max_regression`` (accuracy at most ``QualityGate.max_regression`` below the
  champion's) and ``max_ece`` (only when ``QualityGate.max_ece`` is set);
- regression: ``max_regression`` (RMSE at most 5 % above the champion's) and ``min_r2`` (R² >= 0).

Check names: ``min_<metric>`` / ``max_<metric>`` for bounds; ``max_regression`` for the task's primary metric's
regression and ``max_<metric>_regression`` for any other. A champion comparison runs only when a champion exists.
Comparisons allow ``TOLERANCE`` so that a figure equal to its threshold passes even when floating-point
subtraction lands a hair beyond it (0.95 - 0.93 is 0.020000000000000018). A NaN figure always fails.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict

from blocks.quality_gate import GateRule, QualityGate
from tasks.core.errors import ConfigurationError
from tasks.evaluation import custom_metrics
from tasks.evaluation.metrics import (
    BINARY_ONLY,
    CLASSIFICATION_METRICS,
    PRIMARY_METRIC,
    REGRESSION_METRICS,
    TIMING_METRICS,
    check_task,
    display_name,
    task_metrics,
)

TOLERANCE = 1e-9
REGRESSION_DEFAULT_RULES = (
    GateRule(metric="rmse", max_regression=0.05, relative=True),
    GateRule(metric="r2", at_least=0.0),
)


class GateCheck(BaseModel):
    """One bound of one rule with the figure it saw and the threshold it applied."""

    model_config = ConfigDict(frozen=True)

    name: str
    value: float
    threshold: float
    passed: bool
    metric: str = ""
    relative: bool = False


class GateDecision(BaseModel):
    """The gate's verdict: ``reasons`` holds one readable sentence per failing check (empty when passed)."""

    model_config = ConfigDict(frozen=True)

    passed: bool
    reasons: list[str]
    checks: list[GateCheck]


# --------------------------------------------------------------------------- which rules, which metrics


def rules_for(gate: QualityGate, task: str) -> list[GateRule]:
    """The block's rules, or the task's default set when it has none."""
    if gate.rules:
        return list(gate.rules)
    if check_task(task) == "regression":
        return list(REGRESSION_DEFAULT_RULES)
    rules = [GateRule(metric="accuracy", at_least=gate.min_accuracy, max_regression=gate.max_regression)]
    if gate.max_ece is not None:
        rules.append(GateRule(metric="ece", at_most=gate.max_ece))
    return rules


def metric_directions(gate: QualityGate, task: str, n_classes: int | None = None) -> dict[str, bool]:
    """Every metric an evaluation of ``task`` produces with this gate (name -> higher is better)."""
    return {**task_metrics(task, n_classes), **{m.name: m.higher_is_better for m in gate.custom_metrics}}


def check_gate_for_task(gate: QualityGate, task: str, n_classes: int | None = None) -> None:
    """Refuse a gate that cannot judge a model of ``task``; call it before training (evaluate calls it first too).

    A ``ConfigurationError`` names the problem: a custom metric named like a built-in one, a custom function that
    does not import, or a rule on a metric the evaluation will not produce (listing the ones it will). With
    ``n_classes`` known, a rule on ROC-AUC needs exactly two classes.
    """
    check_task(task, "the quality gate was asked about a dataset that")
    builtin = {**CLASSIFICATION_METRICS, **REGRESSION_METRICS, **TIMING_METRICS}
    for metric in gate.custom_metrics:
        if metric.name in builtin:
            raise ConfigurationError(
                f"custom metric {metric.name!r} has the name of a built-in metric; pick another name"
            )
        custom_metrics.resolve(metric.function, metric.name)
    produced = metric_directions(gate, task, n_classes)
    for rule in rules_for(gate, task):
        if rule.metric in produced:
            continue
        if rule.metric in BINARY_ONLY and task == "classification":
            raise ConfigurationError(
                f"quality gate rule on {rule.metric!r}: it is computed for a binary classification only, and this "
                f"dataset has {n_classes} classes"
            )
        custom = ", ".join(m.name for m in gate.custom_metrics) or "none"
        raise ConfigurationError(
            f"quality gate rule on {rule.metric!r}: the evaluation of a {task} model does not produce it; it "
            f"produces {', '.join(task_metrics(task, n_classes))} (custom metrics declared on the gate: {custom})"
        )


# --------------------------------------------------------------------------- applying the rules


def _at_least(value: float, minimum: float) -> bool:
    return not math.isnan(value) and value >= minimum - TOLERANCE


def _at_most(value: float, maximum: float) -> bool:
    return not math.isnan(value) and value <= maximum + TOLERANCE


# Figures between 0 and 1 read best with three decimals (the sentences of the classification defaults); others
# (RMSE in the target's units, custom metrics) switch to an exponent when three decimals would hide them.
UNIT_INTERVAL = frozenset({"accuracy", "macro_f1", "ece", "roc_auc"})


def _formatter(metric: str) -> Callable[[float], str]:
    def fmt(value: float) -> str:
        plain = metric in UNIT_INTERVAL or value == 0 or not math.isfinite(value) or 1e-3 <= abs(value) < 1e6
        return f"{value:.3f}" if plain else f"{value:.3e}"

    return fmt


def _percent(fraction: float) -> str:
    return f"{fraction * 100:.1f} %"


def worse_by(challenger: float, champion: float, higher_is_better: bool) -> float:
    """How much worse the challenger is (positive = worse, negative = better), in the metric's units."""
    return champion - challenger if higher_is_better else challenger - champion


def primary_regression(task: str, metrics: dict[str, float], champion: dict[str, float] | None) -> float | None:
    """How much worse the challenger's primary metric is than the champion's (positive = worse); None without one."""
    if champion is None:
        return None
    primary = PRIMARY_METRIC[check_task(task)]
    higher = {**CLASSIFICATION_METRICS, **REGRESSION_METRICS}[primary]
    return worse_by(metrics[primary], champion[primary], higher)


def _relative(regression: float, champion: float) -> float:
    if math.isnan(regression):
        return math.nan
    if champion == 0:
        return 0.0 if regression <= 0 else math.inf
    return regression / abs(champion)


def _apply(
    rule: GateRule,
    higher_is_better: bool,
    primary: bool,
    value: float,
    champion: float | None,
    champion_version: str | None,
) -> list[tuple[GateCheck, str | None]]:
    label = display_name(rule.metric)
    _fmt = _formatter(rule.metric)
    out: list[tuple[GateCheck, str | None]] = []

    def check(name: str, threshold: float, ok: bool, reason: str, *, seen: float = value, rel: bool = False) -> None:
        made = GateCheck(name=name, value=seen, threshold=threshold, passed=ok, metric=rule.metric, relative=rel)
        out.append((made, None if ok else reason))

    if rule.at_least is not None:
        reason = f"{label} {_fmt(value)} is below the minimum {_fmt(rule.at_least)}"
        check(f"min_{rule.metric}", rule.at_least, _at_least(value, rule.at_least), reason)
    if rule.at_most is not None:
        reason = f"{label} {_fmt(value)} is above the maximum {_fmt(rule.at_most)}"
        check(f"max_{rule.metric}", rule.at_most, _at_most(value, rule.at_most), reason)
    if rule.max_regression is not None and champion is not None:
        name = "max_regression" if primary else f"max_{rule.metric}_regression"
        who = f"champion (version {champion_version})" if champion_version else "champion"
        regression = worse_by(value, champion, higher_is_better)
        if rule.relative:
            fraction = _relative(regression, champion)
            reason = (
                f"{label} {_fmt(value)} is {_percent(fraction)} worse than the {who}'s {_fmt(champion)}; "
                f"the largest regression allowed is {_percent(rule.max_regression)}"
            )
            ok = _at_most(fraction, rule.max_regression)
            check(name, rule.max_regression, ok, reason, seen=fraction, rel=True)
        else:
            side = "below" if higher_is_better else "above"
            reason = (
                f"{label} {_fmt(value)} is {_fmt(regression)} {side} the {who}'s {_fmt(champion)}; "
                f"the largest regression allowed is {_fmt(rule.max_regression)}"
            )
            check(name, rule.max_regression, _at_most(regression, rule.max_regression), reason, seen=regression)
    return out


def apply_gate(
    gate: QualityGate,
    task: str,
    *,
    metrics: dict[str, float],
    champion_metrics: dict[str, float] | None = None,
    champion_version: str | None = None,
) -> GateDecision:
    """Apply the gate's rules for ``task`` to a challenger's test figures (and the champion's, when there is one).

    Args:
        gate: The block: its rules, or the task's defaults.
        task: classification or regression (the dataset's).
        metrics: The challenger's figures by metric name.
        champion_metrics: The champion's figures on the same split; ``None`` when there is no champion.
        champion_version: The champion's registry version, only to name it in the reasons.
    """
    directions = metric_directions(gate, task)
    primary = PRIMARY_METRIC[check_task(task)]
    checks: list[GateCheck] = []
    reasons: list[str] = []
    for rule in rules_for(gate, task):
        if rule.metric not in metrics:
            raise ConfigurationError(
                f"quality gate rule on {rule.metric!r}: the evaluation did not produce it (it produced "
                f"{', '.join(metrics)})"
            )
        champion = champion_metrics.get(rule.metric) if champion_metrics is not None else None
        higher = directions.get(rule.metric, True)
        for made, reason in _apply(
            rule, higher, rule.metric == primary, float(metrics[rule.metric]), champion, champion_version
        ):
            checks.append(made)
            if reason is not None:
                reasons.append(reason)
    return GateDecision(passed=not reasons, reasons=reasons, checks=checks)


def decide(
    gate: QualityGate,
    *,
    accuracy: float,
    ece: float,
    champion_accuracy: float | None = None,
    champion_version: str | None = None,
) -> GateDecision:
    """The classification gate on accuracy and ECE alone (the form callers used before rules existed)."""
    return apply_gate(
        gate,
        "classification",
        metrics={"accuracy": accuracy, "ece": ece},
        champion_metrics=None if champion_accuracy is None else {"accuracy": champion_accuracy},
        champion_version=champion_version,
    )


# --------------------------------------------------------------------------- the report


def _figure(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def _check_figure(check: GateCheck, value: float) -> str:
    return _percent(value) if check.relative else f"{value:.4f}"


def render_markdown(
    decision: GateDecision,
    *,
    model_name: str,
    model_version: str,
    metrics: dict[str, float],
    champion_metrics: dict[str, float] | None,
    champion_version: str | None,
    outcome: str,
    task: str = "classification",
) -> str:
    """The gate report as Markdown: verdict, the task, the checks table, and challenger vs champion figures."""
    verdict = "passed" if decision.passed else "FAILED"
    primary = PRIMARY_METRIC.get(task, "accuracy")
    better = "higher" if {**CLASSIFICATION_METRICS, **REGRESSION_METRICS}.get(primary, True) else "lower"
    lines = [
        f"# Quality gate {verdict}: `{model_name}` version {model_version}",
        "",
        outcome,
        "",
        f"Task: {task} (primary metric `{primary}`, {better} is better).",
        "",
        "| check | value | threshold | result |",
        "|---|---|---|---|",
    ]
    for check in decision.checks:
        result = "pass" if check.passed else "**fail**"
        seen, threshold = _check_figure(check, check.value), _check_figure(check, check.threshold)
        lines.append(f"| {check.name} | {seen} | {threshold} | {result} |")
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
