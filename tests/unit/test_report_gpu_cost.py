"""The ``gpu`` and ``cost`` objects of a pipeline run (``gpuflow run --json``), worked out by hand.

A run of three stages at H100 4.00/h, node 0.20/h, 0.30/kWh, idle below 10 %:

    prepare   no GPU, 36 s                 -> 0.01 node-h x 0.20                          = 0.002
    train     1 H100 1800 s, 1.8e6 J       -> 0.5 h x 4.00 = 2.00 + 0.5 kWh x 0.30 = 0.15 = 2.150
              180 s at 0 %, 1080 s at 50 %, 540 s at 100 %: idle 180 s = 0.05 h x 4.00     = 0.200 idle
    evaluate  1 H100 360 s at 5 %, 3.6e4 J -> 0.1 h x 4.00 = 0.40 + 0.01 kWh x 0.30 = 0.003 = 0.403
              all of it idle                                                               = 0.400 idle
    run                                                                                    = 2.555, idle 0.600
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from blocks.pricing import GpuPricing
from tasks.reporting.cost import stage_cost
from tasks.reporting.stage_telemetry import pipeline_gpu_and_cost, stage_cost_from_dict
from workloads.telemetry import DeviceSummary, TelemetrySummary

H100 = "NVIDIA H100 80GB HBM3"
GIB = 2**30
PRICES = GpuPricing(gpu_hour_prices={H100: 4.0}, node_hour_price=0.2, kwh_price=0.3, idle_utilization_pct=10.0)


def gpu_stage(
    label: str, seconds: float, util_seconds: tuple[tuple[int, float], ...], energy_j: float, power_w: float,
    mem_gib: int,
) -> TelemetrySummary:  # fmt: skip
    device = DeviceSummary(
        index=0, uuid="GPU-1", name=H100, seconds=seconds, util_seconds=util_seconds, mem_peak_bytes=mem_gib * GIB,
        mem_total_bytes=80 * GIB, power_mean_w=power_w, energy_j=energy_j,
    )  # fmt: skip
    return TelemetrySummary(
        label=label, gpu_count=1, gpu_names=(H100,), gpu_seconds=seconds, util_mean_pct=58.0, util_p95_pct=100.0,
        mem_peak_bytes=mem_gib * GIB, mem_total_bytes=80 * GIB, proc_mem_peak_bytes=None, power_mean_w=power_w,
        energy_j=energy_j, energy_source="counter", samples=100, interval_s=1.0, duration_s=seconds,
        devices=(device,),
    )  # fmt: skip


def as_json(summary: TelemetrySummary) -> dict[str, Any]:
    """What a stage result carries after a trip through Prefect's result storage: plain JSON."""
    return json.loads(json.dumps(summary.as_dict()))


PREPARE = TelemetrySummary(
    label="prepare", gpu_count=0, gpu_names=(), gpu_seconds=0.0, util_mean_pct=None, util_p95_pct=None,
    mem_peak_bytes=None, mem_total_bytes=None, proc_mem_peak_bytes=None, power_mean_w=None, energy_j=None,
    energy_source="none", samples=37, interval_s=1.0, duration_s=36.0,
    missing=("no GPU: NVML Shared Library Not Found",),
)  # fmt: skip
TRAIN = gpu_stage("train", 1800.0, ((0, 180.0), (50, 1080.0), (100, 540.0)), 1.8e6, 300.0, 40)
EVALUATE = gpu_stage("evaluate", 360.0, ((5, 360.0),), 3.6e4, 100.0, 10)
STAGES = {"prepare": as_json(PREPARE), "train": as_json(TRAIN), "evaluate": as_json(EVALUATE)}


