"""GPU telemetry of a launched trainer: the built-in trainer's figures, with steps where it has epochs.

The sampler runs in the launcher for the whole launch and counts the trainer's process tree as its own. The
launcher cannot see where a step begins, only when it is reported, so a step's figures cover the time since
the previous attributed report: ``epoch_gpu.*``, ``gpu_seconds`` and ``cumulative_gpu_seconds`` travel in the
step's batch exactly as the built-in trainer's do per epoch, and the train flow and reports read them the
same way. Steps reported faster than the sampling interval are attributed together: a step reported sooner
than that after the last attributed one carries no figures, and the next attributed one carries the time of
both (the last step gets its figures when the trainer exits), so per-step GPU-seconds still add up to the
whole and attribution (about a millisecond each) costs at most one per sampling interval.
``telemetry/summary.json`` names the segments ``setup`` (the launcher's preparation), ``step N`` (the time
up to step N's report), ``after step N`` (the trainer's end: logging its model; ``trainer`` when it reported
nothing) and ``finish`` (the launcher's checks).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from workloads.telemetry import TelemetrySummary
from workloads.trainer.telemetry import (
    CUMULATIVE_GPU_SECONDS,
    DATA_LOADING_SECONDS,
    EPOCH_PREFIX,
    FINISH,
    GPU_SECONDS,
    TrainingTelemetry,
    summary_document,
)


class LaunchTelemetry(TrainingTelemetry):
    """:class:`TrainingTelemetry` with per-step attribution by report time (see the module docstring)."""

    def __init__(self, interval: float, environ: Mapping[str, str] | None = None) -> None:
        super().__init__(interval, environ=environ)
        self._open = 0  # the number of the interval segment being sampled now
        self._names: dict[str, str] = {}  # interval label -> segment name in summary.json
        self._last_step: int | None = None  # the last step given figures
        self._reported: int | None = None  # the last step reported
        self._attributed_at = float("-inf")

    @staticmethod
    def _label(number: int) -> str:
        return f"interval {number}"

    def trainer_started(self) -> None:
        """From now on the time belongs to the trainer's first step."""
        self.sampler.mark(self._label(self._open))

    def step_reported(self, step: int, now: float | None = None) -> dict[str, float]:
        """The figures of ``step`` (empty when it came too soon after the last attributed one)."""
        now = time.monotonic() if now is None else now
        self._reported = step
        if self._last_step is not None and now - self._attributed_at < self.sampler.interval:
            return {}
        return self._attribute(step, now)

    def _attribute(self, step: int, now: float, then: str | None = None) -> dict[str, float]:
        """Close the open segment as ``step`` 's; time from now on goes to ``then`` (default: the next step)."""
        closed = self._label(self._open)
        self._open += 1
        self.sampler.mark(then or self._label(self._open))
        self._names[closed] = f"step {step}"
        self._last_step, self._attributed_at = step, now
        segment = self.sampler.summary(closed)
        return {
            **segment.as_metrics(EPOCH_PREFIX),
            GPU_SECONDS: segment.gpu_seconds,
            CUMULATIVE_GPU_SECONDS: self.gpu_seconds_before + self.sampler.summary().gpu_seconds,
        }

    def trainer_ended(self) -> tuple[int, dict[str, float]] | None:
        """The trainer has exited: what follows (the launcher's checks) is the ``finish`` segment.

        Returns the figures of the last reported step when it came too soon to get them (it gets the time up to
        the trainer's exit), so the last step always carries the whole launch's cumulative figure.
        """
        if self._reported is not None and self._reported != self._last_step:
            return self._reported, self._attribute(self._reported, time.monotonic(), then=FINISH)
        tail = f"after step {self._last_step}" if self._last_step is not None else "trainer"
        self._names.setdefault(self._label(self._open), tail)
        self.sampler.mark(FINISH)
        return None

    def segments(self) -> dict[str, TelemetrySummary]:
        return {self._names.get(label, label): s for label, s in self.sampler.summaries().items()}

    def document(self) -> dict[str, Any]:
        extra: dict[str, Any] = {
            "gpu_seconds_before": self.gpu_seconds_before,
            DATA_LOADING_SECONDS: self.data_loading_seconds,
            "launcher": True,
        }
        return summary_document(
            self.summary(), self.segments(), stage="train", milestones=self.milestones.durations(), extra=extra
        )
