"""The train stage's logic: the trainer's command line, its MLflow run, and what it produced.

The flow stays orchestration only; everything that builds or reads something lives here. The trainer
itself is ``workloads.trainer`` and runs on whatever compute target the flow was given.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect import Task, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.states import State
from pydantic import BaseModel, ConfigDict, Field

from blocks.compute import ComputeTarget
from blocks.data_store import DataStore
from blocks.mlflow_tracking import MLflowTracking
from tasks.core.errors import ConfigurationError, DataNotFoundError, DataValidationError, RetryableError, WorkloadFailed
from tasks.core.trainer_spec import TrainerSpec
from tasks.core.workload import LABEL_TRAINING_ID, WorkloadResult, WorkloadSpec
from tasks.tracking.runs import client_for, current_flow_run_id, experiment_id, stage_run
from tasks.training.trainer_choice import LAUNCHER_MODULE, builtin_trainer, launcher_args
from workloads.dataset import DatasetCorrupt, DatasetManifest, DatasetNotFound, load_manifest
from workloads.sdk.contract import PRIMARY_METRIC
from workloads.tags import (
    TAG_COMPUTE_BACKEND,
    TAG_LABELS,
    TAG_MODEL,
    TAG_MODEL_URI,
    TAG_PARENT,
    TAG_STAGE,
    TAG_STOP_REASON,
    TAG_TASK,
    TAG_TRAINING_ID,
)

# The final-epoch figures a finished training must have logged, per task (the trainer's validation figures).
FINAL_METRICS = {
    "classification": ("val_accuracy", "val_loss", "train_loss"),
    "regression": ("val_rmse", "val_mae", "val_loss", "train_loss"),
}


class TrainedModel(BaseModel):
    """What the train stage hands on: where the model is and how well it did on validation."""

    model_config = ConfigDict(frozen=True)

    model_name: str = Field(description="Name the model will be registered under.")
    run_id: str = Field(description="The train stage's MLflow run.")
    model_uri: str = Field(description="The logged model (models:/m-<id>), loadable with mlflow.pytorch.load_model.")
    labels: list[str] = Field(
        description="Class labels in logit order (the run's gpuflow.labels tag); empty for regression."
    )
    task: str = Field(default="classification", description="classification or regression (the gpuflow.task tag).")
    training_id: str = Field(description="Checkpoint folder name; the same id resumes the same training.")
    dataset_uri: str
    dataset_version: str
    epochs: int = Field(description="Epochs asked for.")
    epochs_run: int = Field(
        default=0,
        description="Epochs trained (fewer than epochs after an early stop); a custom trainer's last reported step.",
    )
    device: str = Field(description="Where the trainer ran: cpu or cuda:N.")
    metrics: dict[str, float] = Field(
        description="Final-epoch validation figures: val_accuracy (or val_rmse and val_mae), val_loss, train_loss."
    )
    seconds: float = Field(description="The trainer's own wall time (process start to model logged).")
    stop_reason: str = Field(
        default="", description="Why training ended: 'completed: ...', 'plateau: ...' or 'divergence: ...'."
    )
    telemetry: dict[str, Any] = Field(
        default_factory=dict,
        description="The trainer's GPU telemetry, TelemetrySummary.as_dict() (GPU-seconds, utilisation, energy).",
    )
    timings: dict[str, float] = Field(
        default_factory=dict,
        description="The compute backend's own seconds, e.g. k8s_queue_seconds and k8s_start_seconds on Kubernetes.",
    )


def default_training_id() -> str:
    """Derived from the flow run, so a retried flow run resumes the same checkpoints."""
    flow_run = current_flow_run_id()
    return f"train-{flow_run}" if flow_run else f"train-{uuid.uuid4()}"


@task(name="read-dataset-manifest", cache_policy=NO_CACHE)
def dataset_manifest(dataset_uri: str, store: DataStore) -> DatasetManifest:
    """The manifest of the dataset to train on; fails before any run is created when it is not usable."""
    try:
        manifest = load_manifest(dataset_uri, store.object_store())
    except DatasetNotFound as exc:
        raise DataNotFoundError(f"{exc}; pass the dataset_uri a prepare run reported") from exc
    except DatasetCorrupt as exc:
        raise DataValidationError(str(exc)) from exc
    return manifest


def trainer_workload(
    *,
    dataset_uri: str,
    training_id: str,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    hidden_size: int,
    seed: int,
    device: str,
    run_id: str,
    tracking: MLflowTracking,
    store: DataStore,
    model_name: str,
    early_stop: str = "off",
    patience: int = 5,
    telemetry_interval: float | None = None,
    dataset_version: str = "",
    pipeline_run: str = "",
    trainer: TrainerSpec | None = None,
) -> WorkloadSpec:
    """The trainer's command line and environment; store credentials go into ``secret_env`` only.

    ``trainer`` None (or the built-in spec) runs ``python -m workloads.trainer`` with the options above; a custom
    trainer runs under the launcher with its own hyperparameters (the MLP's options do not apply to it).

    ``dataset_version`` and ``pipeline_run`` (the pipeline's MLflow run) only label the workload, so a cluster's
    cost tools can allocate a Job to the run, dataset and model it served.

    ``telemetry_interval`` None leaves the trainer's default (``GPUFLOW_TELEMETRY_INTERVAL``, else 1 s).
    """
    plain = {"MLFLOW_TRACKING_URI": tracking.uri, "MLFLOW_RUN_ID": run_id, **store.workload_env()}
    secret = store.workload_secrets()
    if trainer is None or trainer.kind == "builtin":
        hyperparameters = {
            "epochs": epochs,
            "batch_size": batch_size,
            "learning_rate": float(learning_rate),
            "hidden_size": hidden_size,
            "seed": seed,
        }
        run = builtin_trainer(hyperparameters, trainer)  # the flow's knobs (it read any --hp into them)
    else:
        run = trainer
    args = launcher_args(
        run,
        dataset_uri=dataset_uri,
        training_id=training_id,
        device=device,
        early_stop=early_stop,
        patience=patience,
        telemetry_interval=telemetry_interval,
    )
    return WorkloadSpec(
        name="trainer",
        module=LAUNCHER_MODULE,
        args=args,
        env=plain,
        working_dir=trainer.working_dir if trainer is not None else None,
        image=trainer.image if trainer is not None else None,
        secret_env=secret,
        labels={
            TAG_STAGE: "train",
            LABEL_TRAINING_ID: training_id,
            TAG_MODEL: model_name,
            **({"gpuflow.dataset-version": dataset_version} if dataset_version else {}),
            **({"gpuflow.pipeline-run": pipeline_run} if pipeline_run else {}),
        },
    )


@contextmanager
def training_run(
    tracking: MLflowTracking, training_id: str, *, parent_run_id: str | None, dataset_version: str
) -> Iterator[str]:
    """The stage's MLflow run: the one already made for this training id (same parent), else a new one.

    Reusing it means a retried flow run keeps one run with every epoch logged once, as the restarted
    trainer continues from its checkpoint.
    """
    client = client_for(tracking)
    existing = _existing_run(tracking, training_id, parent_run_id)
    if existing is None:
        with stage_run(tracking, "train", parent_run_id=parent_run_id, dataset_version=dataset_version) as run_id:
            client.set_tag(run_id, TAG_TRAINING_ID, training_id)
            yield run_id
        return
    client.update_run(existing, status="RUNNING")
    try:
        yield existing
    except BaseException:
        client.set_terminated(existing, status="FAILED")
        raise
    client.set_terminated(existing, status="FINISHED")


def _existing_run(tracking: MLflowTracking, training_id: str, parent_run_id: str | None) -> str | None:
    if "'" in training_id:
        return None
    runs = client_for(tracking).search_runs(
        [experiment_id(tracking)],
        filter_string=f"tags.`{TAG_TRAINING_ID}` = '{training_id}' and tags.`{TAG_STAGE}` = 'train'",
        max_results=10,
    )
    for run in runs:
        if run.data.tags.get(TAG_PARENT) == (parent_run_id or None):
            return str(run.info.run_id)
    return None


def retry_only_retryable(task: Task[Any, Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Prefect retries the trainer only after a :class:`RetryableError` (a lost Job, the cluster API away, a
    trainer that crashed for an unknown reason, locally or in a pod: exit codes outside PERMANENT_EXIT_CODES).

    A permanent failure (bad configuration, dataset, image, out of memory, no GPU node, a deadline or the local
    timeout) would fail again: it ends the task at once.
    """
    try:
        error = state.result(raise_on_failure=False)
    except Exception:
        return False
    return isinstance(error, RetryableError)


@task(
    name="run-trainer",
    cache_policy=NO_CACHE,
    retries=1,
    retry_delay_seconds=10,
    retry_condition_fn=retry_only_retryable,
)
def run_trainer(target: ComputeTarget, spec: WorkloadSpec) -> WorkloadResult:
    """Run the trainer on the compute target, its output lines going to this task's log.

    A retry (only after a retryable failure) starts the same training id again, which resumes from its
    newest checkpoint into the same MLflow run.
    """
    logger = get_run_logger()
    logger.info("starting %s (python -m %s) on %s", spec.name, spec.module, type(target).__name__)
    return target.run_workload(spec, logger.info)


def record_workload_timings(tracking: MLflowTracking, run_id: str, result: WorkloadResult) -> None:
    """The backend's name as a tag and its timings (``k8s_queue_seconds``, ...) as metrics on the stage's run."""
    from mlflow.entities import Metric, RunTag
    from mlflow.exceptions import MlflowException

    now = int(time.time() * 1000)
    metrics = [Metric(key, float(value), now, 0) for key, value in sorted(result.timings.items())]
    try:
        client_for(tracking).log_batch(run_id, metrics=metrics, tags=[RunTag(TAG_COMPUTE_BACKEND, result.backend)])
    except MlflowException as exc:
        get_run_logger().warning("could not log the %s timings to MLflow run %s: %s", result.backend, run_id, exc)


@task(name="read-trained-model", cache_policy=NO_CACHE)
def read_trained_model(
    tracking: MLflowTracking,
    run_id: str,
    *,
    model_name: str,
    training_id: str,
    dataset_uri: str,
    dataset_version: str,
    epochs: int,
    result: WorkloadResult,
    telemetry: dict[str, Any] | None = None,
    builtin: bool = True,
) -> TrainedModel:
    """What the trainer wrote into its run: the model URI, labels, final metrics and why it stopped.

    The built-in trainer must have logged all of :data:`FINAL_METRICS`; a custom trainer only the task's primary
    figure (the launcher checked it), and whichever of the others it reported are kept.

    The compute backend's timings (``result.timings``) are logged on the run first, and shown.
    """
    from mlflow.exceptions import MlflowException

    record_workload_timings(tracking, run_id, result)
    if result.timings:
        shown = ", ".join(f"{key}={value:.1f}" for key, value in sorted(result.timings.items()))
        get_run_logger().info("%s on %s: %s", result.name, result.backend, shown)
    try:
        run = client_for(tracking).get_run(run_id)
    except MlflowException as exc:
        raise ConfigurationError(f"MLflow run {run_id} could not be read back: {exc}") from exc
    tags, metrics, params = run.data.tags, run.data.metrics, run.data.params
    model_uri = tags.get(TAG_MODEL_URI)
    if not model_uri:
        raise WorkloadFailed(result.name, result.exit_code, result.tail, reason=f"exited 0 but set no {TAG_MODEL_URI}")
    task = tags.get(TAG_TASK, "classification")
    if task not in FINAL_METRICS:
        reason = f"set {TAG_TASK}={task!r}; expected one of {sorted(FINAL_METRICS)}"
        raise WorkloadFailed(result.name, result.exit_code, result.tail, reason=reason)
    required = FINAL_METRICS[task] if builtin else (PRIMARY_METRIC[task],)
    missing = [k for k in required if k not in metrics]
    if missing:
        raise WorkloadFailed(result.name, result.exit_code, result.tail, reason=f"logged no final {missing}")
    return TrainedModel(
        model_name=model_name,
        run_id=run_id,
        model_uri=model_uri,
        labels=[str(label) for label in json.loads(tags.get(TAG_LABELS, "[]"))],
        task=task,
        training_id=training_id,
        dataset_uri=dataset_uri,
        dataset_version=dataset_version,
        epochs=epochs,
        epochs_run=int(params.get("epochs_run") or params.get("steps_run") or epochs),
        device=params.get("device", ""),
        metrics={k: float(metrics[k]) for k in FINAL_METRICS[task] if k in metrics},
        seconds=float(metrics.get("workload_seconds", result.seconds)),
        stop_reason=tags.get(TAG_STOP_REASON, ""),
        telemetry=dict(telemetry or {}),
        timings=dict(result.timings),
    )
