"""The ``train`` flow: run the trainer workload on a prepared dataset and announce the trained model."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from prefect import flow, get_run_logger
from pydantic import Field

from blocks.data_store import resolve_data_store
from blocks.mlflow_tracking import resolve_tracking
from blocks.registry import resolve_compute
from flows.prefect_server import own_prefect_ephemeral_server
from tasks.core.settings import DEFAULT_MODEL_NAME
from tasks.reporting.stage_telemetry import read_train_telemetry
from tasks.tracking import events
from tasks.tracking.runs import record_gpu_inventory
from tasks.training.trainer_choice import record_trainer, resolve_trainer
from tasks.training.trainer_job import (
    TrainedModel,
    dataset_manifest,
    default_training_id,
    read_trained_model,
    run_trainer,
    trainer_workload,
    training_run,
)
from workloads.sdk.contract import PRIMARY_METRIC

own_prefect_ephemeral_server()  # flows called from Python use a server gpuflow owns (no leak, no race)


@flow(name="train")
def train(
    dataset_uri: str,
    model_name: str = DEFAULT_MODEL_NAME,
    epochs: Annotated[int, Field(ge=1, le=10_000)] = 20,
    batch_size: Annotated[int, Field(ge=1, le=1_000_000)] = 64,
    learning_rate: Annotated[float, Field(gt=0, le=10)] = 1e-3,
    hidden_size: Annotated[int, Field(ge=1, le=65_536)] = 128,
    seed: Annotated[int, Field(ge=0)] = 42,
    device: Literal["auto", "cpu", "cuda"] = "auto",
    training_id: Annotated[str | None, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")] = None,
    early_stop: Literal["off", "plateau", "divergence", "both"] = "off",
    patience: Annotated[int, Field(ge=1, le=10_000)] = 5,
    telemetry_interval: Annotated[float, Field(ge=0.05, le=3600)] | None = None,
    compute: str | None = None,
    data_store: str | None = None,
    tracking: str | None = None,
    parent_run_id: str | None = None,
    trainer: str | None = None,
    hyperparameters: dict[str, Any] | None = None,
) -> TrainedModel:
    """Train a model on a prepared dataset (the built-in MLP, or your own trainer) and log it to MLflow.

    Args:
        dataset_uri: Prepared dataset folder, as the prepare stage reported it (<store>/datasets/<name>/<version>).
        model_name: Model name carried in the gpuflow.model.trained event (the registry name used by evaluate).
        epochs: Training epochs (at least 1).
        batch_size: Training batch size.
        learning_rate: Adam learning rate.
        hidden_size: Width of the MLP's two hidden layers.
        seed: Seed for weights and batch order; the same seed gives the same model.
        device: "auto" uses CUDA when the machine has it, else CPU; "cuda" fails where there is none.
        training_id: Names the checkpoint folder; the same id resumes an interrupted training. Empty: derived
            from this flow run, so retrying the flow run resumes.
        early_stop: Stop before `epochs` when "plateau" (the task's primary figure, val_accuracy or val_rmse, has
            not improved for `patience` epochs),
            "divergence" (a NaN/inf loss, or train_loss rising 3 epochs in a row), or "both"; "off" runs every epoch.
        patience: Epochs without improvement that make a plateau.
        telemetry_interval: Seconds between the trainer's GPU samples (NVML), 0.05 at the finest; empty: the
            trainer's default (GPUFLOW_TELEMETRY_INTERVAL, else 1 s).
        compute: Saved compute-target block (name or block-type/name); empty runs the trainer as a local process.
        data_store: Saved DataStore block name; empty uses GPUFLOW_HOME/store.
        tracking: Saved MLflowTracking block name; empty uses MLFLOW_TRACKING_URI or SQLite under GPUFLOW_HOME.
        parent_run_id: MLflow run of the pipeline this stage belongs to; empty makes a top-level run.
        trainer: Your training code: a trainer spec file (YAML/JSON) or a saved TrainerSpec block name; empty: the
            built-in MLP. A custom trainer runs under gpuflow's launcher (docs/trainers.md) with its own
            hyperparameters; epochs, batch_size, learning_rate, hidden_size and seed are the MLP's.
        hyperparameters: Overrides of the trainer's hyperparameters, checked against its declared types (for the
            built-in MLP: epochs, batch_size, learning_rate, hidden_size, seed).
    """
    logger = get_run_logger()
    store = resolve_data_store(data_store)
    tracking_cfg = resolve_tracking(tracking)
    target = resolve_compute(compute)
    chosen = resolve_trainer(trainer).with_overrides(hyperparameters or {})
    if chosen.kind == "builtin":  # its hyperparameters are the flow's own knobs (types checked by the spec)
        hp = chosen.hyperparameters
        epochs, batch_size = int(hp.get("epochs", epochs)), int(hp.get("batch_size", batch_size))
        learning_rate, seed = float(hp.get("learning_rate", learning_rate)), int(hp.get("seed", seed))
        hidden_size = int(hp.get("hidden_size", hidden_size))
    target.check_reachable(tracking_uri=tracking_cfg.uri, store_uri=store.root)  # before any run is created
    manifest = dataset_manifest(dataset_uri, store)
    training_id = training_id or default_training_id()

    with training_run(
        tracking_cfg, training_id, parent_run_id=parent_run_id, dataset_version=manifest.version
    ) as run_id:
        logger.info(
            "training %s on dataset %s@%s, MLflow run %s; GPUs: %s",
            training_id, manifest.name, manifest.version, run_id, record_gpu_inventory(tracking_cfg, run_id),
        )  # fmt: skip
        record_trainer(tracking_cfg, run_id, chosen)
        spec = trainer_workload(
            dataset_uri=dataset_uri,
            training_id=training_id,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            hidden_size=hidden_size,
            seed=seed,
            device=device,
            run_id=run_id,
            tracking=tracking_cfg,
            store=store,
            model_name=model_name,
            early_stop=early_stop,
            patience=patience,
            telemetry_interval=telemetry_interval,
            dataset_version=manifest.version,
            pipeline_run=parent_run_id or run_id,
            trainer=chosen,
        )
        result = run_trainer(target, spec)
        telemetry = read_train_telemetry(tracking_cfg, run_id)
        trained = read_trained_model(
            tracking_cfg,
            run_id,
            model_name=model_name,
            training_id=training_id,
            dataset_uri=dataset_uri,
            dataset_version=manifest.version,
            epochs=epochs,
            result=result,
            telemetry=telemetry.as_dict(),
            builtin=chosen.kind == "builtin",
        )

    events.emit(
        events.MODEL_TRAINED,
        events.model_resource(model_name),
        {
            "model_name": model_name,
            "run_id": trained.run_id,
            "model_uri": trained.model_uri,
            "dataset_uri": dataset_uri,
            "dataset_version": manifest.version,
            "training_id": training_id,
        },
    )
    primary = PRIMARY_METRIC[trained.task]
    logger.info(
        "trained %s: %s=%.4f in %.1fs (%s); model %s",
        model_name, primary, trained.metrics[primary], trained.seconds, trained.stop_reason, trained.model_uri,
    )  # fmt: skip
    return trained
