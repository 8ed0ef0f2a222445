"""The training loop proper: epochs over in-memory tensors, deterministic for a given seed.

Batches come from ``torch.randperm`` with a dedicated generator, whose state goes into every checkpoint,
so a resumed run sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from workloads.trainer.checkpoint import Checkpoint
from workloads.trainer.config import Hyperparameters
from workloads.trainer.data import TrainingData
from workloads.trainer.model import MLPClassifier

EVAL_BATCH = 4096


@dataclass(frozen=True)
class EpochResult:
    """One epoch's metrics, as logged to MLflow under step ``epoch``."""

    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    epoch_seconds: float
    samples_per_second: float

    def metrics(self) -> dict[str, float]:
        values = asdict(self)
        del values["epoch"]
        return values

    def progress_line(self, epochs: int) -> str:
        return (
            f"epoch {self.epoch}/{epochs} train_loss={self.train_loss:.4f} val_loss={self.val_loss:.4f} "
            f"val_accuracy={self.val_accuracy:.4f} ({self.epoch_seconds:.2f}s, "
            f"{self.samples_per_second:.0f} samples/s)"
        )


def pick_device(requested: str) -> torch.device:
    """``auto`` means CUDA when present; asking for ``cuda`` without one raises ``ValueError``."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was requested but no CUDA device is available")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


class Trainer:
    """Model, optimizer and data on one device, advanced one epoch at a time."""

    def __init__(
        self,
        data: TrainingData,
        hyper: Hyperparameters,
        device: torch.device,
        *,
        on_first_step: Callable[[], None] | None = None,
    ) -> None:
        """``on_first_step`` is called once, when this process's first optimizer step has finished."""
        self.hyper = hyper
        self.on_first_step = on_first_step
        self.device = device
        torch.manual_seed(hyper.seed)
        model = MLPClassifier(len(data.features), len(data.labels), hyper.hidden_size, hyper.dropout)
        model.set_normalisation(data.train.x)
        self.model = model.to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=hyper.learning_rate)
        self.shuffle = torch.Generator().manual_seed(hyper.seed)
        self.loss = nn.CrossEntropyLoss()
        self.train_x, self.train_y = data.train.x.to(device), data.train.y.to(device)
        self.val_x, self.val_y = data.val.x.to(device), data.val.y.to(device)
        self.epoch = 0
        self.training_seconds = 0.0

    def run_epoch(self) -> EpochResult:
        """Train one epoch, then validate; returns the epoch's metrics."""
        started = time.perf_counter()
        self.model.train()
        n = self.train_x.shape[0]
        order = torch.randperm(n, generator=self.shuffle).to(self.device)
        total = torch.zeros((), device=self.device)
        for start in range(0, n, self.hyper.batch_size):
            idx = order[start : start + self.hyper.batch_size]
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.loss(self.model(self.train_x[idx]), self.train_y[idx])
            loss.backward()
            self.optimizer.step()
            if self.on_first_step is not None:
                self._sync()  # once: the step has really happened, not just been queued
                self.on_first_step()
                self.on_first_step = None
            total += loss.detach() * idx.shape[0]
        train_loss = float(total.item()) / n
        self._sync()
        train_seconds = time.perf_counter() - started
        val_loss, val_accuracy = self.evaluate()
        seconds = time.perf_counter() - started
        self.epoch += 1
        self.training_seconds += seconds
        return EpochResult(
            epoch=self.epoch,
            train_loss=train_loss,
            val_loss=val_loss,
            val_accuracy=val_accuracy,
            epoch_seconds=seconds,
            samples_per_second=n / max(train_seconds, 1e-9),
        )

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """Mean cross-entropy and accuracy on the validation split."""
        self.model.eval()
        loss_sum, correct = 0.0, 0
        n = self.val_x.shape[0]
        for start in range(0, n, EVAL_BATCH):
            x, y = self.val_x[start : start + EVAL_BATCH], self.val_y[start : start + EVAL_BATCH]
            logits = self.model(x)
            loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum").item())
            correct += int((logits.argmax(dim=1) == y).sum().item())
        return loss_sum / n, correct / n

    def checkpoint(self, metrics: dict[str, float], dataset_uri: str) -> Checkpoint:
        """The state after the current epoch, ready to be saved."""
        rng: dict[str, object] = {"torch": torch.get_rng_state(), "shuffle": self.shuffle.get_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return Checkpoint(
            epoch=self.epoch,
            model_state=self.model.state_dict(),
            optimizer_state=self.optimizer.state_dict(),
            rng=rng,
            metrics=metrics,
            hyper=asdict(self.hyper),
            dataset_uri=dataset_uri,
            training_seconds=self.training_seconds,
        )

    def restore(self, checkpoint: Checkpoint) -> None:
        """Continue from a checkpoint: weights, optimizer moments, RNG streams and epoch counter."""
        self.model.load_state_dict(checkpoint.model_state)
        self.optimizer.load_state_dict(checkpoint.optimizer_state)
        torch.set_rng_state(checkpoint.rng["torch"])
        self.shuffle.set_state(checkpoint.rng["shuffle"])
        if self.device.type == "cuda" and "cuda" in checkpoint.rng:
            torch.cuda.set_rng_state_all(checkpoint.rng["cuda"])
        self.epoch = checkpoint.epoch
        self.training_seconds = checkpoint.training_seconds

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
