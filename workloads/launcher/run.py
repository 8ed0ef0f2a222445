"""One launch: prepare the trainer's inputs, run it, relay and watch while it runs, check its outputs.

Order: the run (it must exist), the dataset (exit 3 when missing or corrupt), the run's metric history (what
is already logged stays logged once), the checkpoint folder restored from the store, the hyperparameters file;
then the trainer in its own process group. While it runs, a loop tails the metrics file every
:data:`POLL_SECONDS`: new points go to MLflow in batches, each step's GPU figures beside them, the early
stopper sees each new step, a ``"checkpoint": true`` line mirrors the checkpoint folder (after the line's
metrics are sent, so a kill between the two makes the trainer redo logged steps, which are skipped, rather
than lose them), and the stall timeout and the stop request's grace period are enforced. After the trainer
exits: the rest of the file is relayed, the checkpoint folder mirrored once more, and on exit 0 the outputs
are checked (:mod:`workloads.launcher.checks`) and the run tagged.

Started by torchrun, one launcher per rank (a Kubernetes Indexed Job's pods run ``workloads.trainer.launch ...
-m workloads.launcher ...``): rank 0's launcher does all of the above; another rank's only prepares the dataset,
runs its trainer and ends with its exit code (:meth:`Launch.follow`), since rank 0 alone reports, checkpoints and
logs the model (as the SDK's ranks do). Its metrics file is not read, so it neither relays a step twice nor stalls.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workloads.convergence import EarlyStopper, StopDecision
from workloads.imports import import_in_background
from workloads.launcher.checkpoints import CheckpointSync
from workloads.launcher.checks import (
    ContractBreach,
    breach_line,
    check_model,
    check_primary_metric,
)
from workloads.launcher.config import LauncherConfig
from workloads.launcher.data import LocalDataset, open_dataset
from workloads.launcher.process import TrainerProcess, exit_code
from workloads.launcher.relay import LineReader, MetricRelay, MetricsTail, run_history
from workloads.launcher.telemetry import LaunchTelemetry
from workloads.mlflow_errors import is_not_found
from workloads.mlflow_params import log_new_params
from workloads.sdk import contract as c
from workloads.store import store_from_env
from workloads.tags import TAG_LABELS, TAG_MODEL_URI, TAG_STOP_REASON, TAG_TASK, TAG_TRAINING_ID
from workloads.trainer.config import EXIT_FAILED, EXIT_OK, ConfigError
from workloads.trainer.telemetry import CUMULATIVE_GPU_SECONDS, SERIES_ARTIFACT, SUMMARY_ARTIFACT

if TYPE_CHECKING:
    from mlflow import MlflowClient

POLL_SECONDS = 0.05
LOSS_KEY = "train_loss"
RISING_STEPS = 3


def say(line: str) -> None:
    print(f"launcher: {line}", flush=True)


def warn(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def early_stopper(config: LauncherConfig, task: str) -> EarlyStopper | None:
    """The stopper ``--early-stop`` asks for, on the task's primary metric (as the built-in trainer's)."""
    if config.early_stop == "off":
        return None
    plateau = config.early_stop in ("plateau", "both")
    divergence = config.early_stop in ("divergence", "both")
    return EarlyStopper(
        c.PRIMARY_METRIC[task],
        "max" if c.PRIMARY_MODE[task] == "max" else "min",
        patience=config.patience if plateau else None,
        loss_key=LOSS_KEY,
        rising_epochs=RISING_STEPS if divergence else None,
        stop_on_nonfinite=divergence,
    )


def completed_reason(last_step: int | None, hparams: dict[str, Any]) -> str:
    """Why a training that exited 0 without an early stop ended: all its epochs when it reported one step per
    epoch (the built-in MLP and most SDK trainers), else the last step it reported."""
    epochs = hparams.get("epochs")
    if isinstance(epochs, int) and not isinstance(epochs, bool) and last_step == epochs:
        return f"completed: ran all {epochs} epochs"
    return f"completed: the trainer exited 0 after step {last_step}"


@dataclass
class Files:
    """The launch's work folder: what the trainer reads and writes besides the dataset and MLflow."""

    root: Path
    metrics: Path = field(init=False)
    failure: Path = field(init=False)
    stop: Path = field(init=False)
    stored: Path = field(init=False)
    hparams: Path = field(init=False)
    checkpoint: Path = field(init=False)

    def __post_init__(self) -> None:
        self.metrics = self.root / "metrics.jsonl"
        self.failure = self.root / "failure.txt"
        self.stop = self.root / "stop"
        self.stored = self.root / "stored"
        self.hparams = self.root / "hparams.json"
        self.checkpoint = self.root / "checkpoint"

    def mark_stored(self, step: int) -> None:
        """Tell the trainer that ``step`` 's metrics and checkpoint are in MLflow and the store (written whole:
        a reader never sees half a number)."""
        partial = self.root / ".stored"
        partial.write_text(str(step))
        partial.replace(self.stored)

    def failure_line(self) -> str:
        try:
            lines = [line.strip() for line in self.failure.read_text(errors="replace").splitlines() if line.strip()]
        except FileNotFoundError:
            return ""
        return lines[-1] if lines else ""


