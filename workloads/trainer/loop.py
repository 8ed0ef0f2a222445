"""The training loop proper: epochs over in-memory tensors, deterministic for a given seed.

The model (:func:`build_model`), the optimizer steps (:func:`train_batches`) and the validation sums
(:func:`validation_sums`) are functions over any batches, so the built-in MLP on the SDK (``entry.py``, batches
from ``SplitLoader(order="global")``) computes exactly what :class:`Trainer` computes.

Batches come in the SDK's :class:`~workloads.sdk.loaders.EpochOrder` (``SplitLoader``'s ``order="global"``):
epoch e's permutation is the e-th ``torch.randperm`` of one generator seeded with ``--seed``, replayed from the
seed on resume, so a resumed run sees exactly the batches an uninterrupted run would have seen.

Under torchrun (``comm.distributed``) the model trains inside DistributedDataParallel: every rank draws the
same permutation and takes ``DistributedSampler``'s cut of it (:func:`~workloads.sdk.distributed.shard`), so
``--batch-size`` is per rank. Validation is split in contiguous slices (:func:`~workloads.sdk.distributed.span`)
and the sums are all-reduced: every rank gets the same metrics, and the validation work is divided instead of
repeated. ``self.model`` stays the plain module (checkpoints and
the logged model look the same as a single process's).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from workloads.sdk.checkpoint import Checkpoint
from workloads.sdk.distributed import Comm, span
from workloads.sdk.loaders import EpochOrder
from workloads.sdk.ranks import Ranks
from workloads.sdk.rng import group_rng, restore_rng
from workloads.trainer.config import Hyperparameters
from workloads.trainer.data import TrainingData
from workloads.trainer.model import MLPClassifier, MLPRegressor
from workloads.trainer.task import TaskHead, head_for

EVAL_BATCH = 4096


@dataclass(frozen=True)
class EpochResult:
    """One epoch's metrics, as logged to MLflow under step ``epoch``.

    ``validation`` holds ``val_loss`` and the task's figures (``val_accuracy``; or ``val_rmse``, ``val_mae``).
    """

    epoch: int
    train_loss: float
    validation: dict[str, float]
    epoch_seconds: float
    samples_per_second: float

    def metrics(self) -> dict[str, float]:
        return {
            "train_loss": self.train_loss,
            **self.validation,
            "epoch_seconds": self.epoch_seconds,
            "samples_per_second": self.samples_per_second,
        }

    def progress_line(self, epochs: int) -> str:
        figures = " ".join(f"{key}={value:.4f}" for key, value in self.validation.items())
        return (
            f"epoch {self.epoch}/{epochs} train_loss={self.train_loss:.4f} {figures} ({self.epoch_seconds:.2f}s, "
            f"{self.samples_per_second:.0f} samples/s)"
        )


class Trainer:
    """Model, optimizer and data on one device, advanced one epoch at a time."""

    def __init__(
        self,
        data: TrainingData,
        hyper: Hyperparameters,
        device: torch.device,
        *,
        on_first_step: Callable[[], None] | None = None,
        comm: Comm | None = None,
    ) -> None:
        """``on_first_step`` is called once, when this process's first optimizer step has finished.

        With a distributed ``comm`` this is a collective (DDP syncs the start weights): every rank must build one.
        """
        self.hyper = hyper
        self.on_first_step = on_first_step
        self.device = device
        self.comm = comm or Comm(Ranks(), device)
        torch.manual_seed(hyper.seed)
        self.head: TaskHead = head_for(data.task)
        model = build_model(self.head, len(data.labels), hyper, data.train.x, data.train.y)
        self.model = model.to(device)
        self.net: nn.Module = self.model  # what trains: the model, or DDP around it
        if self.comm.distributed:
            # Same start weights everywhere (DDP checks them), then a dropout stream of each rank's own.
            # Buffers (the normalisation) come from the full train split on every rank: no need to broadcast.
            self.net = DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None, forward_sync_buffers=False
            )
            torch.manual_seed(hyper.seed + self.comm.rank)
        self.shard_size = data.train.x.shape[0]  # training rows this rank saw in the last epoch
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=hyper.learning_rate)
        self.order = EpochOrder(data.train.x.shape[0], hyper.seed)
        # regression losses are in standardised target units: one learning rate fits targets of any scale
        self.scale = loss_scale(model, device)
        self.train_x, self.train_y = data.train.x.to(device), data.train.y.to(device)
        self.val_x, self.val_y = data.val.x.to(device), data.val.y.to(device)
        self.epoch = 0
        self.training_seconds = 0.0

    def run_epoch(self) -> EpochResult:
        """Train one epoch, then validate; returns the epoch's metrics."""
        started = time.perf_counter()
        self.net.train()
        n = self.train_x.shape[0]
        order = self.order.share(self.epoch + 1, self.comm.rank, self.comm.world_size).to(self.device)
        self.shard_size = m = int(order.shape[0])
        batches = (
            (self.train_x[idx], self.train_y[idx])
            for idx in (order[start : start + self.hyper.batch_size] for start in range(0, m, self.hyper.batch_size))
        )
        total = train_batches(self.net, self.optimizer, self.head, batches, self.scale, self._first_step)
        if self.comm.distributed:  # the mean over every rank's samples (padding included, as trained)
            loss_sum, count = self.comm.sum([float(total.item()), float(m)])
            train_loss = loss_sum / count
        else:
            train_loss = float(total.item()) / n
        self._sync()
        train_seconds = time.perf_counter() - started
        validation = self.evaluate()
        seconds = time.perf_counter() - started
        self.epoch += 1
        self.training_seconds += seconds
        return EpochResult(
            epoch=self.epoch,
            train_loss=train_loss,
            validation=validation,
            epoch_seconds=seconds,
            samples_per_second=n / max(train_seconds, 1e-9),
        )

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """The validation figures of the task (each rank a slice; the sums all-reduced)."""
        n = self.val_x.shape[0]
        first, end = span(n, self.comm.rank, self.comm.world_size)
        batches = (
            (self.val_x[start : min(start + EVAL_BATCH, end)], self.val_y[start : min(start + EVAL_BATCH, end)])
            for start in range(first, end, EVAL_BATCH)
        )
        sums = validation_sums(self.model, self.head, batches, self.scale)
        if self.comm.distributed:
            sums = self.comm.sum(sums)  # the slices cover the split once
        return self.head.figures(sums, n)

    def checkpoint(self, metrics: dict[str, float], dataset_uri: str) -> Checkpoint:
        """The state after the current epoch, ready to be saved (by rank 0), in the SDK's format.

        Distributed, this is a collective: every rank's random streams go into ``rng["ranks"]`` (the top-level
        entries are rank 0's, as a single process writes them; :func:`~workloads.sdk.rng.group_rng`) and the
        world size into ``extra``. The batch order needs no state: it replays from the seed.
        """
        extra: dict[str, object] = {"world_size": self.comm.world_size} if self.comm.distributed else {}
        return Checkpoint(
            epoch=self.epoch,
            model_state=self.model.state_dict(),
            optimizer_state=self.optimizer.state_dict(),
            rng=group_rng(self.comm, self.device),
            metrics=metrics,
            hyper=asdict(self.hyper),
            dataset_uri=dataset_uri,
            training_seconds=self.training_seconds,
            extra=extra,
        )

    def restore(self, checkpoint: Checkpoint) -> None:
        """Continue from a checkpoint (this trainer's, or an SDK trainer's on ``TorchRun``): weights, optimizer
        moments, epoch counter and this rank's random streams (:func:`~workloads.sdk.rng.restore_rng`; another
        world size's checkpoint gives each rank fresh ones). A ``shuffle`` entry, written by earlier trainers, is
        not needed: the batch order replays from the seed."""
        self.model.load_state_dict(checkpoint.model_state)
        self.optimizer.load_state_dict(checkpoint.optimizer_state)
        self.epoch = checkpoint.epoch
        self.training_seconds = checkpoint.training_seconds
        restore_rng(checkpoint, self.comm, self.device, self.hyper.seed)

    def _first_step(self) -> None:
        """After the first optimizer step: tell ``on_first_step`` once, when the step has really happened."""
        if self.on_first_step is not None:
            self._sync()
            self.on_first_step()
            self.on_first_step = None

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def build_model(
    head: TaskHead, n_classes: int, hyper: Hyperparameters, train_x: torch.Tensor, train_y: torch.Tensor
) -> MLPClassifier:
    """The task's MLP with its normalisation (and a regressor's target scale) taken from the train split.

    Draws its start weights from torch's global generator: seed it first for the same model every time.
    """
    n_features = int(train_x.shape[1])
    model: MLPClassifier
    if head.task == "regression":
        model = regressor = MLPRegressor(n_features, hyper.hidden_size, hyper.dropout)
        regressor.set_target_scale(train_y)
    else:
        model = MLPClassifier(n_features, n_classes, hyper.hidden_size, hyper.dropout)
    model.set_normalisation(train_x)
    return model


