"""TorchRun: what every PyTorch trainer needs besides its model, under the launcher alone or under torchrun.

::

    from workloads.sdk import TrainerContext
    from workloads.sdk.pytorch import TorchRun

    def main(ctx: TrainerContext) -> None:
        with TorchRun(ctx, seed=ctx.hparams.get("seed", 0), deterministic=True) as run:
            model = Net()
            net = run.wrap(model)                       # on run.device; DistributedDataParallel under torchrun
            optimizer = torch.optim.AdamW(model.parameters())
            start = run.resume(model, optimizer)        # the last step of the newest complete checkpoint, or 0
            train = run.loader("train", batch_size=64)  # this rank's share, streamed from Parquet row groups
            for epoch in range(start + 1, epochs + 1):
                train.set_epoch(epoch)
                ...
                if run.report(epoch, {"train_loss": loss, run.primary_metric: acc}, checkpoint=True):
                    break                               # every rank stops at the same step
            run.log_model(model)                        # rank 0 logs; the others wait for its outcome

Under torchrun every call above is made by every rank. Rank 0 alone reads and writes checkpoints (the others get
its state over the process group, so no shared folder is needed) and writes metrics lines, so each step reaches
MLflow once. Whatever rank 0 decides (resume step, stop) is broadcast. A :class:`~workloads.sdk.errors.TrainerError`
raised inside the ``with`` block ends the trainer with its exit code and failure line (2 configuration, 3 data).
No rank waits for another longer than ``rank_timeout_seconds``: then it ends with exit 1 and a failure line that
names the rank behind and where it was last seen (see :mod:`workloads.sdk.lag`).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from workloads.convergence import EarlyStopper
from workloads.sdk import contract as c
from workloads.sdk.checkpoint import Checkpoint, CheckpointStore
from workloads.sdk.context import TrainerContext, TrainerFailed
from workloads.sdk.distributed import Comm, exit_code_of, is_group_failure, pick_device
from workloads.sdk.errors import ConfigError, GroupError, TrainerError
from workloads.sdk.loaders import SplitLoader
from workloads.sdk.ranks import parse_ranks
from workloads.sdk.rng import group_rng, restore_rng
from workloads.sdk.rng import seed_everything as seed_everything
from workloads.store import ObjectStore
from workloads.tags import TAG_MODEL_URI

# Hyperparameters that may differ between a checkpoint and the run resuming it (more epochs, same training).
MAY_CHANGE_ON_RESUME = ("epochs",)


def make_deterministic() -> None:
    """Deterministic kernels only (an op without one raises), cuDNN without autotuning, cuBLAS's fixed workspace."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def plain(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the module itself)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


