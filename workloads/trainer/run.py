"""One trainer run: resume or start, train epoch by epoch (stopping early when asked), log the model.

Order per epoch: checkpoint first, then metrics. A kill between the two leaves a checkpoint whose
metrics are missing from MLflow; the restarted trainer logs them before it continues. An epoch redone
because its newest checkpoint was broken is not logged again. So every epoch step is logged exactly once.
Each epoch's GPU telemetry travels in the same batch as its loss and accuracy (and in the checkpoint),
and a restarted trainer replays the logged epochs into its early stopper before it goes on.

Under torchrun (see ``workloads/sdk/distributed.py``) every rank trains its shard; rank 0 alone reads and writes
the MLflow run, chooses the checkpoint to resume from (the others load the same epoch from the shared store), writes
checkpoints, decides early stops (broadcast, so all ranks leave the loop together), prints the lines above and
logs the model while the others wait for it, so the group ends together and with one exit code. The other
ranks print one ``[rank N] epoch E/EPOCHS: S samples`` line per epoch.
"""

from __future__ import annotations

import json
import sys
import time

import torch

from workloads.convergence import EarlyStopper, StopDecision
from workloads.sdk.checkpoint import Checkpoint, CheckpointStore
from workloads.sdk.distributed import Comm, is_group_failure, pick_device
from workloads.store import StoreError, store_from_env
from workloads.tags import TAG_RESUMED_FROM, TAG_STOP_REASON, TAG_TRAINING_ID
from workloads.trainer.config import ConfigError, TrainerConfig, TrainerError
from workloads.trainer.data import TrainingData, load_training_data
from workloads.trainer.loop import Trainer
from workloads.trainer.reporting import RunReporter
from workloads.trainer.task import TaskHead
from workloads.trainer.telemetry import SERIES_ARTIFACT, SUMMARY_ARTIFACT, TrainingTelemetry

# Settings a checkpoint must share with the current run to be resumed: otherwise two trainings mix.
MUST_MATCH = ("batch_size", "learning_rate", "hidden_size", "dropout", "seed")
LOSS_KEY = "train_loss"  # logged every epoch whatever the task: the record of which epochs a run has
RISING_EPOCHS = 3  # divergence: train_loss rose this many epochs in a row


def say(line: str) -> None:
    print(line, flush=True)