def loss_scale(model: nn.Module, device: torch.device) -> torch.Tensor:
    """What losses are divided by: a regressor's target spread (losses in standardised units, so one learning
    rate fits targets of any scale), else 1."""
    return model.target_std.to(device) if isinstance(model, MLPRegressor) else torch.ones((), device=device)


def train_batches(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    head: TaskHead,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    scale: torch.Tensor,
    after_step: Callable[[], None] | None = None,
) -> torch.Tensor:
    """One pass of optimizer steps over ``batches``; returns the sum of the batches' losses times their sizes
    (a tensor on the device: read it once, after the pass). ``after_step`` is called after each step."""
    total = torch.zeros((), device=scale.device)
    for x, y in batches:
        optimizer.zero_grad(set_to_none=True)
        loss = head.loss(net(x), y, scale)
        loss.backward()
        optimizer.step()
        if after_step is not None:
            after_step()
        total += loss.detach() * x.shape[0]
    return total


@torch.no_grad()
def validation_sums(
    model: nn.Module, head: TaskHead, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], scale: torch.Tensor
) -> list[float]:
    """The task's validation sums over ``batches`` (zeros when there are none: a rank with an empty slice)."""
    model.eval()
    sums: list[float] | None = None
    for x, y in batches:
        batch = head.sums(model(x), y, scale)
        sums = batch if sums is None else [a + b for a, b in zip(sums, batch, strict=True)]
    return sums if sums is not None else [0.0] * head.n_sums
