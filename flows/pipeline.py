"""``ml_pipeline``: prepare -> train -> evaluate -> rollout as one versioned pipeline run.

Each stage is its own flow and still runs alone; here they run as subflows under one MLflow parent run,
so the UI shows one pipeline run with a child per stage. A failed quality gate or a rolled-back canary ends
the run Failed with the reasons (not a traceback): it is a verdict on the model, not a crash.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.states import Failed, State
from pydantic import BaseModel, ConfigDict, Field

from blocks.canary_policy import rollout_policy
from blocks.data_store import resolve_data_store
from blocks.mlflow_tracking import resolve_tracking
from blocks.pricing import resolve_pricing
from blocks.quality_gate import resolve_gate
from blocks.registry import resolve_compute
from flows.evaluate import evaluate
from flows.prefect_server import own_prefect_ephemeral_server
from flows.prepare import prepare
from flows.rollout import resolve_serving, rollout
from flows.train import train
from tasks.core.dataset_spec import DatasetSpec
from tasks.core.errors import GateFailed, ModelRejected, RolledBack
from tasks.data.naming import dataset_name_for, model_name_for
from tasks.evaluation.gate import check_gate_for_task
from tasks.reporting.stage_telemetry import pipeline_gpu_and_cost
from tasks.tracking import runs
from tasks.training.trainer_choice import resolve_trainer
from workloads.tags import TAG_GATE_PASSED, TAG_MODEL_VERSION, TAG_ROLLOUT_DECISION

own_prefect_ephemeral_server()  # flows called from Python use a server gpuflow owns (no leak, no race)


class PipelineResult(BaseModel):
    """What one pipeline run produced; ``gpuflow run --json`` prints it."""

    model_config = ConfigDict(frozen=True)

    pipeline_run_id: str = Field(description="MLflow parent run of this pipeline run.")
    pipeline_version: str
    environment: str = Field(description="Digest of the requirements.lock the environment was installed from.")
    dataset_name: str
    dataset_version: str
    dataset_uri: str
    dataset_cache_hit: bool
    train_run_id: str
    model_uri: str
    model_name: str
    model_version: str
    metrics: dict[str, float]
    gate: dict[str, Any] = Field(description="passed, reasons and the checks behind them.")
    champion_version: str | None
    previous_champion_version: str | None
    promoted: bool
    canary: dict[str, Any] | None = Field(
        description="Rollout decision, reason and each step's figures; empty when the gate failed or rollout was off."
    )
    stop_reason: str = Field(default="", description="Why training ended: completed, plateau or divergence.")
    gpu: dict[str, Any] = Field(default_factory=dict, description="GPU figures per stage and for the run.")
    cost: dict[str, Any] = Field(default_factory=dict, description="Cost per stage and for the run.")
    stage_seconds: dict[str, float] = Field(description="Wall time of each stage as the pipeline saw it.")
    stage_work_seconds: dict[str, float] = Field(description="Time each stage spent on its own work.")
    time_to_start: dict[str, float] = Field(
        default_factory=dict,
        description="Where the trainer waited before working: k8s_queue_seconds (Job created -> pod on a node), "
        "k8s_start_seconds (node -> container running: image pull and start); empty on the local backend.",
    )
    total_seconds: float


@flow(name="ml_pipeline", log_prints=False)
def ml_pipeline(
    data_uri: str = "demo",
    dataset_name: str | None = None,
    model_name: str | None = None,
    epochs: int = 20,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    hidden_size: int = 128,
    seed: int = 42,
    device: Literal["auto", "cpu", "cuda"] = "auto",
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    drop_duplicates: bool = False,
    promote_on_pass: bool = True,
    data_store: str | None = None,
    compute: str | None = None,
    tracking: str | None = None,
    gate: str | None = None,
    policy: str | None = None,
    canary_analysis_seconds: float | None = None,
    early_stop: Literal["off", "plateau", "divergence", "both"] = "off",
    patience: int = 5,
    pricing: str | None = None,
    serving: str | None = None,
    dataset_spec: str | DatasetSpec | None = None,
    trainer: str | None = None,
    hyperparameters: dict[str, Any] | None = None,
) -> PipelineResult | State:
    """Run prepare -> train -> evaluate -> rollout on one dataset: a new model earns its traffic or is rolled back.

    Args:
        data_uri: Raw data (CSV or Parquet): a path, file://, s3://bucket/key, or "demo" for the bundled digits.
        dataset_name: Name of the prepared dataset under <store>/datasets/; empty: the data file's name without its
            suffix (a pattern's folder name), "digits" for the demo.
        model_name: Registered model name in MLflow; empty: "gpuflow-<dataset name>".
        epochs: Training epochs.
        batch_size: Training batch size.
        learning_rate: Adam learning rate.
        hidden_size: Width of the MLP's hidden layers.
        seed: Seed for the split and the training.
        device: "auto" uses CUDA when present, else CPU.
        val_fraction: Share of rows for validation.
        test_fraction: Share of rows for the test split.
        drop_duplicates: Drop duplicate rows instead of rejecting the data.
        promote_on_pass: Roll a version that passes the gate out against the champion (canary); off registers only.
        data_store: Saved DataStore block name; empty uses GPUFLOW_HOME/store.
        compute: Saved compute-target block name; empty runs the trainer as a local process.
        tracking: Saved MLflowTracking block name; empty uses MLFLOW_TRACKING_URI or SQLite under GPUFLOW_HOME.
        gate: Saved QualityGate block name; empty uses the default thresholds.
        policy: Saved CanaryPolicy block name; empty uses the default steps and thresholds.
        canary_analysis_seconds: Override the canary policy's analysis window per step (seconds).
        early_stop: Stop training early on a plateau of the validation metric, on divergence, or both.
        patience: Epochs without improvement that make a plateau.
        pricing: Saved GpuPricing block name; empty uses the default prices.
        serving: Saved KubernetesServing block name: the canary runs as Deployments on that cluster and the
            promoted version keeps serving there; empty runs the canary as local processes.
        dataset_spec: The dataset spec (typed columns, target, split, duplicates): a YAML/JSON file or a saved
            DatasetSpec block name; empty uses the digits demo's schema. See docs/data.md.
        trainer: Your training code: a trainer spec file (YAML/JSON) or a saved TrainerSpec block name; empty: the
            built-in MLP. See docs/trainers.md.
        hyperparameters: Overrides of the trainer's hyperparameters, checked against its declared types.
    """
    logger = get_run_logger()
    started = time.perf_counter()
    dataset_name = dataset_name or dataset_name_for(data_uri)  # a team's own file is never published as "digits"
    model_name = model_name or model_name_for(dataset_name)
    tracking_cfg = resolve_tracking(tracking)
    prices = resolve_pricing(pricing)  # a bad block name fails before any work
    if promote_on_pass:
        rollout_policy(policy, canary_analysis_seconds)  # a canary that can never promote fails before any work
    resolve_trainer(trainer).with_overrides(hyperparameters or {})  # a bad trainer spec fails before any work
    # Pods on a cluster cannot read this machine's MLflow file or store folder: refused before any work.
    store_root = resolve_data_store(data_store).root
    resolve_compute(compute).check_reachable(tracking_uri=tracking_cfg.uri, store_uri=store_root)
    serving_block = resolve_serving(serving)
    if serving_block is not None:
        serving_block.check_reachable(tracking_cfg.uri)
    parent = runs.start_run(tracking_cfg, "ml_pipeline", stage="pipeline")
    client = runs.client_for(tracking_cfg)
    logger.info("pipeline %s (%s), MLflow run %s", runs.pipeline_version(), runs.environment_version(), parent)
    walls: dict[str, float] = {}

    def timed(stage: str, call: Any) -> Any:
        begin = time.perf_counter()
        try:
            return call()
        finally:
            walls[stage] = round(time.perf_counter() - begin, 3)

    try:
        prepared = timed(
            "prepare",
            lambda: prepare(
                data_uri=data_uri,
                dataset_name=dataset_name,
                val_fraction=val_fraction,
                test_fraction=test_fraction,
                seed=seed,
                drop_duplicates=drop_duplicates,
                data_store=data_store,
                tracking=tracking,
                parent_run_id=parent,
                dataset_spec=dataset_spec,
            ),
        )
        client.set_tag(parent, runs.TAG_DATASET_VERSION, prepared.dataset_version)
        check_gate_for_task(resolve_gate(gate), prepared.task)  # a rule the task cannot meet fails before training
        trained = timed(
            "train",
            lambda: train(
                dataset_uri=prepared.dataset_uri,
                model_name=model_name,
                epochs=epochs,
                batch_size=batch_size,
                learning_rate=learning_rate,
                hidden_size=hidden_size,
                seed=seed,
                device=device,
                early_stop=early_stop,
                patience=patience,
                compute=compute,
                data_store=data_store,
                tracking=tracking,
                parent_run_id=parent,
                trainer=trainer,
                hyperparameters=hyperparameters,
            ),
        )
        evaluation = timed(
            "evaluate",
            lambda: evaluate(
                train_run_id=trained.run_id,
                dataset_uri=prepared.dataset_uri,
                model_name=model_name,
                gate=gate,
                promote_on_pass=False,
                data_store=data_store,
                tracking=tracking,
                parent_run_id=parent,
            ),
        )
        rolled = None
        if evaluation.gate.passed and promote_on_pass:
            rolled = timed(
                "rollout",
                lambda: rollout(
                    model_name=model_name,
                    candidate_version=evaluation.model_version,
                    dataset_uri=prepared.dataset_uri,
                    policy=policy,
                    data_store=data_store,
                    tracking=tracking,
                    parent_run_id=parent,
                    analysis_seconds=canary_analysis_seconds,
                    serving=serving,
                ),
            )
    except BaseException:
        client.set_terminated(parent, status="FAILED")
        raise

    work = {"prepare": prepared.seconds, "train": trained.seconds, "evaluate": evaluation.seconds}
    if rolled is not None:
        work["rollout"] = rolled.seconds
    telemetry = {"prepare": prepared.telemetry, "train": trained.telemetry, "evaluate": evaluation.telemetry}
    if rolled is not None:
        telemetry["rollout"] = rolled.telemetry
    gpu, cost = pipeline_gpu_and_cost(telemetry, prices)
    result = PipelineResult(
        pipeline_run_id=parent,
        pipeline_version=runs.pipeline_version(),
        environment=runs.environment_version(),
        dataset_name=prepared.dataset_name,
        dataset_version=prepared.dataset_version,
        dataset_uri=prepared.dataset_uri,
        dataset_cache_hit=prepared.cache_hit,
        train_run_id=trained.run_id,
        model_uri=trained.model_uri,
        model_name=model_name,
        model_version=evaluation.model_version,
        metrics=dict(evaluation.metrics),
        gate=evaluation.gate.model_dump(mode="json"),
        champion_version=rolled.champion_version if rolled else evaluation.champion_version,
        previous_champion_version=evaluation.previous_champion_version,
        promoted=rolled is not None and rolled.decision != "rolled_back",
        canary=rolled.model_dump(mode="json") if rolled else None,
        stop_reason=trained.stop_reason,
        gpu=gpu,
        cost=cost,
        stage_seconds=walls,
        stage_work_seconds={k: round(float(v), 3) for k, v in work.items()},
        time_to_start=dict(trained.timings),
        total_seconds=round(time.perf_counter() - started, 3),
    )
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    client.log_batch(
        parent,
        metrics=[Metric(f"stage_seconds_{k}", v, now, 0) for k, v in walls.items()]
        + [Metric("gpu_seconds", float(gpu["run"]["gpu_seconds"]), now, 0)]
        + [Metric("cost_total", float(cost["run"]["total"]), now, 0)]
        + [Metric(f"test_{k}", float(v), now, 0) for k, v in result.metrics.items()],
    )
    client.set_tag(parent, TAG_MODEL_VERSION, result.model_version)
    client.set_tag(parent, TAG_GATE_PASSED, str(evaluation.gate.passed).lower())
    if rolled is not None:
        client.set_tag(parent, TAG_ROLLOUT_DECISION, rolled.decision)
    failure: ModelRejected | None = None
    if not evaluation.gate.passed:
        failure = GateFailed(list(evaluation.gate.reasons), result=result)
    elif rolled is not None and rolled.decision == "rolled_back":
        failure = RolledBack(f"canary rolled back: {rolled.reason}", result=result)
    if failure is not None:
        client.set_terminated(parent, status="FAILED")
        logger.warning("%s; champion stays %s", failure, _version_text(result.champion_version))
        return Failed(message=str(failure), data=failure)
    client.set_terminated(parent, status="FINISHED")
    return result


def _version_text(version: str | None) -> str:
    return f"version {version}" if version else "unset (no champion yet)"
