"""The trainer's own GPU telemetry: one sampler for the whole training, a segment per epoch, time to first step.

Sampling inside the trainer (not in the flow) is what makes the figures belong to the training: the same
process tree, the same devices (``CUDA_VISIBLE_DEVICES`` of the pod), epoch boundaries exact. Per epoch the
trainer logs the epoch's figures in the same MLflow batch as its loss and accuracy, so convergence can be read
against GPU time; at the end it logs the whole training's figures and writes ``telemetry/summary.json``
(read back by the train flow with ``TelemetrySummary.from_dict``) and the raw series. Nothing here may fail
a training: the sampler never raises for GPU trouble, and ``summary.missing`` says what was not measured.
"""

from __future__ import annotations

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

    def __init__(self, interval: float, milestones: Milestones | None = None) -> None:
        self.milestones = milestones or Milestones()
        self.sampler = GpuSampler(interval, label=SETUP)
        self.gpu_seconds_before = 0.0  # GPU-seconds of earlier attempts (a resumed training)
        self.resumed_from_epoch: int | None = None
        self.data_loading_seconds: float | None = None

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
        return metrics

    def document(self) -> dict[str, Any]:
        return summary_document(
            self.summary(),
            self.sampler.summaries(),
            stage="train",
            milestones=self.milestones.durations(),
            extra={
                "resumed_from_epoch": self.resumed_from_epoch,
                "gpu_seconds_before": self.gpu_seconds_before,
                DATA_LOADING_SECONDS: self.data_loading_seconds,
            },
        )

    def series(self) -> bytes:
        return self.sampler.series_bytes()