class TorchRun:
    """Device, process group, loaders, checkpoints and reports of one PyTorch training; use it as a context manager."""

    def __init__(
        self,
        ctx: TrainerContext,
        *,
        seed: int | None = None,
        deterministic: bool = False,
        patience: int | None = None,
        keep_checkpoints: int = 3,
        rank_timeout_seconds: float | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        """``seed`` seeds Python, numpy and torch (each rank's own stream after :meth:`wrap`); ``deterministic``
        switches torch to deterministic kernels; ``patience`` stops training once the task's primary metric has
        not improved for that many reports (the launcher's ``--early-stop`` stops it too);
        ``rank_timeout_seconds`` bounds how long a rank waits for the others once the group is joined
        (default ``GPUFLOW_DIST_TIMEOUT_SECONDS``, 600), after which the ranks behind are named."""
        self.ctx = ctx
        self.rank_timeout_seconds = rank_timeout_seconds
        self.seed = seed
        self.deterministic = deterministic
        self.stopper = (
            EarlyStopper(ctx.primary_metric, c.PRIMARY_MODE[ctx.task], patience=patience, rising_epochs=None)
            if patience is not None
            else None
        )
        self.checkpoints = CheckpointStore(str(ctx.checkpoint_dir), ObjectStore(), keep=keep_checkpoints, warn=_warn)
        self.environ = os.environ if environ is None else environ
        self.comm: Comm | None = None
        self.last_step = 0
        self.resumed_from = 0
        self.stop_reason = ""
        self.training_seconds = 0.0
        self._started = time.perf_counter()
        self._tracked: tuple[nn.Module, Any, Any] | None = None
        self._history: list[dict[str, float]] = []

    # ------------------------------------------------------------------ the group

    def __enter__(self) -> TorchRun:
        try:
            ranks = parse_ranks(self.environ)
            wait = self.rank_timeout_seconds
            if wait is not None and (
                isinstance(wait, bool) or not isinstance(wait, int | float) or not math.isfinite(wait) or wait <= 0
            ):
                raise ConfigError(f"rank_timeout_seconds must be a positive number of seconds, got {wait!r}")
            requested = self.ctx.device if self.ctx.device in ("cpu", "cuda") else "auto"
            if requested == "cuda" and self.ctx.device_request == "auto" and not torch.cuda.is_available():
                # The launcher saw a GPU through NVML, but this torch cannot use it (a CPU build, or no driver):
                # --device auto trains on the CPU, as the built-in trainer always did; an explicit cuda fails.
                _warn("warning: NVML sees a GPU but this torch has no CUDA device; --device auto trains on cpu")
                requested = "cpu"
            try:
                device = pick_device(requested, ranks.local_rank if ranks.distributed else None)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
            self.comm = Comm(ranks, device, wait_s=ranks.timeout_s if wait is None else float(wait)).__enter__()
        except TrainerError as exc:
            self._fail(exc)
        if self.seed is not None:
            seed_everything(self.seed)
        if self.deterministic:
            make_deterministic()
        self._started = time.perf_counter()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        comm = self.comm
        if comm is not None and comm.distributed and exc is not None:
            if isinstance(exc, RuntimeError) and is_group_failure(exc):
                exc = comm.lost(exc)  # a collective of the training loop's (DDP) broke: read the marks while we can
            elif comm.watch is not None and not isinstance(exc, GroupError):
                comm.watch.leave(exit_code_of(exc), _why(exc))  # the others stop waiting, with this code
        if self.comm is not None:
            self.comm.__exit__(kind, exc, tb)
        if isinstance(exc, TrainerError):
            self._fail(exc)

    @property
    def group(self) -> Comm:
        if self.comm is None:
            raise RuntimeError("use TorchRun as a context manager: with TorchRun(ctx) as run: ...")
        return self.comm

    @property
    def device(self) -> torch.device:
        return self.group.device

    @property
    def rank(self) -> int:
        return self.group.rank

    @property
    def world_size(self) -> int:
        return self.group.world_size

    @property
    def is_main(self) -> bool:
        return self.group.is_main

    @property
    def primary_metric(self) -> str:
        return self.ctx.primary_metric

    def say(self, line: str) -> None:
        """Print on rank 0 only (each rank's output reaches the same log)."""
        if self.is_main:
            print(line, flush=True)

    def all_sum(self, values: list[float]) -> list[float]:
        """Element-wise sums over every rank (float64): validation sums, counts."""
        self.group.meet(f"summing after step {self.last_step}")
        return self.group.sum(values)

    # ------------------------------------------------------------------ model and data

    def wrap(self, model: nn.Module) -> nn.Module:
        """Move ``model`` to :attr:`device`; under torchrun return it inside DistributedDataParallel (rank 0's start
        weights everywhere), then give each rank its own random stream (dropout) from ``seed + rank``."""
        model.to(self.device)
        if not self.group.distributed:
            return model
        net = DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if self.seed is not None:
            torch.manual_seed(self.seed + self.rank)
        return net

    def loader(
        self,
        split: str,
        batch_size: int,
        *,
        shuffle: bool | None = None,
        pad: bool | None = None,
        drop_last: bool = False,
        order: str = "stream",
    ) -> SplitLoader:
        """This rank's batches of ``split`` on :attr:`device`; ``shuffle`` and ``pad`` default to True for train
        (equal batches on every rank), False otherwise (every row on exactly one rank). ``order="stream"`` reads
        a row group at a time; ``order="global"`` holds the split in memory and shuffles it whole (see
        :mod:`workloads.sdk.loaders`)."""
        train = split == "train"
        return SplitLoader(
            self.ctx.dataset_dir,
            self.ctx.manifest,
            split,
            batch_size,
            input_shape=self.ctx.input_shape,
            shuffle=train if shuffle is None else shuffle,
            seed=self.seed or 0,
            rank=self.rank,
            world_size=self.world_size,
            pad=train if pad is None else pad,
            drop_last=drop_last,
            device=self.device,
            on_batch=self._mark_batch if self.group.distributed else None,
            order=order,
        )

    def _mark_batch(self, split: str, epoch: int, index: int) -> None:
        shown = f" (epoch {epoch})" if epoch else ""
        self.group.mark(f"at batch {index} of {split!r}{shown} after step {self.last_step}")

    # ------------------------------------------------------------------ checkpoints

    def resume(self, model: nn.Module, optimizer: Any = None, scheduler: Any = None) -> int:
        """Name what a checkpoint holds and restore it from the newest complete one (rank 0 picks and reads it;
        every rank gets its state). Returns the step it holds: continue after it (0: a fresh start)."""
        self._tracked = (plain(model), optimizer, scheduler)
        found: Checkpoint | None = None
        comm = self.group
        comm.meet("resuming")
        with comm.together("looking for a checkpoint"):
            if self.is_main:
                found = self.checkpoints.latest()
        found = comm.share(found)
        if found is None:
            return 0
        with comm.together(f"resuming from step {found.epoch}"):
            self._check_compatible(found)
            self._restore(found)
        self.last_step = self.resumed_from = found.epoch
        self.training_seconds = found.training_seconds
        self._history = list(found.extra.get("history") or [])
        if self.stopper is not None:
            for entry in self._history:
                if self.stopper.update(entry).stop:
                    break
        if self.is_main and found.metrics:  # a kill between the checkpoint and its line: the launcher skips repeats
            self.ctx.report(found.epoch, found.metrics)
        self.say(f"resumed from the checkpoint of step {found.epoch}")
        return found.epoch

    def _check_compatible(self, found: Checkpoint) -> None:
        diffs = [
            f"{key}={found.hyper.get(key)!r} (now {self.ctx.hparams.get(key)!r})"
            for key in sorted(set(found.hyper) | set(self.ctx.hparams))
            if key not in MAY_CHANGE_ON_RESUME and found.hyper.get(key) != self.ctx.hparams.get(key)
        ]
        if found.dataset_uri and self.ctx.dataset_uri and found.dataset_uri != self.ctx.dataset_uri:
            diffs.append(f"dataset {found.dataset_uri!r} (now {self.ctx.dataset_uri!r})")
        if diffs:
            raise ConfigError(
                f"the checkpoint of step {found.epoch} in {self.ctx.checkpoint_dir} was made with {', '.join(diffs)}; "
                "use a new training id or the same settings"
            )

    def _restore(self, found: Checkpoint) -> None:
        model, optimizer, scheduler = self._tracked or (None, None, None)
        if model is not None:
            model.load_state_dict(found.model_state)
        if optimizer is not None:
            optimizer.load_state_dict(found.optimizer_state)
        if scheduler is not None and found.extra.get("scheduler") is not None:
            scheduler.load_state_dict(found.extra["scheduler"])
        restore_rng(found, self.group, self.device, self.seed)

    def _checkpoint(self, step: int, metrics: dict[str, float]) -> Checkpoint:
        """The state after ``step`` (a collective under torchrun: every rank's RNG goes in)."""
        if self._tracked is None:
            raise RuntimeError("call run.resume(model, optimizer, scheduler) before reporting with checkpoint=True")
        model, optimizer, scheduler = self._tracked
        rng = group_rng(self.group, self.device)
        extra: dict[str, Any] = {"history": list(self._history), "world_size": self.world_size}
        if scheduler is not None:
            extra["scheduler"] = scheduler.state_dict()
        return Checkpoint(
            epoch=step,
            model_state=model.state_dict(),
            optimizer_state=optimizer.state_dict() if optimizer is not None else {},
            rng=rng,
            metrics=metrics,
            hyper=dict(self.ctx.hparams),
            dataset_uri=self.ctx.dataset_uri,
            training_seconds=self.training_seconds,
            extra=extra,
        )

    # ------------------------------------------------------------------ reports

    def report(self, step: int, metrics: Mapping[str, Any], checkpoint: bool = False) -> bool:
        """Report one step (every rank calls it with the same figures; rank 0 writes the line, after saving the
        checkpoint when ``checkpoint``, and waiting until the launcher has put it in the store, so a kill after
        this returns resumes after ``step``). Returns True when training should stop, on every rank alike: the
        launcher asked for it, or ``patience`` reports passed without the primary metric improving."""
        line = c.metrics_line(step, dict(metrics), checkpoint)
        if line.step <= self.last_step:
            raise ValueError(
                f"step {line.step} comes after step {self.last_step}: report each step once, in increasing order"
            )
        now = time.perf_counter()
        self.training_seconds += now - self._started
        self._started = now
        self.group.meet(f"reporting step {line.step}")
        self.last_step = line.step
        keep = (self.ctx.primary_metric, "train_loss", "val_loss")
        self._history.append({"epoch": line.step, **{k: v for k, v in line.metrics.items() if k in keep}})
        state = self._checkpoint(line.step, line.metrics) if checkpoint else None
        reason = ""
        with self.group.together(f"reporting step {line.step}"):
            if self.is_main:
                if state is not None:
                    self.checkpoints.save(state)
                self.ctx.report(line.step, line.metrics, checkpoint)
                stored = self.ctx.stored_file
                if state is not None and stored is not None and not self.ctx.wait_until_stored(line.step):
                    _warn(f"warning: the launcher has not stored the checkpoint of step {line.step} yet; going on")
                if self.ctx.should_stop():
                    reason = self.ctx.stop_reason or "the launcher asked to stop"
                elif self.stopper is not None:
                    decision = self.stopper.update(self._history[-1])
                    if decision.stop:
                        reason = f"{decision.kind}: {decision.reason}"
        self.stop_reason = str(self.group.share(reason))
        if self.stop_reason:
            self.say(f"stopping after step {line.step}: {self.stop_reason}")
        return bool(self.stop_reason)

    def should_stop(self) -> bool:
        """What the last :meth:`report` returned."""
        return bool(self.stop_reason)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Rank 0 logs ``params`` on the run (see :meth:`TrainerContext.log_params`); the other ranks do nothing."""
        if self.is_main:
            self.ctx.log_params(params)

    def log_model(self, model: nn.Module, **kwargs: Any) -> str:
        """Rank 0 logs the module (see :meth:`TrainerContext.log_model`) while the others wait, so they end with
        its outcome; returns the model URI on rank 0, "" elsewhere.

        A training relaunched after it had finished (resumed from its last step, nothing trained since) whose run
        already holds the model the launcher checked keeps that model instead of logging a second one, as the
        built-in trainer does ("already complete")."""
        uri = ""
        self.group.meet("logging the model")
        with self.group.together("logging the model"):
            if self.is_main:
                uri = self._model_already_logged()
                if uri:
                    self.say(f"training was already complete after step {self.last_step}; model {uri}")
                else:
                    uri = self.ctx.log_model(plain(model), **kwargs)
        return uri

    def _model_already_logged(self) -> str:
        """The run's checked model (its ``gpuflow.model_uri`` tag) when nothing was trained since the resume."""
        if not self.resumed_from or self.last_step != self.resumed_from:
            return ""
        from workloads.quiet import quiet_mlflow

        quiet_mlflow()  # before MLflow's first import in this process, as log_model does
        from mlflow import MlflowClient

        run = MlflowClient(tracking_uri=self.ctx.tracking_uri).get_run(self.ctx.run_id)
        return str(run.data.tags.get(TAG_MODEL_URI, ""))

    def _fail(self, exc: TrainerError) -> None:
        prefix = f"[rank {self.comm.rank}] " if self.comm is not None and self.comm.distributed else ""
        self.ctx.fail(prefix + str(exc), exc.exit_code)


def _why(exc: BaseException) -> str:
    """One short line for what ended a rank."""
    text = exc.reason if isinstance(exc, TrainerFailed) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())[:200]


def _warn(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
