"""One trainer run: resume or start, train epoch by epoch, log the model.

Order per epoch: checkpoint first, then metrics. A kill between the two leaves a checkpoint whose
metrics are missing from MLflow; the restarted trainer logs them before it continues. An epoch redone
because its newest checkpoint was broken is not logged again. So every epoch step is logged exactly once.
"""

from __future__ import annotations

import json
import sys
import time

import torch

from workloads.store import store_from_env
from workloads.trainer.checkpoint import Checkpoint, CheckpointStore
from workloads.trainer.config import ConfigError, TrainerConfig
from workloads.trainer.data import TrainingData, load_training_data
from workloads.trainer.loop import Trainer, pick_device
from workloads.trainer.reporting import TAG_RESUMED_FROM, TAG_TRAINING_ID, RunReporter

# Settings a checkpoint must share with the current run to be resumed: otherwise two trainings mix.
MUST_MATCH = ("batch_size", "learning_rate", "hidden_size", "dropout", "seed")


def say(line: str) -> None:
    print(line, flush=True)


def warn(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def train(config: TrainerConfig, started: float) -> None:
    """Train to ``config.hyper.epochs`` and log the model; raises ``TrainerError`` for known failures."""
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.use_deterministic_algorithms(True)
    try:
        device = pick_device(config.device)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    reporter = RunReporter(config.tracking_uri, config.run_id)
    try:
        existing_params = reporter.check_run()
    except LookupError as exc:
        raise ConfigError(f"{exc}; MLFLOW_RUN_ID must name a run the flow created") from exc

    store = store_from_env()
    data = load_training_data(config.dataset_uri, store)
    trainer = Trainer(data, config.hyper, device)
    checkpoints = CheckpointStore(config.checkpoint_uri, store, keep=config.keep_checkpoints, warn=warn)
    logged = reporter.logged_steps()
    resumed = resume(config, trainer, checkpoints, reporter, logged)
    record_run(config, reporter, data, device, existing_params, resumed)

    where = f"resuming after epoch {resumed.epoch}" if resumed else "starting"
    say(
        f"training {config.training_id} on {device}: {len(data.train)} train / {len(data.val)} val rows, "
        f"{len(data.features)} features, {len(data.labels)} classes; {where}"
    )
    while trainer.epoch < config.hyper.epochs:
        result = trainer.run_epoch()
        checkpoints.save(trainer.checkpoint(result.metrics(), config.dataset_uri))
        if result.epoch not in logged:  # redone after a broken checkpoint: already in the run
            reporter.log_epoch(result.epoch, result.metrics())
        say(result.progress_line(config.hyper.epochs))

    if resumed is not None and resumed.epoch >= config.hyper.epochs and reporter.model_uri():
        say(f"training {config.training_id} was already complete; model {reporter.model_uri()}")
        return
    reporter.log_metric("training_seconds", trainer.training_seconds, step=trainer.epoch)
    model_uri = reporter.log_model(trainer.model, data.val.x[:5], data.labels, step=trainer.epoch)
    reporter.log_metric("workload_seconds", time.perf_counter() - started, step=trainer.epoch)
    say(f"logged model {model_uri}")


def resume(
    config: TrainerConfig, trainer: Trainer, checkpoints: CheckpointStore, reporter: RunReporter, logged: set[int]
) -> Checkpoint | None:
    """Restore the newest usable checkpoint, logging its epoch if the kill came before its metrics."""
    resumed = checkpoints.latest()
    if resumed is None:
        return None
    check_compatible(config, resumed.hyper, resumed.dataset_uri)
    trainer.restore(resumed)
    if resumed.epoch not in logged:
        reporter.log_epoch(resumed.epoch, resumed.metrics)
        logged.add(resumed.epoch)
    return resumed


def record_run(
    config: TrainerConfig,
    reporter: RunReporter,
    data: TrainingData,
    device: torch.device,
    existing_params: dict[str, str],
    resumed: Checkpoint | None,
) -> None:
    """Params (those the run lacks) and tags that say what this training is and where it resumed."""
    params = {
        **config.params(),
        "dataset_name": data.name,
        "dataset_version": data.version,
        "labels": json.dumps(data.labels),
        "n_features": len(data.features),
        "train_rows": len(data.train),
        "val_rows": len(data.val),
        "device": str(device),
        "optimizer": "adam",
    }
    if device.type == "cuda":
        params["device_name"] = torch.cuda.get_device_name(device)
    differing = reporter.log_params(params, existing_params)
    if differing:
        warn(f"note: run already has params {', '.join(differing)} with other values; they were left as logged")
    tags = {TAG_TRAINING_ID: config.training_id}
    if resumed is not None:
        tags[TAG_RESUMED_FROM] = str(resumed.epoch)
    reporter.set_tags(tags)


def check_compatible(config: TrainerConfig, hyper: dict[str, object], dataset_uri: str) -> None:
    """Refuse to resume a checkpoint made with other settings: the result would belong to neither."""
    current = config.params()
    diffs = [f"{k}={hyper.get(k)!r} (now {current[k]!r})" for k in MUST_MATCH if hyper.get(k) != current[k]]
    if dataset_uri != config.dataset_uri:
        diffs.append(f"dataset_uri={dataset_uri!r} (now {config.dataset_uri!r})")
    if diffs:
        raise ConfigError(
            f"checkpoints of training id {config.training_id!r} were made with {', '.join(diffs)}; "
            "use a new training id or the same settings"
        )
