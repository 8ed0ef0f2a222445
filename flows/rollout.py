"""The rollout stage: serve the champion (stable) and the challenger (canary), shift traffic step by step,
judge each step from the servers' /metrics and the labelled traffic, then promote or roll back.

Orchestration only: the lock is tasks/rollout/model_lock.py (one rollout per registered model at a time, a Prefect
global concurrency limit named ``gpuflow-rollout-<model>``), the candidate and champion tasks/rollout/target.py,
the canary walk tasks/rollout/canary_steps.py, the registry moves tasks/rollout/registry_moves.py, the metrics,
tags and report tasks/rollout/recording.py. Where the versions run is the ``Serving`` seam of
tasks/rollout/serving.py (local processes, or Deployments on a cluster with ``serving=<KubernetesServing
block>``, tasks/kube/cluster_serving.py); the policy is blocks/canary_policy.py. Locally no server outlives
the stage; on a cluster the stable Deployment keeps serving and nothing else the rollout made is left.
A rollback is a verdict, not a crash: the flow completes and returns it; errors (stable down, MLflow
unreachable, lock timeout) fail the flow and leave every alias as it was.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from prefect import flow, get_run_logger

from blocks.canary_policy import CanaryPolicy, rollout_policy
from blocks.data_store import resolve_data_store
from blocks.mlflow_tracking import MLflowTracking, resolve_tracking
from flows.prefect_server import own_prefect_ephemeral_server
from tasks.core import settings
from tasks.reporting.stage_telemetry import stage_telemetry
from tasks.rollout.canary import RolloutResult
from tasks.rollout.canary_steps import CanaryOutcome, run_canary
from tasks.rollout.model_lock import RolloutLocked, lock_name, rollout_lock
from tasks.rollout.recording import report
from tasks.rollout.registry_moves import promote, retire
from tasks.rollout.replay import load_replay_split, replay_rows
from tasks.rollout.serving import LocalServers, Serving
from tasks.rollout.target import dataset_uri as target_dataset_uri
from tasks.rollout.target import resolve_target
from tasks.tracking.events import MODEL_PROMOTED, MODEL_ROLLED_BACK, emit, model_resource
from tasks.tracking.runs import stage_run

own_prefect_ephemeral_server()  # flows called from Python use a server gpuflow owns (no leak, no race)

if TYPE_CHECKING:
    from blocks.kubernetes_serving import KubernetesServing

__all__ = ["RolloutLocked", "RolloutResult", "lock_name", "rollout", "rollout_lock"]


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


# -- the flow ------------------------------------------------------------------------------------


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
            the candidate was evaluated on (its gpuflow.dataset_uri tag).
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
    if cluster is not None:
        cluster.check_reachable(tracking_cfg.uri)  # server pods cannot read this machine's MLflow files

    with rollout_lock(model_name, lock_timeout_seconds, announce=logger.info):
        target = resolve_target(tracking_cfg, model_name, candidate_version)
        policy_cfg.for_task(target.task)  # a threshold meant for the other task is refused before servers start
        split = load_replay_split(
            store,
            dataset_uri or target_dataset_uri(store, target),
            target.task,
            target.candidate.labels,
            tracking_cfg,
            target.served_models(),  # the rows are shaped as their signatures ask (categories as strings or codes)
            max_rows=replay_rows(policy_cfg.step_requests()),
        )
        if split.rows < split.split_rows:
            logger.info("replaying %d of the test split's %d rows (one step's requests)", split.rows, split.split_rows)
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
