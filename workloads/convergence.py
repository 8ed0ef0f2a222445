"""EarlyStopper: the per-epoch "should training stop?" decision, shared by the trainer and the reports.

Lives in workloads/ (no torch, no Prefect) so the trainer can call it in its pod, and
tasks/reporting/convergence_figures.py replays the same rules over finished runs, so a report's "plateau at
epoch 9" is exactly what the trainer would have decided.

- plateau: the watched metric has not improved by more than ``min_delta`` for ``patience`` epochs;
- divergence: a loss (or the metric) is NaN or infinite, or the loss rose ``rising_epochs`` epochs in a row.
Either check is off when its setting is None.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

Mode = Literal["max", "min"]
LOSS_KEYS = ("train_loss", "val_loss")


@dataclass(frozen=True)
class StopDecision:
    stop: bool
    kind: str = ""  # "plateau", "divergence" or "" while training goes on
    reason: str = ""
    epoch: int | None = None
    best_value: float | None = None
    best_epoch: int | None = None


def _number(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


class EarlyStopper:
    """Feed it each epoch's metrics with ``update``; once it says stop it keeps saying so."""

    def __init__(
        self,
        metric: str = "val_accuracy",
        mode: Mode = "max",
        *,
        patience: int | None = 5,
        min_delta: float = 0.0,
        loss_key: str = "train_loss",
        rising_epochs: int | None = 3,
        stop_on_nonfinite: bool = True,
    ) -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        if patience is not None and patience < 1:
            raise ValueError(f"patience must be >= 1 epoch or None (off), got {patience}")
        if rising_epochs is not None and rising_epochs < 1:
            raise ValueError(f"rising_epochs must be >= 1 or None (off), got {rising_epochs}")
        if min_delta < 0:
            raise ValueError(f"min_delta must be >= 0, got {min_delta}")
        self.metric, self.mode = metric, mode
        self.patience, self.min_delta = patience, min_delta
        self.loss_key, self.rising_epochs = loss_key, rising_epochs
        self.stop_on_nonfinite = stop_on_nonfinite
        self.best_value: float | None = None
        self.best_epoch: int | None = None
        self._since_best = 0
        self._rises = 0
        self._last_loss: float | None = None
        self._seen = 0
        self._decision: StopDecision | None = None

    def _improved(self, value: float) -> bool:
        if self.best_value is None:
            return True
        if self.mode == "max":
            return value > self.best_value + self.min_delta
        return value < self.best_value - self.min_delta

    def _stop(self, kind: str, reason: str, epoch: int) -> StopDecision:
        self._decision = StopDecision(True, kind, reason, epoch, self.best_value, self.best_epoch)
        return self._decision

    def update(self, metrics: Mapping[str, Any]) -> StopDecision:
        """One epoch's metrics (``epoch`` key optional: epochs count from 1); returns the decision."""
        if self._decision is not None:
            return self._decision
        self._seen += 1
        epoch = int(metrics.get("epoch", self._seen))
        if self.stop_on_nonfinite:
            for key in dict.fromkeys((*LOSS_KEYS, self.loss_key, self.metric)):
                value = _number(metrics.get(key))
                if value is not None and not math.isfinite(value):
                    return self._stop("divergence", f"{key} is {value} at epoch {epoch}", epoch)
        value = _number(metrics.get(self.metric))
        if value is not None and math.isfinite(value):
            if self._improved(value):
                self.best_value, self.best_epoch, self._since_best = value, epoch, 0
            else:
                self._since_best += 1
        loss = _number(metrics.get(self.loss_key))
        if loss is not None and math.isfinite(loss):
            self._rises = self._rises + 1 if self._last_loss is not None and loss > self._last_loss else 0
            self._last_loss = loss
        if self.rising_epochs is not None and self._rises >= self.rising_epochs:
            reason = f"{self.loss_key} rose {self._rises} epochs in a row (to {loss:g} at epoch {epoch})"
            return self._stop("divergence", reason, epoch)
        if self.patience is not None and self._since_best >= self.patience:
            reason = (
                f"{self.metric} has not improved for {self._since_best} epochs"
                f" (best {self.best_value:g} at epoch {self.best_epoch})"
            )
            return self._stop("plateau", reason, epoch)
        return StopDecision(False, epoch=epoch, best_value=self.best_value, best_epoch=self.best_epoch)
