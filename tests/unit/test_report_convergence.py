"""The report's per-epoch GPU time and cost, and what report.md says about them, worked out by hand.

A training on one H100 at 3.60/h: 50 GPU-s in all, so 0.05 in all and 0.001 per GPU-second. Four epochs of
10 s each; cumulative GPU-seconds 20, 30, 40, 50 (start-up in the first); val_accuracy 0.60, 0.90, 0.97, 1.00.
Best 1.00 at epoch 4; 95 % of it (0.95) first at epoch 3: 3 epochs, 30 s, 20+10+10 = 40 GPU-s, 0.04.
"""

from __future__ import annotations

import pytest

from blocks.pricing import GpuPricing
from tasks.reporting.report_markdown import render_markdown
from tasks.reporting.run_data import RunRecord, StageData, assemble
from workloads.telemetry import DeviceSummary, TelemetrySummary

H100 = "NVIDIA H100 80GB HBM3"
PRICES = GpuPricing(gpu_hour_prices={H100: 3.6}, node_hour_price=0.36)
EPOCHS = [
    {"epoch": 1.0, "val_accuracy": 0.60, "train_loss": 1.2, "val_loss": 1.0, "epoch_seconds": 10.0,
     "samples_per_second": 100.0, "cumulative_gpu_seconds": 20.0},
    {"epoch": 2.0, "val_accuracy": 0.90, "train_loss": 0.5, "val_loss": 0.4, "epoch_seconds": 10.0,
     "samples_per_second": 100.0, "cumulative_gpu_seconds": 30.0},
    {"epoch": 3.0, "val_accuracy": 0.97, "train_loss": 0.3, "val_loss": 0.2, "epoch_seconds": 10.0,
     "samples_per_second": 100.0, "cumulative_gpu_seconds": 40.0},
    {"epoch": 4.0, "val_accuracy": 1.00, "train_loss": 0.2, "val_loss": 0.1, "epoch_seconds": 10.0,
     "samples_per_second": 100.0, "cumulative_gpu_seconds": 50.0},
]  # fmt: skip


def summary(gpu_seconds: float, duration: float) -> TelemetrySummary:
    gpu = gpu_seconds > 0
    devices = (DeviceSummary(index=0, uuid="GPU-1", name=H100, seconds=gpu_seconds, util_seconds=((90, gpu_seconds),)),)
    return TelemetrySummary(
        label=None, gpu_count=1 if gpu else 0, gpu_names=(H100,) if gpu else (), gpu_seconds=gpu_seconds,
        util_mean_pct=90.0 if gpu else None, util_p95_pct=90.0 if gpu else None, mem_peak_bytes=None,
        mem_total_bytes=None, proc_mem_peak_bytes=None, power_mean_w=None, energy_j=None, energy_source="none",
        samples=10, interval_s=1.0, duration_s=duration, devices=devices if gpu else (),
        missing=() if gpu else ("no GPU: NVML Shared Library Not Found",),
    )  # fmt: skip


def record(train: TelemetrySummary, epochs: list[dict[str, float]] = EPOCHS, stop: str = "") -> RunRecord:
    return RunRecord(
        run_id="r" * 32, kind="pipeline", tags={"gpuflow.dataset_version": "abc123"},
        stages={"train": StageData("train", "t" * 32, train, True, [])}, epochs=epochs, train_metrics={},
        stop_reason=stop or "completed: ran all 4 epochs", test_metrics={"accuracy": 0.95},
    )  # fmt: skip


def test_epoch_gpu_time_and_cost_include_start_up_in_the_first_epoch() -> None:
    data = assemble(record(summary(50.0, 50.0)), PRICES, "this run")

    assert data.epoch_gpu_seconds == [20.0, 10.0, 10.0, 10.0]
    assert data.epoch_costs == pytest.approx([0.02, 0.01, 0.01, 0.01])
    assert data.cumulative_cost() == pytest.approx([0.02, 0.03, 0.04, 0.05])
    assert data.wall_seconds() == [10.0, 20.0, 30.0, 40.0]
    c = data.convergence
    assert c is not None
    assert (c.best_value, c.best_epoch, c.target_epoch, c.epochs_to_target) == (1.0, 4, 3, 3)
    assert (c.seconds_to_target, c.gpu_seconds_to_target) == (30.0, 40.0)
    assert c.cost_to_target == pytest.approx(0.04)


def test_markdown_states_the_convergence_figures() -> None:
    data = assemble(record(summary(50.0, 50.0)), PRICES, "this run")

    text = render_markdown([data], {"convergence_wall.png": "loss against wall time"}, PRICES)

    assert "GPUs: 1 x NVIDIA H100 80GB HBM3; 50.0 GPU-seconds over the run, utilisation 90.0 %" in text
    assert "- best val_accuracy: **1.0000** at epoch 4 of 4" in text
    assert (
        "- 95% of best (0.9500) first reached at epoch 3: 3 epochs, 30.00 s of epoch time, "
        "40.00 GPU-s (start-up included), cost 0.0400 USD"
    ) in text
    assert "- GPU time after the best epoch: 0.00 GPU-s" in text
    assert "- plateau: none (never 5 epochs without improvement)" in text
    assert "- divergence: none" in text
    assert "- throughput: 100 samples/s on average, variation 0.0 % (steady)" in text
    assert "- why training stopped: completed: ran all 4 epochs" in text
    assert "| train | 50.0 | 1 x NVIDIA H100 80GB HBM3 | 50.0 | 90.0 | 90.0 |" in text
    assert "![loss against wall time](convergence_wall.png)" in text
    assert "No GPU" not in text


def test_without_a_gpu_the_report_says_so_and_epochs_cost_node_time() -> None:
    data = assemble(record(summary(0.0, 50.0), stop="plateau: val_accuracy has not improved"), PRICES, "this run")

    assert data.epoch_gpu_seconds is None
    assert data.epoch_costs == pytest.approx([0.001] * 4)  # 10 s at 0.36 per node-hour
    text = render_markdown([data], {}, PRICES)
    assert (
        "**No GPU was used in this run** (no GPU: NVML Shared Library Not Found). GPU figures are empty and costs "
        "are priced by node-hour (0.36 USD per node-hour)."
    ) in text
    assert "30.00 s of epoch time, no GPU, cost 0.0030 USD" in text
    assert "- why training stopped: plateau: val_accuracy has not improved" in text
    assert "- train: no GPU: NVML Shared Library Not Found" in text  # under "Not measured"