def trainer_env(
    config: LauncherConfig, dataset: LocalDataset, files: Files, device: str, environ: dict[str, str]
) -> dict[str, str]:
    """The environment the trainer runs with: the launcher's own plus the contract's variables."""
    hparams = json.dumps(config.hparams)
    return {
        **environ,
        c.ENV_CONTRACT: c.CONTRACT,
        c.ENV_DATASET_URI: config.dataset_uri,
        c.ENV_DATASET_DIR: str(dataset.folder),
        c.ENV_TASK: dataset.manifest.task,
        c.ENV_PRIMARY_METRIC: c.PRIMARY_METRIC[dataset.manifest.task],
        c.ENV_HPARAMS: hparams,
        c.ENV_HPARAMS_FILE: str(files.hparams),
        c.ENV_CHECKPOINT_DIR: str(files.checkpoint),
        c.ENV_METRICS_FILE: str(files.metrics),
        c.ENV_FAILURE_FILE: str(files.failure),
        c.ENV_STOP_FILE: str(files.stop),
        c.ENV_STORED_FILE: str(files.stored),
        c.ENV_DEVICE: device,
        c.ENV_DEVICE_REQUEST: config.device,
        c.ENV_TRAINING_ID: config.training_id,
        c.ENV_TRACKING_URI: config.tracking_uri,
        c.ENV_RUN_ID: config.run_id,
    }


def pick_device(requested: str, telemetry: LaunchTelemetry) -> str:
    """``auto``: cuda when NVML sees a visible GPU (no torch import here); ``cuda`` without one is an error."""
    has_gpu = bool(telemetry.sampler.devices)
    if requested == "cuda" and not has_gpu:
        raise ConfigError("--device cuda was requested but no GPU is visible (NVML found none)")
    if requested == "auto":
        return "cuda" if has_gpu else "cpu"
    return requested


