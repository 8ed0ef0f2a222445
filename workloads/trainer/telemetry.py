"""The trainer's own GPU telemetry: one sampler for the whole training, a segment per epoch, time to first step.

Sampling inside the trainer (not in the flow) is what makes the figures belong to the training: the same
process tree, the same devices (``CUDA_VISIBLE_DEVICES`` of the pod), epoch boundaries exact. Per epoch the
trainer logs the epoch's figures in the same MLflow batch as its loss and accuracy, so convergence can be read
against GPU time; at the end it logs the whole training's figures and writes ``telemetry/summary.json``
(read back by the train flow with ``TelemetrySummary.from_dict``) and the raw series. Nothing here may fail
a training: the sampler never raises for GPU trouble, and ``summary.missing`` says what was not measured.

Distributed (torchrun), each rank samples only its own device (:func:`own_device_environ`); what is logged is
rank 0's: the ``gpu.*`` and ``epoch_gpu.*`` figures and summary.json describe rank 0's GPU. The other ranks'
GPU-seconds are gathered once after the last epoch: ``all_ranks_gpu_seconds`` (their sum, this attempt only)
and ``ranks`` in summary.json.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from workloads.telemetry import DATA_LOADED, FIRST_STEP, GpuSampler, Milestones, TelemetrySummary

SUMMARY_FORMAT = "gpuflow.telemetry/1"
SUMMARY_ARTIFACT = "telemetry/summary.json"
SERIES_ARTIFACT = "telemetry/series.csv.gz"
RUN_PREFIX = "gpu."  # the stage's figures, step 0 in every stage (docs/telemetry.md)
EPOCH_PREFIX = "epoch_gpu."  # one epoch's figures, step = epoch
GPU_SECONDS = "gpu_seconds"  # GPU-seconds of the epoch, beside train_loss & co.
CUMULATIVE_GPU_SECONDS = "cumulative_gpu_seconds"  # GPU-seconds of the training up to the end of the epoch
SETUP, FINISH = "setup", "finish"
DATA_LOADING_SECONDS = "data_loading_seconds"
ALL_RANKS_GPU_SECONDS = "all_ranks_gpu_seconds"  # distributed: every rank's GPU-seconds up to the last epoch


def own_device_environ(environ: Mapping[str, str], local_rank: int) -> dict[str, str]:
    """``environ`` with CUDA_VISIBLE_DEVICES narrowed to the one device of torchrun's ``local_rank``.

    Each rank then samples the GPU it trains on (``cuda:<local rank>`` is the local_rank-th visible device), not
    its neighbours' too, so no device is counted twice. An index past the list leaves it as it is.
    """
    narrowed = dict(environ)
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        narrowed["CUDA_VISIBLE_DEVICES"] = str(local_rank)
    else:
        tokens = [t.strip() for t in visible.split(",")]
        if local_rank < len(tokens) and tokens[local_rank]:
            narrowed["CUDA_VISIBLE_DEVICES"] = tokens[local_rank]
    return narrowed


def epoch_label(epoch: int) -> str:
    return f"epoch {epoch}"


def summary_document(
    run: TelemetrySummary,
    segments: dict[str, TelemetrySummary],
    *,
    stage: str,
    milestones: dict[str, float] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON written as ``telemetry/summary.json`` by the trainer and by every stage (same shape)."""
    return {
        "format": SUMMARY_FORMAT,
        "stage": stage,
        "run": run.as_dict(),
        "segments": {label: s.as_dict() for label, s in segments.items()},
        "milestones": dict(milestones or {}),
        **(extra or {}),
    }


class TrainingTelemetry:
    """GpuSampler + Milestones for one trainer process; see the module docstring for what is logged."""

    def __init__(
        self, interval: float, milestones: Milestones | None = None, environ: Mapping[str, str] | None = None
    ) -> None:
        """``environ``: where the sampler reads the visible devices (default os.environ; see own_device_environ)."""
        self.milestones = milestones or Milestones()
        self.sampler = GpuSampler(interval, label=SETUP, environ=environ)
        self.gpu_seconds_before = 0.0  # GPU-seconds of earlier attempts (a resumed training)
        self.resumed_from_epoch: int | None = None
        self.data_loading_seconds: float | None = None
        self.ranks_gpu_seconds: list[float] | None = None  # distributed: each rank's, gathered after the loop

    def start(self) -> TrainingTelemetry:
        self.sampler.start()
        return self

    def stop(self) -> None:
        self.sampler.stop()

    def data_loaded(self, seconds: float) -> None:
        self.data_loading_seconds = seconds
        self.milestones.reach(DATA_LOADED)

    def first_step(self) -> None:
        self.milestones.reach(FIRST_STEP)

    def resumed(self, epoch: int, checkpoint_metrics: dict[str, float]) -> None:
        """Carry the GPU time of the attempts before a restart into the cumulative figure."""
        self.resumed_from_epoch = epoch
        self.gpu_seconds_before = float(checkpoint_metrics.get(CUMULATIVE_GPU_SECONDS, 0.0))

    def begin_epoch(self, epoch: int) -> None:
        self.sampler.mark(epoch_label(epoch))

    def end_epoch(self, epoch: int) -> dict[str, float]:
        """The epoch's figures (``epoch_gpu.*``, ``gpu_seconds``, ``cumulative_gpu_seconds``), as of now."""
        segment = self.sampler.summary(epoch_label(epoch))
        whole = self.sampler.summary()
        return {
            **segment.as_metrics(EPOCH_PREFIX),
            GPU_SECONDS: segment.gpu_seconds,
            CUMULATIVE_GPU_SECONDS: self.gpu_seconds_before + whole.gpu_seconds,
        }

    def finishing(self) -> None:
        """Time from here on (model export and logging) is the ``finish`` segment."""
        self.sampler.mark(FINISH)

    def summary(self) -> TelemetrySummary:
        return self.sampler.summary()

    def final_metrics(self) -> dict[str, float]:
        """The training's figures (``gpu.*``) and time to useful work (``time_to_<milestone>_seconds``)."""
        metrics = {**self.summary().as_metrics(RUN_PREFIX), **self.milestones.as_metrics()}
        if self.data_loading_seconds is not None:
            metrics[DATA_LOADING_SECONDS] = self.data_loading_seconds
        if self.ranks_gpu_seconds is not None:
            metrics[ALL_RANKS_GPU_SECONDS] = sum(self.ranks_gpu_seconds)
        return metrics

    def document(self) -> dict[str, Any]:
        extra: dict[str, Any] = {
            "resumed_from_epoch": self.resumed_from_epoch,
            "gpu_seconds_before": self.gpu_seconds_before,
            DATA_LOADING_SECONDS: self.data_loading_seconds,
        }
        if self.ranks_gpu_seconds is not None:
            extra["ranks"] = {"world_size": len(self.ranks_gpu_seconds), "gpu_seconds": self.ranks_gpu_seconds}
        return summary_document(
            self.summary(),
            self.sampler.summaries(),
            stage="train",
            milestones=self.milestones.durations(),
            extra=extra,
        )

    def series(self) -> bytes:
        return self.sampler.series_bytes()
