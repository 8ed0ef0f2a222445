"""The canary walk: start both tracks, shift traffic step by step, judge every interval, stop at the first failure.

Where the versions run is the ``Serving`` seam (serving.py), the traffic traffic.py, the checks and figures
canary.py; this module only sequences them and says what was decided (:class:`CanaryOutcome`), before the
registry is touched.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from blocks.canary_policy import CanaryPolicy
from tasks.rollout.canary import CheckName, Decision, StepFigures, analyse_step
from tasks.rollout.replay import ReplaySplit
from tasks.rollout.server_metrics import EMPTY_SAMPLE, ServerSample
from tasks.rollout.serving import ServerNotReady, ServerUnreachable, Serving
from tasks.rollout.target import RolloutTarget
from tasks.rollout.traffic import TrafficDriver

__all__ = ["CanaryOutcome", "canary_step", "run_canary"]


@dataclass
class CanaryOutcome:
    """What the canary decided, before the registry is touched."""

    decision: Decision
    reason: str
    failed_check: CheckName | None = None
    steps: list[StepFigures] = field(default_factory=list)
    time_to_decision_seconds: float | None = None
    server_startup: dict[str, float] = field(default_factory=dict)


def _scrape_stable(serving: Serving) -> ServerSample:
    """Stable's figures; a stable that is gone ends the stage with an error (the champion is not on trial)."""
    try:
        return serving.sample("stable")
    except ServerUnreachable as exc:
        raise serving.failure("stable", f"stopped answering: {exc}") from exc


def _scrape_canary(serving: Serving) -> tuple[ServerSample | None, str | None]:
    """The canary's figures, or why there are none (a failed check, not an error)."""
    gone = serving.down("canary")
    if gone:
        return None, gone
    try:
        return serving.sample("canary"), None
    except ServerUnreachable as exc:
        return None, f"{exc}; last log lines:\n{exc.tail}" if exc.tail else str(exc)


def _sleep_until(deadline: float, serving: Serving) -> None:
    """Sleep until ``deadline``, waking early if the canary goes down (a crash is judged at once)."""
    while serving.down("canary") is None:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, 0.05))


@task(name="canary-step", cache_policy=NO_CACHE, task_run_name="canary step {index}: {weight}%")
def canary_step(
    policy: CanaryPolicy,
    serving: Serving,
    driver: TrafficDriver,
    target: RolloutTarget,
    index: int,
    weight: int,
    rollout_start: ServerSample,
) -> tuple[StepFigures, float]:
    """Route the step's share, drive its traffic and check it every interval; returns its figures and when
    it decided."""
    assert target.champion is not None
    effective = serving.set_weight(weight, policy.server_start_timeout_seconds)
    stable_start = _scrape_stable(serving)
    canary_start, down = _scrape_canary(serving)
    window = policy.analysis_seconds
    interval = min(policy.check_interval_seconds, window)
    driver.start(weight)
    began = time.monotonic()
    next_check = began + interval
    try:
        while True:
            if down is None:
                _sleep_until(min(next_check, began + window), serving)
                down = serving.down("canary")
            final = time.monotonic() >= began + window - 1e-3
            record = driver.stop() if final or down else driver.snapshot()
            stable_now = _scrape_stable(serving)
            canary_now, down = _scrape_canary(serving) if down is None else (None, down)
            figures = analyse_step(
                policy,
                step=index,
                weight=weight,
                stable_version=target.champion.version,
                canary_version=target.candidate.version,
                stable=stable_now.since(stable_start),
                stable_so_far=stable_now.since(rollout_start),
                canary=canary_now.since(canary_start or EMPTY_SAMPLE) if canary_now else None,
                record=record,
                canary_down=down,
                final=final,
                last_step=index == len(policy.step_weights),
                task=target.task,
            ).model_copy(update={"effective_weight": effective})
            if figures.decision == "roll_back" or final:
                return figures, time.monotonic()
            next_check += interval
    finally:
        if driver.running:
            driver.stop()


def _describe(figures: StepFigures) -> str:
    """One log line per step: the decision and the canary's headline figures."""

    def show(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    c, s = figures.canary, figures.stable
    failed = f" [{figures.failed_check}]" if figures.failed_check else ""
    labelled = (
        f"RMSE ratio {show(figures.rmse_ratio)}" if figures.task == "regression" else f"accuracy {show(c.accuracy)}"
    )
    return (
        f"step {figures.step} ({figures.weight}% canary, {figures.seconds:.1f}s): {figures.decision}{failed}; "
        f"requests stable {s.requests} canary {c.requests}; canary error rate {show(c.error_rate)}, "
        f"p95 ratio {show(figures.p95_ratio)}, {labelled}, agreement {show(figures.agreement)}"
    )


def run_canary(
    policy: CanaryPolicy, serving: Serving, target: RolloutTarget, split: ReplaySplit, log: Any
) -> CanaryOutcome:
    """Start both tracks, walk the policy's steps, take the canary off the moment it fails a check."""
    assert target.champion is not None
    thresholds = policy.for_task(target.task)  # a threshold of the other task: refused before any server starts
    serving.start("stable", target.champion)
    serving.start("canary", target.candidate)
    serving.wait_ready("stable", policy.server_start_timeout_seconds)
    try:
        serving.wait_ready("canary", policy.server_start_timeout_seconds)
    except ServerNotReady as exc:
        if exc.blameless:
            raise  # MLflow, the registry or the cluster is at fault, not the candidate: nothing decided
        serving.roll_back()
        return CanaryOutcome("rolled_back", f"the canary never became ready: {exc}", failed_check="canary_ready")
    log.info("stable %s and canary %s are ready", target.champion.model_uri, target.candidate.model_uri)
    startup = {
        f"{role}_{name}": value for role in ("stable", "canary") for name, value in serving.startup(role).items()
    }

    driver = TrafficDriver(
        serving.routes(policy.local_request_timeout_seconds),
        split.features,
        split.labels,
        requests_per_second=policy.local_requests_per_second,
        concurrency=policy.local_concurrency,
        timeout_seconds=policy.local_request_timeout_seconds,
        thresholds=thresholds,
    )
    rollout_start = _scrape_stable(serving)
    steps: list[StepFigures] = []
    decided = time.monotonic()
    for index, weight in enumerate(policy.step_weights, start=1):
        figures, decided = canary_step(policy, serving, driver, target, index, weight, rollout_start)
        steps.append(figures)
        log.info("%s", _describe(figures))
        if figures.decision == "roll_back":
            serving.roll_back()  # traffic is already off it; locally it drains while the stage goes on
            break
    first = driver.first_canary_at
    to_decision = round(decided - first, 3) if first is not None else None
    last = steps[-1]
    failure = last.failure
    if failure is not None:
        reason = f"rolled back at step {last.step} ({last.weight}% canary): {failure.detail}"
        return CanaryOutcome("rolled_back", reason, failure.name, steps, to_decision, startup)
    reason = f"every check passed at each of {len(steps)} steps ({', '.join(f'{w}%' for w in policy.step_weights)})"
    return CanaryOutcome("promoted", reason, None, steps, to_decision, startup)
