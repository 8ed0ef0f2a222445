"""The rollout stage: serve the champion (stable) and the challenger (canary), shift traffic step by step,
judge each step from the servers' /metrics and the labelled traffic, then promote or roll back.

Orchestration only: where the versions run is the ``Serving`` seam of tasks/rollout/serving.py (local processes, or
Deployments on a cluster with ``serving=<KubernetesServing block>``, tasks/kube/cluster_serving.py), traffic is
tasks/rollout/traffic.py, the rules and figures tasks/rollout/canary.py, the policy blocks/canary_policy.py.
One rollout per registered model at a time (a Prefect global concurrency limit named
``gpuflow-rollout-<model>``). Locally no server outlives the stage; on a cluster the stable Deployment keeps
serving and nothing else the rollout made is left.
A rollback is a verdict, not a crash: the flow completes and returns it; errors (stable down, MLflow
unreachable, lock timeout) fail the flow and leave every alias as it was.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict

from blocks.canary_policy import CanaryPolicy, rollout_policy
from blocks.data_store import DataStore, resolve_data_store
from blocks.mlflow_tracking import MLflowTracking, resolve_tracking
from flows.prefect_server import own_prefect_ephemeral_server
from tasks.core import settings
from tasks.core.errors import ConfigurationError, GateFailed, RetryableError
from tasks.evaluation.scoring import LabelledSplit, load_test_split
from tasks.reporting.stage_telemetry import stage_telemetry
from tasks.rollout.canary import (
    EMPTY_SAMPLE,
    CheckName,
    Decision,
    RolloutResult,
    ServerSample,
    StepFigures,
    analyse_step,
    artifact_key,
    render_markdown,
)
from tasks.rollout.serving import LocalServers, ServerNotReady, ServerUnreachable, Serving
from tasks.rollout.traffic import TrafficDriver
from tasks.tracking.events import MODEL_PROMOTED, MODEL_ROLLED_BACK, emit, model_resource
from tasks.tracking.registry import CHALLENGER, CHAMPION, ChampionMoved, RegisteredVersion, alias_version, read_version
from tasks.tracking.runs import client_for, stage_run
from workloads.tags import (
    TAG_CHAMPION_VERSION,
    TAG_DATASET_VERSION,
    TAG_GATE_PASSED,
    TAG_GATE_REASONS,
    TAG_MODEL_NAME,
    TAG_MODEL_VERSION,
    TAG_PREVIOUS_CHAMPION_VERSION,
    TAG_ROLLOUT_BACKEND,
    TAG_ROLLOUT_DECISION,
    TAG_ROLLOUT_FAILED_CHECK,
    TAG_ROLLOUT_REASON,
)

own_prefect_ephemeral_server()  # flows called from Python use a server gpuflow owns (no leak, no race)

if TYPE_CHECKING:
    from blocks.kubernetes_serving import KubernetesServing

__all__ = ["RolloutLocked", "RolloutResult", "lock_name", "rollout", "rollout_lock"]

REPORT_PATH = "rollout/canary.md"
STEPS_PATH = "rollout/steps.json"


class RolloutLocked(RetryableError):
    """Another rollout of the same model held the lock for longer than this one would wait."""


# -- the per-model lock ---------------------------------------------------------------------------


def lock_name(model_name: str) -> str:
    """The Prefect global concurrency limit that serialises rollouts of one registered model."""
    return "gpuflow-rollout-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", model_name)


def _ensure_limit(name: str) -> None:
    """Create the one-slot limit if missing (``concurrency`` silently skips limits that do not exist)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            existing = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):  # another rollout created it first
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
            return
        if existing.limit != 1 or not existing.active:
            client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(limit=1, active=True))


def _slot_taken(name: str) -> bool:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(name)
    return limit.active_slots >= limit.limit


@contextlib.contextmanager
def rollout_lock(
    model_name: str, timeout_seconds: float, announce: Callable[[str], None] | None = None
) -> Iterator[None]:
    """Hold the model's rollout slot; :class:`RolloutLocked` after ``timeout_seconds`` of waiting.

    When the slot is taken, ``announce`` gets one line saying what the rollout waits for.
    """
    from prefect.concurrency.sync import concurrency

    if timeout_seconds <= 0:
        raise ConfigurationError(f"lock_timeout_seconds must be positive, got {timeout_seconds}")
    name = lock_name(model_name)
    _ensure_limit(name)
    acquired = False
    try:
        with contextlib.ExitStack() as slot:
            if announce is not None and _slot_taken(name):
                announce(
                    f"waiting for another rollout of {model_name!r} to finish: one rollout per model at a "
                    f"time (Prefect concurrency limit {name!r}); waiting up to {timeout_seconds:g} s"
                )
            slot.enter_context(concurrency(name, occupy=1, timeout_seconds=timeout_seconds, strict=True))
            acquired = True
            yield
    except TimeoutError as exc:  # Prefect's AcquireConcurrencySlotTimeoutError, or one from the body
        if acquired:
            raise
        raise RolloutLocked(
            f"another rollout of {model_name!r} held the concurrency limit {name!r} for more than "
            f"{timeout_seconds:g}s (lock_timeout_seconds); try again once it has finished"
        ) from exc