class Launch:
    """One launch of one trainer command (see the module docstring)."""

    def __init__(self, config: LauncherConfig, telemetry: LaunchTelemetry, started: float) -> None:
        from mlflow import MlflowClient

        self.config = config
        self.telemetry = telemetry
        self.started = started
        self.client: MlflowClient = MlflowClient(tracking_uri=config.tracking_uri)
        self.store = store_from_env()
        self.last_step: int | None = None
        self.decision: StopDecision | None = None
        self.stop_requested_at: float | None = None
        self.device = config.device  # what --device resolves to, once the GPUs are known

    # ------------------------------------------------------------------ before the trainer

    def check_run(self) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_run(self.config.run_id)
        except MlflowException as exc:
            if is_not_found(exc):
                raise ConfigError(
                    f"MLflow run {self.config.run_id!r} does not exist at {self.config.tracking_uri}; "
                    "MLFLOW_RUN_ID must name a run the flow created"
                ) from exc
            raise

    def record_params(self, dataset: LocalDataset) -> None:
        """The hyperparameters and what this training is (its dataset, where it runs), as params the run lacks;
        the training id tag."""
        from mlflow.exceptions import MlflowException

        manifest = dataset.manifest
        params: dict[str, Any] = {
            **self.config.hparams,
            "dataset_uri": self.config.dataset_uri,
            "dataset_name": manifest.name,
            "dataset_version": manifest.version,
            "training_id": self.config.training_id,
            "task": manifest.task,
            "n_features": len(manifest.features),
            "train_rows": manifest.rows.get("train", 0),
            "val_rows": manifest.rows.get("val", 0),
            "trainer_command": shlex.join(self.config.command)[:500],
            "early_stop": self.config.early_stop,
            "patience": self.config.patience,
        }
        if self.config.world_size > 1:
            params["world_size"] = self.config.world_size
        try:
            differing = log_new_params(
                self.client, self.config.run_id, params, {TAG_TRAINING_ID: self.config.training_id}
            )
        except MlflowException as exc:
            if getattr(exc, "error_code", "") != "INVALID_PARAMETER_VALUE":
                raise
            raise ConfigError(f"MLflow refused the hyperparameters as params: {exc.message}") from None
        if differing:
            warn(f"note: run already has params {', '.join(differing)} with other values; they were left as logged")

    def replay(self, stopper: EarlyStopper, history: dict[str, dict[int, float]], task: str) -> None:
        """Feed the steps logged before a restart to the stopper, as the built-in trainer does."""
        keys = (c.PRIMARY_METRIC[task], LOSS_KEY, "val_loss")
        steps = sorted({step for key in keys for step in history.get(key, {})})
        for step in steps:
            figures: dict[str, float] = {key: history[key][step] for key in keys if step in history.get(key, {})}
            self.decision = stopper.update({"epoch": step, **figures})
            if self.decision.stop:
                break

    # ------------------------------------------------------------------ the launch

    def run(self) -> int:
        with tempfile.TemporaryDirectory(prefix="gpuflow-launch-") as tmp:
            return self._run(Files(Path(tmp)))

    def _run(self, files: Files) -> int:
        config = self.config
        self.check_run()
        if config.rank != 0:
            return self.follow(files)
        loading = time.perf_counter()
        dataset = open_dataset(config.dataset_uri, self.store, files.root)
        self.telemetry.data_loaded(time.perf_counter() - loading)
        task = dataset.manifest.task
        device = self.device = pick_device(config.device, self.telemetry)
        self.record_params(dataset)
        history = run_history(self.client, config.run_id)
        before = history.get(CUMULATIVE_GPU_SECONDS, {})
        if before:
            self.telemetry.gpu_seconds_before = before[max(before)]
        relay = MetricRelay(self.client, config.run_id, history, batch_seconds=config.batch_seconds)
        stopper = early_stopper(config, task)
        if stopper is not None:
            self.replay(stopper, history, task)
        sync = CheckpointSync(self.store, config.checkpoint_uri, files.checkpoint)
        restored = sync.restore()
        files.hparams.write_text(json.dumps(config.hparams))
        env = trainer_env(config, dataset, files, device, dict(os.environ))
        resumed = f"{restored} checkpoint file(s) restored" if restored else "no checkpoint yet"
        say(
            f"training {config.training_id} ({task}, {dataset.manifest.name}/{dataset.manifest.version}) on {device}"
            f" into run {config.run_id}; {resumed}; starting {shlex.join(config.command)}"
        )
        if self.decision is not None and self.decision.stop:
            say(f"the run had already stopped early ({self.decision.reason}); the trainer is asked to stop at once")
            files.stop.write_text(f"{self.decision.kind}: {self.decision.reason}\n")
        trainer = TrainerProcess(config.command, env)
        self.telemetry.trainer_started()
        trainer.start()
        import_in_background("mlflow.pyfunc", "mlflow.pytorch")  # for the model check after the trainer
        try:
            code = self.watch(trainer, files, relay, stopper, sync, task)
        finally:
            trainer.clean_up()
        late = self.telemetry.trainer_ended()
        if late is not None:
            relay.add(*late)
        return self.finish(code, files, relay, sync, dataset)

    def follow(self, files: Files) -> int:
        """A rank other than 0: its trainer gets the same inputs, but rank 0's launcher owns every output."""
        config = self.config
        dataset = open_dataset(config.dataset_uri, self.store, files.root)
        device = pick_device(config.device, self.telemetry)
        files.checkpoint.mkdir(parents=True, exist_ok=True)  # rank 0 restores the checkpoint and sends it over
        files.hparams.write_text(json.dumps(config.hparams))
        env = trainer_env(config, dataset, files, device, dict(os.environ))
        say(f"rank {config.rank}: starting {shlex.join(config.command)}; rank 0's launcher relays, checkpoints, checks")
        trainer = TrainerProcess(config.command, env)
        trainer.start()
        try:
            returncode = trainer.poll()
            while returncode is None:
                time.sleep(POLL_SECONDS)
                returncode = trainer.poll()
        finally:
            trainer.clean_up()
        code = exit_code(returncode)
        if code != EXIT_OK:
            line = files.failure_line()
            warn(f"error: trainer exited {code}{f': {line}' if line else ' (it wrote no failure line)'}")
        return code

    def watch(
        self,
        trainer: TrainerProcess,
        files: Files,
        relay: MetricRelay,
        stopper: EarlyStopper | None,
        sync: CheckpointSync,
        task: str,
    ) -> int:
        """Relay and watch until the trainer exits; its exit code (or the launcher's own for a stall)."""
        tail = MetricsTail(files.metrics)
        reader = LineReader(c.ENV_METRICS_FILE)
        last_line = time.monotonic()
        stall = self.config.stall_timeout
        while True:
            code = trainer.poll()
            lines = tail.read()
            if lines:
                last_line = time.monotonic()
                self.relay_lines(reader.parse(lines), relay, stopper, sync, files)
            if relay.due():
                relay.flush()
            if code is not None:
                self.drain(tail, reader, relay, stopper, sync, files)
                return exit_code(code)
            now = time.monotonic()
            if self.stop_requested_at is not None and now - self.stop_requested_at > self.config.stop_grace:
                warn(
                    f"error: the trainer did not exit within --stop-grace {self.config.stop_grace:g} s of the stop "
                    "request; it was sent SIGTERM"
                )
                code = trainer.stop(grace=10.0)
                self.drain(tail, reader, relay, stopper, sync, files)
                return exit_code(code)
            if stall and now - last_line > stall:
                warn(f"error: the trainer wrote no metrics line for {stall:g} s (--stall-timeout); it was stopped")
                trainer.stop(grace=min(self.config.stop_grace, 10.0) or 1.0)
                self.drain(tail, reader, relay, stopper, sync, files)
                return EXIT_FAILED
            time.sleep(POLL_SECONDS)

    def drain(
        self,
        tail: MetricsTail,
        reader: LineReader,
        relay: MetricRelay,
        stopper: EarlyStopper | None,
        sync: CheckpointSync,
        files: Files,
    ) -> None:
        self.relay_lines(reader.parse(tail.read()), relay, stopper, sync, files)
        if tail.rest():
            warn(f"warning: the last line of {c.ENV_METRICS_FILE} has no newline and was skipped: {tail.rest()[:200]}")
        relay.flush()

    def relay_lines(
        self,
        lines: list[c.MetricsLine],
        relay: MetricRelay,
        stopper: EarlyStopper | None,
        sync: CheckpointSync,
        files: Files,
    ) -> None:
        for line in lines:
            figures = dict(line.metrics)
            if line.step != self.last_step:
                if self.last_step is None:
                    self.telemetry.first_step()
                figures.update(self.telemetry.step_reported(line.step))
                self.last_step = line.step
            fresh = relay.add(line.step, figures)
            if stopper is not None and self.stop_requested_at is None and fresh:
                self.decision = stopper.update({"epoch": line.step, **fresh})
                if self.decision.stop:
                    self.request_stop(files)
            if line.checkpoint:
                relay.flush()
                sync.sync()
                files.mark_stored(line.step)

    def request_stop(self, files: Files) -> None:
        assert self.decision is not None
        reason = f"{self.decision.kind}: {self.decision.reason}"
        files.stop.write_text(reason + "\n")
        self.stop_requested_at = time.monotonic()
        say(f"stopping early after step {self.decision.epoch}: {reason}; asked the trainer to stop")

    # ------------------------------------------------------------------ after the trainer

    def finish(self, code: int, files: Files, relay: MetricRelay, sync: CheckpointSync, dataset: LocalDataset) -> int:
        relay.flush()
        try:
            sync.sync()
        except Exception as exc:
            warn(f"warning: could not sync the checkpoint folder to {sync.uri}: {exc}")
        if code != EXIT_OK:
            line = files.failure_line()
            reason = f": {line}" if line else " (it wrote no failure line)"
            warn(f"error: trainer exited {code}{reason}")
            return code
        return self.check(relay, dataset)

    def check(self, relay: MetricRelay, dataset: LocalDataset) -> int:
        manifest = dataset.manifest
        run_id = self.config.run_id
        problems: list[str] = []
        primary = c.PRIMARY_METRIC[manifest.task]
        try:
            check_primary_metric(
                relay.known(primary) or primary in self.client.get_run(run_id).data.metrics, manifest, run_id
            )
        except ContractBreach as exc:
            problems.append(str(exc))
        model = None
        try:
            model = check_model(self.client, run_id, manifest, dataset.folder)
        except ContractBreach as exc:
            problems.append(str(exc))
        if problems:
            for problem in problems:
                warn(breach_line(problem))
            return ContractBreach.exit_code
        assert model is not None
        stop_reason = (
            f"{self.decision.kind}: {self.decision.reason}"
            if self.decision is not None and self.decision.stop
            else completed_reason(self.last_step, self.config.hparams)
        )
        tags = {TAG_MODEL_URI: model.uri, TAG_TASK: manifest.task, TAG_STOP_REASON: stop_reason}
        if manifest.task == "classification":
            tags[TAG_LABELS] = json.dumps(manifest.class_names)
        # As the built-in trainer's stop_reason and epochs_run: what ended the training and how far it got (a
        # relaunch of a finished run keeps the first launch's values, as MLflow keeps params).
        # The device it gave the trainer, unless the trainer logged where it really ran (an SDK trainer with
        # --device auto falls back to the CPU when its torch has no CUDA).
        outcome = {"stop_reason": stop_reason[:6000], "steps_run": str(self.last_step or 0), "device": self.device}
        existing = self.client.get_run(run_id).data.params
        from mlflow.entities import Param, RunTag

        self.client.log_batch(
            run_id,
            params=[Param(k, v) for k, v in outcome.items() if k not in existing],
            tags=[RunTag(k, v) for k, v in tags.items()],
        )
        self.log_telemetry(relay)
        say(f"model {model.uri} ({', '.join(model.flavors)}) keeps contract {c.CONTRACT}")
        return EXIT_OK

    def log_telemetry(self, relay: MetricRelay) -> None:
        """The launch's GPU figures, summary.json and series, as the built-in trainer logs them; never fails it."""
        from workloads.trainer.reporting import RunReporter

        self.telemetry.stop()
        summary = self.telemetry.summary()
        say(f"telemetry: {summary.describe()}")
        step = self.last_step or 0
        try:
            relay.add(step, {**self.telemetry.final_metrics(), "workload_seconds": time.perf_counter() - self.started})
            relay.flush()
            reporter = RunReporter(self.config.tracking_uri, self.config.run_id)
            reporter.log_json(self.telemetry.document(), SUMMARY_ARTIFACT)
            reporter.log_bytes(self.telemetry.series(), SERIES_ARTIFACT)
        except Exception as exc:
            warn(f"warning: could not log telemetry: {type(exc).__name__}: {exc}")