def warn(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def early_stopper(config: TrainerConfig, head: TaskHead) -> EarlyStopper | None:
    """The stopper ``--early-stop`` asks for: plateau on the task's primary validation figure (val_accuracy or
    val_rmse), divergence on train_loss, or both."""
    if config.early_stop == "off":
        return None
    plateau = config.early_stop in ("plateau", "both")
    divergence = config.early_stop in ("divergence", "both")
    return EarlyStopper(
        head.stop_metric,
        head.stop_mode,
        patience=config.patience if plateau else None,
        loss_key=LOSS_KEY,
        rising_epochs=RISING_EPOCHS if divergence else None,
        stop_on_nonfinite=divergence,
    )


def train(config: TrainerConfig, started: float, telemetry: TrainingTelemetry) -> None:
    """Train to ``config.hyper.epochs`` (or an early stop) and log the model; raises ``TrainerError`` when it fails.

    ``telemetry`` was started by the caller when the process started (its milestones too), so GPU time and time
    to first step include imports and start-up; the caller stops it. Under torchrun this joins the process group
    and leaves it again, also on errors.
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.use_deterministic_algorithms(True)
    ranks = config.ranks
    try:
        device = pick_device(config.device, ranks.local_rank if ranks.distributed else None)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    with Comm(ranks, device) as comm:
        try:
            _start(config, started, device, comm, telemetry)
        except RuntimeError as exc:
            if comm.distributed and is_group_failure(exc):
                raise comm.lost(exc) from exc
            raise


def _start(
    config: TrainerConfig, started: float, device: torch.device, comm: Comm, telemetry: TrainingTelemetry
) -> None:
    reporter: RunReporter | None = None  # rank 0's alone: the other ranks never talk to MLflow
    existing_params: dict[str, str] = {}
    with comm.together("checking the MLflow run"):
        if comm.is_main:
            reporter = RunReporter(config.tracking_uri, config.run_id)
            try:
                existing_params = reporter.check_run()
            except LookupError as exc:
                raise ConfigError(f"{exc}; MLFLOW_RUN_ID must name a run the flow created") from exc
    _train(config, started, device, comm, reporter, existing_params, telemetry)


def _train(
    config: TrainerConfig,
    started: float,
    device: torch.device,
    comm: Comm,
    reporter: RunReporter | None,
    existing_params: dict[str, str],
    telemetry: TrainingTelemetry,
) -> None:
    """The run itself; ``reporter`` is None on ranks other than 0. Every collective is reached by every rank."""
    with comm.together("loading the dataset"):
        store = store_from_env()
        loading = time.perf_counter()
        data = load_training_data(config.dataset_uri, store)
        telemetry.data_loaded(time.perf_counter() - loading)
    trainer = Trainer(data, config.hyper, device, on_first_step=telemetry.first_step, comm=comm)
    checkpoints = CheckpointStore(config.checkpoint_uri, store, keep=config.keep_checkpoints, warn=warn)
    resumed, logged = resume(config, trainer, checkpoints, comm, reporter)
    if resumed is not None:
        telemetry.resumed(resumed.epoch, resumed.metrics)
    stopper = early_stopper(config, trainer.head) if reporter is not None else None
    decision: StopDecision | None = None
    with comm.together("recording the run"):
        if reporter is not None:
            record_run(config, reporter, data, device, existing_params, resumed, comm)
            if stopper is not None and resumed is not None:
                decision = replay(stopper, reporter, resumed.epoch, trainer.head)
            where = f"resuming after epoch {resumed.epoch}" if resumed else "starting"
            target = f"{len(data.labels)} classes" if data.task == "classification" else "a regression target"
            say(
                f"training {config.training_id} on {device}{group_note(comm)}: {len(data.train)} train / "
                f"{len(data.val)} val rows, {len(data.features)} features, {target}; {where}"
            )
    stop = comm.broadcast([stops(decision)])[0]
    while trainer.epoch < config.hyper.epochs and not stop:
        telemetry.begin_epoch(trainer.epoch + 1)
        result = trainer.run_epoch()
        metrics = {**result.metrics(), **telemetry.end_epoch(result.epoch)}
        checkpoint = trainer.checkpoint(metrics, config.dataset_uri)
        with comm.together(f"saving epoch {result.epoch}"):
            if reporter is None:
                say(f"[rank {comm.rank}] epoch {result.epoch}/{config.hyper.epochs}: {trainer.shard_size} samples")
            else:
                checkpoints.save(checkpoint)
                if result.epoch not in logged:  # redone after a broken checkpoint: already in the run
                    reporter.log_epoch(result.epoch, metrics)
                say(result.progress_line(config.hyper.epochs))
                if stopper is not None:
                    decision = stopper.update({"epoch": result.epoch, **result.metrics()})
        stop = comm.broadcast([stops(decision)])[0]

    if comm.distributed:
        telemetry.ranks_gpu_seconds = comm.gather(telemetry.summary().gpu_seconds)
    # Rank 0 logs the model while the others wait: they end with its outcome, so no pod succeeds alone.
    with comm.together("logging the model"):
        if reporter is not None:
            finish(config, started, trainer, reporter, existing_params, telemetry, resumed, decision, data)


def finish(
    config: TrainerConfig,
    started: float,
    trainer: Trainer,
    reporter: RunReporter,
    existing_params: dict[str, str],
    telemetry: TrainingTelemetry,
    resumed: Checkpoint | None,
    decision: StopDecision | None,
    data: TrainingData,
) -> None:
    """After the last epoch (rank 0): why training ended, the model, the telemetry."""
    # Restarted after the last epoch (or after the stop) with the model already logged: nothing left to do.
    if resumed is not None and trainer.epoch == resumed.epoch and reporter.model_uri():
        say(f"training {config.training_id} was already complete; model {reporter.model_uri()}")
        return
    stop_reason = describe_stop(decision, trainer.epoch, config.hyper.epochs)
    if decision is not None and decision.stop:
        say(f"stopped early after epoch {trainer.epoch}: {stop_reason}")
    reporter.set_tags({TAG_STOP_REASON: stop_reason})
    reporter.log_params({"stop_reason": stop_reason, "epochs_run": trainer.epoch}, existing_params)
    telemetry.finishing()
    reporter.log_metric("training_seconds", trainer.training_seconds, step=trainer.epoch)
    model_uri = reporter.log_model(trainer.model, data.val.x[:5], data.labels, data.task, step=trainer.epoch)
    log_telemetry(reporter, telemetry, trainer.epoch)
    reporter.log_metric("workload_seconds", time.perf_counter() - started, step=trainer.epoch)
    say(f"logged model {model_uri}")


def stops(decision: StopDecision | None) -> int:
    return int(decision is not None and decision.stop)


def group_note(comm: Comm) -> str:
    return f" (rank 0 of {comm.world_size}, {comm.backend})" if comm.distributed else ""


def describe_stop(decision: StopDecision | None, epoch: int, epochs: int) -> str:
    """Why training ended, in words; the ``gpuflow.stop_reason`` tag and ``stop_reason`` param."""
    if decision is not None and decision.stop:
        return f"{decision.kind}: {decision.reason}"
    return f"completed: ran all {epochs} epochs" if epoch >= epochs else f"stopped after epoch {epoch} of {epochs}"


def replay(stopper: EarlyStopper, reporter: RunReporter, upto: int, head: TaskHead) -> StopDecision | None:
    """Feed the epochs logged before a restart to the stopper; its last decision (None: nothing logged)."""
    decision = None
    for epoch in reporter.epoch_history((head.stop_metric, LOSS_KEY, "val_loss"), upto):
        decision = stopper.update(epoch)
        if decision.stop:
            break
    return decision


def log_telemetry(reporter: RunReporter, telemetry: TrainingTelemetry, step: int) -> None:
    """The training's GPU figures, time to useful work, summary.json and the raw series; never fails the run.

    Sampling stops first, so the metrics, the summary and the series describe the same span.
    """
    telemetry.stop()
    summary = telemetry.summary()
    say(f"telemetry: {summary.describe()}")
    try:
        reporter.log_epoch(step, telemetry.final_metrics())
        reporter.log_json(telemetry.document(), SUMMARY_ARTIFACT)
        reporter.log_bytes(telemetry.series(), SERIES_ARTIFACT)
    except Exception as exc:  # the model is logged: telemetry trouble must not turn it into a failure
        warn(f"warning: could not log telemetry: {type(exc).__name__}: {exc}")


def resume(
    config: TrainerConfig,
    trainer: Trainer,
    checkpoints: CheckpointStore,
    comm: Comm,
    reporter: RunReporter | None,
) -> tuple[Checkpoint | None, set[int]]:
    """Restore the newest usable checkpoint, logging its epoch if the kill came before its metrics.

    Returns it (None: starting afresh) and the epochs the run already has. Rank 0 chooses the checkpoint; the
    other ranks load the same epoch from the (shared) store, so every rank continues from the same state.
    """
    logged: set[int] = set()
    resumed: Checkpoint | None = None
    with comm.together("looking for checkpoints"):
        if reporter is not None:
            logged = reporter.logged_steps(LOSS_KEY)
            resumed = checkpoints.latest()
    epoch = comm.broadcast([resumed.epoch if resumed is not None else 0])[0]
    with comm.together(f"resuming from epoch {epoch}"):
        if epoch and resumed is None:
            resumed = load_shared(checkpoints, epoch)
        if resumed is not None:
            check_compatible(config, resumed.hyper, resumed.dataset_uri)
            trainer.restore(resumed)
            if reporter is not None and resumed.epoch not in logged:
                reporter.log_epoch(resumed.epoch, resumed.metrics)
                logged.add(resumed.epoch)
    return resumed, logged


def load_shared(checkpoints: CheckpointStore, epoch: int) -> Checkpoint:
    """The checkpoint rank 0 chose; a rank that cannot read it sees another store (or a broken copy)."""
    try:
        return checkpoints.load(epoch)
    except (ValueError, StoreError) as exc:
        raise TrainerError(
            f"cannot read the checkpoint of epoch {epoch} that rank 0 resumes from ({exc}); "
            f"every node must see the same checkpoint store ({checkpoints.uri}): use s3:// or a shared volume"
        ) from exc


def record_run(
    config: TrainerConfig,
    reporter: RunReporter,
    data: TrainingData,
    device: torch.device,
    existing_params: dict[str, str],
    resumed: Checkpoint | None,
    comm: Comm,
) -> None:
    """Params (those the run lacks) and tags that say what this training is and where it resumed."""
    params = {
        **config.params(),
        "dataset_name": data.name,
        "dataset_version": data.version,
        "task": data.task,
        "labels": json.dumps(data.labels),
        "n_features": len(data.features),
        "train_rows": len(data.train),
        "val_rows": len(data.val),
        "device": str(device),
        "optimizer": "adam",
    }
    if device.type == "cuda":
        params["device_name"] = torch.cuda.get_device_name(device)
    if comm.distributed:  # --batch-size is per rank
        params.update(world_size=comm.world_size, backend=comm.backend)
        params["global_batch_size"] = config.hyper.batch_size * comm.world_size
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