# -- what to roll out ------------------------------------------------------------------------------


class RolloutTarget(BaseModel):
    """The candidate and the champion it would replace, as the registry says before the rollout."""

    model_config = ConfigDict(frozen=True)

    model_name: str
    candidate: RegisteredVersion
    champion: RegisteredVersion | None
    dataset_version: str | None


@task(name="resolve-rollout-target", cache_policy=NO_CACHE)
def resolve_target(tracking: MLflowTracking, model_name: str, candidate_version: str | None) -> RolloutTarget:
    """The candidate (given, or the ``challenger`` alias) and the champion; refuses a candidate the gate failed."""
    client = client_for(tracking)
    version = candidate_version or alias_version(client, model_name, CHALLENGER)
    if not version:
        raise ConfigurationError(
            f"model {model_name!r} has no {CHALLENGER!r} alias: run evaluate first, or pass candidate_version"
        )
    try:
        found = client.get_model_version(model_name, version)
    except Exception as exc:
        raise ConfigurationError(f"model {model_name!r} has no version {version!r}: {exc}") from exc
    gate = found.tags.get(TAG_GATE_PASSED)
    if gate != "true":
        if gate is None:
            raise ConfigurationError(
                f"{model_name!r} version {version} has no {TAG_GATE_PASSED} tag: only versions the evaluate "
                "stage registered and gated are rolled out"
            )
        raise GateFailed(json.loads(found.tags.get(TAG_GATE_REASONS) or "[]") or ["the quality gate failed"])
    champion_version = alias_version(client, model_name, CHAMPION)
    if champion_version == version:
        raise ConfigurationError(f"{model_name!r} version {version} is already the champion: nothing to roll out")
    return RolloutTarget(
        model_name=model_name,
        candidate=read_version(client, model_name, version),
        champion=read_version(client, model_name, champion_version) if champion_version else None,
        dataset_version=found.tags.get(TAG_DATASET_VERSION),
    )


def _dataset_uri(store: DataStore, target: RolloutTarget) -> str:
    if not target.dataset_version:
        raise ConfigurationError(
            f"{target.model_name!r} version {target.candidate.version} has no {TAG_DATASET_VERSION} tag: "
            "pass dataset_uri (a prepared dataset whose test split is replayed as traffic)"
        )
    return f"{store.root}/datasets/{settings.DEFAULT_DATASET_NAME}/{target.dataset_version}"


# -- the canary ------------------------------------------------------------------------------------


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
    return (
        f"step {figures.step} ({figures.weight}% canary, {figures.seconds:.1f}s): {figures.decision}{failed}; "
        f"requests stable {s.requests} canary {c.requests}; canary error rate {show(c.error_rate)}, "
        f"p95 ratio {show(figures.p95_ratio)}, accuracy {show(c.accuracy)}, agreement {show(figures.agreement)}"
    )


def run_canary(
    policy: CanaryPolicy, serving: Serving, target: RolloutTarget, split: LabelledSplit, log: Any
) -> CanaryOutcome:
    """Start both tracks, walk the policy's steps, take the canary off the moment it fails a check."""
    assert target.champion is not None
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
        split.labels.tolist(),
        requests_per_second=policy.local_requests_per_second,
        concurrency=policy.local_concurrency,
        timeout_seconds=policy.local_request_timeout_seconds,
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


# -- where the versions run ------------------------------------------------------------------------


def resolve_serving(name: str | None) -> KubernetesServing | None:
    """The saved KubernetesServing block, or None for local processes."""
    if not name:
        return None
    from blocks.kubernetes_serving import resolve_kubernetes_serving

    return resolve_kubernetes_serving(name)


def _open_serving(
    cluster: KubernetesServing | None, tracking: MLflowTracking, policy: CanaryPolicy, model_name: str, logger: Any
) -> Serving:
    """The backend for this rollout: local processes, or the cluster the block names."""
    if cluster is None:
        return LocalServers(tracking.uri, commands=policy.local_server_commands, log=logger.info)
    from tasks.kube.cluster_serving import ClusterServing

    return ClusterServing(cluster, tracking_uri=tracking.uri, model_name=model_name, log=logger.info)


# -- acting on the decision ------------------------------------------------------------------------


@task(name="promote-candidate", cache_policy=NO_CACHE)
def promote(tracking: MLflowTracking, target: RolloutTarget) -> str:
    """Move ``champion`` to the candidate, unless it moved since the rollout read it (:class:`ChampionMoved`)."""
    client = client_for(tracking)
    expected = target.champion.version if target.champion else None
    current = alias_version(client, target.model_name, CHAMPION)
    if current != expected:
        raise ChampionMoved(
            f"champion of {target.model_name!r} moved from version {expected} to {current} during the rollout; "
            "nothing was promoted"
        )
    client.set_registered_model_alias(target.model_name, CHAMPION, target.candidate.version)
    return target.candidate.version