def test_cost_per_stage_and_per_run() -> None:
    _, cost = pipeline_gpu_and_cost(STAGES, PRICES)

    assert cost["currency"] == "USD" and cost["basis"] == "mixed"
    stages = cost["stages"]
    assert stages["prepare"]["total"] == pytest.approx(0.002)
    assert stages["prepare"]["basis"] == "node-hours (no GPU)"
    assert stages["train"]["compute_cost"] == pytest.approx(2.0)
    assert stages["train"]["energy_cost"] == pytest.approx(0.15)
    assert stages["train"]["total"] == pytest.approx(2.15)
    assert stages["train"]["idle_cost"] == pytest.approx(0.2)
    assert stages["train"]["basis"] == "gpu-hours"
    assert stages["evaluate"]["total"] == pytest.approx(0.403)
    assert stages["evaluate"]["idle_cost"] == pytest.approx(0.4)
    run = cost["run"]
    assert run["total"] == pytest.approx(2.555)
    assert run["idle_cost"] == pytest.approx(0.6)
    assert run["gpu_hours"] == pytest.approx(0.6)
    assert run["node_hours"] == pytest.approx(2196 / 3600)
    assert run["energy_kwh"] == pytest.approx(0.51)
    assert run["lines"][1]["price_source"] == f"gpu_hour_prices[{H100!r}]"


def test_gpu_figures_per_stage_and_per_run() -> None:
    gpu, _ = pipeline_gpu_and_cost(STAGES, PRICES)

    train = gpu["stages"]["train"]
    assert (train["gpu_count"], train["gpu_names"], train["gpu_seconds"]) == (1, [H100], 1800.0)
    assert (train["util_mean_pct"], train["util_p95_pct"]) == (58.0, 100.0)  # the stage's own (sample) figures
    assert train["idle_gpu_seconds"] == 180.0 and train["energy_j"] == 1.8e6
    assert gpu["stages"]["prepare"]["gpu_count"] == 0
    assert gpu["stages"]["prepare"]["missing"] == ["no GPU: NVML Shared Library Not Found"]
    run = gpu["run"]
    assert run["has_gpu"] is True
    assert (run["gpu_count"], run["gpu_names"], run["gpu_seconds"]) == (1, [H100], 2160.0)
    # time-weighted over 2160 GPU-s: (0x180 + 50x1080 + 100x540 + 5x360) / 2160
    assert run["util_mean_pct"] == pytest.approx(109_800 / 2160)
    assert run["util_p95_pct"] == 100.0  # 95 % of 2160 s = 2052 s is only reached with the 100 % seconds
    assert run["mem_peak_bytes"] == 40 * GIB
    assert run["power_mean_w"] == pytest.approx((300 * 1800 + 100 * 360) / 2160)  # duration-weighted
    assert run["energy_j"] == pytest.approx(1.836e6)
    assert run["idle_gpu_seconds"] == pytest.approx(540.0)
    assert run["duration_s"] == pytest.approx(2196.0)
    assert run["missing"] == ["prepare: no GPU: NVML Shared Library Not Found"]
    json.dumps(gpu)  # JSON-ready


def test_a_run_without_any_gpu_is_priced_by_node_hours() -> None:
    gpu, cost = pipeline_gpu_and_cost({"prepare": as_json(PREPARE)}, PRICES)
    assert gpu["run"]["has_gpu"] is False and gpu["run"]["gpu_seconds"] == 0.0
    assert gpu["run"]["util_mean_pct"] is None and gpu["run"]["energy_j"] is None
    assert cost["basis"] == "node-hours (no GPU)"
    assert cost["run"]["total"] == pytest.approx(36 / 3600 * 0.2)


def test_a_stage_without_telemetry_is_named_not_priced() -> None:
    gpu, cost = pipeline_gpu_and_cost({"train": as_json(TRAIN), "rollout": {}}, PRICES)
    assert gpu["stages"]["rollout"]["missing"] == ["no telemetry recorded for this stage"]
    assert "rollout" not in cost["stages"]
    assert cost["run"]["total"] == pytest.approx(2.15)
    assert "rollout: no telemetry, not priced" in cost["run"]["notes"]


def test_stage_cost_from_dict_matches_the_summary() -> None:
    assert stage_cost_from_dict(as_json(TRAIN), PRICES) == stage_cost(TRAIN, PRICES)
