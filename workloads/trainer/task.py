"""What the dataset's task changes in training: the output width, the loss, the validation figures, early stopping.

The manifest's ``task`` decides (format-1 manifests are classification). Classification trains on class indices
with cross-entropy and reports ``val_accuracy``; regression trains on the float target standardised by the
train split's mean and spread (the model undoes it, so it answers in the target's own units) and reports
``val_rmse`` and ``val_mae`` in those units. ``val_loss`` is what the optimiser minimises, on the validation split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from workloads.convergence import Mode
from workloads.sdk.contract import PRIMARY_METRIC, PRIMARY_MODE, TASKS

Task = Literal["classification", "regression"]


@dataclass(frozen=True)
class TaskHead:
    """The task-specific half of training; the loop and the model are shared."""

    task: Task
    stop_metric: str  # the primary validation figure early stopping and summaries speak in
    stop_mode: Mode

    @property
    def n_sums(self) -> int:
        """How many figures :meth:`sums` returns."""
        return 2 if self.task == "classification" else 3

    def loss(self, output: torch.Tensor, target: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Mean loss of a batch: cross-entropy on logits, or squared error in standardised target units."""
        if self.task == "classification":
            return nn.functional.cross_entropy(output, target)
        return nn.functional.mse_loss(output.squeeze(1) / scale, target / scale)

    def sums(self, output: torch.Tensor, target: torch.Tensor, scale: torch.Tensor) -> list[float]:
        """Per-batch sums that add up over batches (and ranks) into the validation figures."""
        if self.task == "classification":
            loss = nn.functional.cross_entropy(output, target, reduction="sum")
            return [float(loss.item()), float((output.argmax(dim=1) == target).sum().item())]
        error = output.squeeze(1) - target
        return [
            float(((error / scale) ** 2).sum().item()),
            float((error**2).sum().item()),
            float(error.abs().sum().item()),
        ]

    def figures(self, sums: list[float], rows: int) -> dict[str, float]:
        """``val_loss`` plus the task's own figures from the summed batches."""
        if self.task == "classification":
            loss, correct = sums
            return {"val_loss": loss / rows, "val_accuracy": correct / rows}
        loss, squared, absolute = sums
        return {"val_loss": loss / rows, "val_rmse": (squared / rows) ** 0.5, "val_mae": absolute / rows}


# The primary figure and its direction are the trainer contract's, so the built-in trainer and any other agree.
CLASSIFICATION = TaskHead("classification", PRIMARY_METRIC["classification"], PRIMARY_MODE["classification"])
REGRESSION = TaskHead("regression", PRIMARY_METRIC["regression"], PRIMARY_MODE["regression"])


def head_for(task: str) -> TaskHead:
    """The head of a manifest's task; an unknown task is the dataset's problem, reported by the caller."""
    if task == "regression":
        return REGRESSION
    if task == "classification":
        return CLASSIFICATION
    raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