@task(name="retire-candidate", cache_policy=NO_CACHE)
def retire(tracking: MLflowTracking, target: RolloutTarget) -> str | None:
    """Remove ``challenger`` from the rolled-back version (``champion`` untouched); returns the champion."""
    client = client_for(tracking)
    if alias_version(client, target.model_name, CHALLENGER) == target.candidate.version:
        client.delete_registered_model_alias(target.model_name, CHALLENGER)
    return alias_version(client, target.model_name, CHAMPION)


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


# -- the flow --------------------------------------------------------------------------------------


@flow(name="rollout", log_prints=False)
def rollout(
    model_name: str = settings.DEFAULT_MODEL_NAME,
    candidate_version: str | None = None,
    dataset_uri: str | None = None,
    policy: str | None = None,
    data_store: str | None = None,
    tracking: str | None = None,
    parent_run_id: str | None = None,
    lock_timeout_seconds: float = 1800.0,
    analysis_seconds: float | None = None,
    serving: str | None = None,
) -> RolloutResult:
    """Canary-release a gated version: promote it when every step passes, roll it back at the first failed check.

    With no champion yet, the candidate is promoted without a canary. Returns the result either way; a
    rollback is a completed run whose result says why (``decision``, ``failed_check``, ``reason``).

    Args:
        model_name: Registered model name in MLflow.
        candidate_version: Version to roll out; empty: the version behind the `challenger` alias.
        dataset_uri: Prepared dataset whose test split is replayed as labelled traffic; empty: the dataset
            the candidate was evaluated on (<store>/datasets/<default name>/<its gpuflow.dataset_version>).
        policy: Saved CanaryPolicy block name; empty uses the default steps and thresholds.
        data_store: Saved DataStore block name; empty uses GPUFLOW_HOME/store.
        tracking: Saved MLflowTracking block name; empty uses MLFLOW_TRACKING_URI or SQLite under GPUFLOW_HOME.
        parent_run_id: MLflow parent run (the pipeline's) to nest this stage's run under.
        lock_timeout_seconds: How long to wait while another rollout of the same model runs before failing.
        analysis_seconds: Override the policy's analysis window per step (seconds); empty keeps the policy's.
        serving: Saved KubernetesServing block name: the canary runs as Deployments on that cluster and the
            promoted version keeps serving there; empty runs both versions as local processes for the stage.
    """
    started = time.perf_counter()
    logger = get_run_logger()
    policy_cfg = rollout_policy(policy, analysis_seconds)  # refuses a policy that can never promote
    tracking_cfg = resolve_tracking(tracking)
    store = resolve_data_store(data_store)
    cluster = resolve_serving(serving)  # a bad block name fails before the lock is taken

    with rollout_lock(model_name, lock_timeout_seconds, announce=logger.info):
        target = resolve_target(tracking_cfg, model_name, candidate_version)
        split = load_test_split(store, dataset_uri or _dataset_uri(store, target))
        previous = target.champion.version if target.champion else None
        with (
            stage_run(tracking_cfg, "rollout", parent_run_id=parent_run_id, dataset_version=split.version) as run_id,
            stage_telemetry(tracking_cfg, run_id, "rollout") as telemetry,
        ):
            champion_after: str | None
            with _open_serving(cluster, tracking_cfg, policy_cfg, model_name, logger) as backend:
                if target.champion is None:
                    backend.serve_first(target.candidate, policy_cfg.server_start_timeout_seconds)
                    champion_after = promote(tracking_cfg, target)
                    outcome = CanaryOutcome(
                        "promoted_without_canary",
                        f"{model_name!r} had no champion: version {target.candidate.version} passed the gate and "
                        "is promoted without a canary (first model)",
                    )
                else:
                    outcome = run_canary(policy_cfg, backend, target, split, logger)
                    if outcome.decision == "promoted":
                        backend.promote()  # serving moves first: the registry then records what serves
                        champion_after = promote(tracking_cfg, target)
                    else:
                        backend.roll_back()
                        champion_after = retire(tracking_cfg, target)
            result = RolloutResult(
                model_name=model_name,
                candidate_version=target.candidate.version,
                previous_champion_version=previous,
                champion_version=champion_after,
                decision=outcome.decision,
                failed_check=outcome.failed_check,
                reason=outcome.reason,
                steps=outcome.steps,
                seconds=round(time.perf_counter() - started, 3),
                time_to_decision_seconds=outcome.time_to_decision_seconds,
                server_startup=outcome.server_startup,
                rollout_run_id=run_id,
                dataset_version=split.version,
                backend=backend.backend,
            )
            report(tracking_cfg, run_id, result, policy_cfg)
        result = result.model_copy(update={"telemetry": telemetry.as_dict()})

    event = MODEL_ROLLED_BACK if result.decision == "rolled_back" else MODEL_PROMOTED
    emit(event, model_resource(model_name), result.event_payload())
    if result.decision == "rolled_back":
        logger.warning("%s version %s %s", model_name, result.candidate_version, result.reason)
    else:
        logger.info("%s: champion is now version %s (%s)", model_name, champion_after, outcome.reason)
    return result
