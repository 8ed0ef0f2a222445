"""Convergence figures of a finished training run, from the trainer's per-epoch metrics and per-epoch GPU time.

Answers "how much of this run was worth paying for": the best validation metric, what it took (epochs,
GPU-seconds, cost) to reach a fraction of it (95 % by default), whether and when it plateaued or diverged,
and how steady throughput was. Plateau and divergence use workloads.convergence.EarlyStopper, the same rules
the trainer applies live.

For a metric to maximise the target is ``fraction x best``; for one to minimise (a loss) it is ``best / fraction``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

from tasks.core.errors import ConfigurationError
from workloads.convergence import EarlyStopper, Mode


class ConvergenceReport(BaseModel):
    model_config = ConfigDict(frozen=True)

    metric: str
    mode: str
    epochs: int
    best_value: float | None
    best_epoch: int | None
    target_fraction: float
    target_value: float | None
    target_epoch: int | None  # the epoch that first reached the target
    epochs_to_target: int | None  # how many epochs were run to get there
    seconds_to_target: float | None
    gpu_seconds_to_target: float | None
    cost_to_target: float | None
    gpu_seconds_after_best: float | None  # paid for after the best epoch: what early stopping could save
    plateau_epoch: int | None
    plateau_patience: int
    diverged: bool
    divergence_epoch: int | None
    divergence_reason: str
    throughput_mean: float | None  # samples per second
    throughput_cv: float | None  # coefficient of variation of samples per second (0 = perfectly steady)
    total_seconds: float | None
    total_gpu_seconds: float | None
    total_cost: float | None

    def as_metrics(self, prefix: str = "convergence.") -> dict[str, float]:
        """The numeric figures as MLflow metrics (unknown ones left out)."""
        names = (
            "best_value", "best_epoch", "target_value", "target_epoch", "epochs_to_target", "seconds_to_target",
            "gpu_seconds_to_target", "cost_to_target", "gpu_seconds_after_best", "plateau_epoch",
            "divergence_epoch", "throughput_mean", "throughput_cv",
        )  # fmt: skip
        out = {f"{prefix}{n}": float(v) for n in names if (v := getattr(self, n)) is not None}
        out[f"{prefix}diverged"] = 1.0 if self.diverged else 0.0
        return out


def _per_epoch(epochs: Sequence[Mapping[str, Any]], given: Sequence[float] | None, key: str) -> list[float] | None:
    """Per-epoch figures passed explicitly, else read from each epoch's ``key``; None when no epoch has one.

    The launcher gives GPU figures only to steps at least a sampling interval apart: a step without them had its
    time carried by the next step that has them (the last one always does), so it counts 0 here and every sum up
    to an epoch that has them is whole."""
    if given is not None:
        if len(given) != len(epochs):
            raise ConfigurationError(f"{len(given)} {key} values for {len(epochs)} epochs; expected one per epoch")
        return [float(v) for v in given]
    values = [e.get(key) for e in epochs]
    if all(v is None for v in values):
        return None
    return [float(v) if v is not None else 0.0 for v in values]


def _cumulative(values: list[float] | None, upto: int) -> float | None:
    return sum(values[: upto + 1]) if values is not None else None


def _reached(value: float, target: float, mode: Mode) -> bool:
    return value >= target if mode == "max" else value <= target


def analyse_convergence(
    epochs: Sequence[Mapping[str, Any]],
    *,
    metric: str = "val_accuracy",
    mode: Mode = "max",
    target_fraction: float = 0.95,
    plateau_patience: int = 5,
    min_delta: float = 0.0,
    loss_key: str = "train_loss",
    rising_epochs: int = 3,
    gpu_seconds: Sequence[float] | None = None,
    costs: Sequence[float] | None = None,
) -> ConvergenceReport:
    """Convergence figures of one run; ``epochs`` are the trainer's per-epoch dicts in order.

    Per-epoch GPU-seconds and cost come from ``gpu_seconds`` / ``costs``, else from each epoch's
    ``gpu_seconds`` / ``cost`` keys; figures that need them are None when neither is given.
    """
    if not 0 < target_fraction <= 1:
        raise ConfigurationError(f"target_fraction must be in (0, 1], got {target_fraction}")
    numbers = [int(e.get("epoch", i + 1)) for i, e in enumerate(epochs)]
    gpu_s = _per_epoch(epochs, gpu_seconds, "gpu_seconds")
    cost = _per_epoch(epochs, costs, "cost")
    wall = _per_epoch(epochs, None, "epoch_seconds")

    values = [(i, float(e[metric])) for i, e in enumerate(epochs) if e.get(metric) is not None]
    finite = [(i, v) for i, v in values if math.isfinite(v)]
    best = (max if mode == "max" else min)((v for _, v in finite), default=None)
    best_i = next(i for i, v in finite if v == best) if best is not None else None  # earliest epoch at the best

    target = None
    target_i = None
    if best is not None:
        target = best * target_fraction if mode == "max" else best / target_fraction
        target_i = next((i for i, v in finite if _reached(v, target, mode)), None)

    plateau = EarlyStopper(metric, mode, patience=plateau_patience, min_delta=min_delta, rising_epochs=None)
    diverge = EarlyStopper(metric, mode, patience=None, loss_key=loss_key, rising_epochs=rising_epochs)
    plateau_epoch = divergence_epoch = None
    divergence_reason = ""
    for e in epochs:
        p, d = plateau.update(e), diverge.update(e)
        if p.stop and plateau_epoch is None:
            plateau_epoch = p.epoch
        if d.stop and divergence_epoch is None:
            divergence_epoch, divergence_reason = d.epoch, d.reason

    throughput = [float(e["samples_per_second"]) for e in epochs if e.get("samples_per_second") is not None]
    mean_tp = statistics.fmean(throughput) if throughput else None
    cv = statistics.pstdev(throughput) / mean_tp if throughput and mean_tp else None

    return ConvergenceReport(
        metric=metric,
        mode=mode,
        epochs=len(epochs),
        best_value=best,
        best_epoch=numbers[best_i] if best_i is not None else None,
        target_fraction=target_fraction,
        target_value=target,
        target_epoch=numbers[target_i] if target_i is not None else None,
        epochs_to_target=target_i + 1 if target_i is not None else None,
        seconds_to_target=_cumulative(wall, target_i) if target_i is not None else None,
        gpu_seconds_to_target=_cumulative(gpu_s, target_i) if target_i is not None else None,
        cost_to_target=_cumulative(cost, target_i) if target_i is not None else None,
        gpu_seconds_after_best=sum(gpu_s[best_i + 1 :]) if gpu_s is not None and best_i is not None else None,
        plateau_epoch=plateau_epoch,
        plateau_patience=plateau_patience,
        diverged=divergence_epoch is not None,
        divergence_epoch=divergence_epoch,
        divergence_reason=divergence_reason,
        throughput_mean=mean_tp,
        throughput_cv=cv,
        total_seconds=sum(wall) if wall is not None else None,
        total_gpu_seconds=sum(gpu_s) if gpu_s is not None else None,
        total_cost=sum(cost) if cost is not None else None,
    )
