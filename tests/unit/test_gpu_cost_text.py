"""GPU and cost text: the exact lines ``gpuflow run``, ``gpuflow lineage`` and the report show, from one module."""

from __future__ import annotations

from typing import Any

from tasks.reporting.gpu_cost_text import (
    devices,
    lineage_cost_text,
    lineage_gpu_text,
    money,
    no_gpu_reasons,
    run_cost_text,
    run_gpu_text,
)

GPU: dict[str, Any] = {
    "has_gpu": True,
    "gpu_count": 2,
    "gpu_names": ["NVIDIA H200", "NVIDIA H200"],
    "gpu_seconds": 12.34,
    "util_mean_pct": 71.6,
    "missing": [],
}
NO_GPU: dict[str, Any] = {
    "has_gpu": False,
    "gpu_count": 0,
    "gpu_names": [],
    "gpu_seconds": 0.0,
    "util_mean_pct": None,
    "missing": ["train: no GPU: NVML Shared Library Not Found", "evaluate: no GPU: NVML Shared Library Not Found"],
}
COST: dict[str, Any] = {
    "currency": "USD",
    "basis": "on-demand",
    "run": {"total": 1234.567891, "currency": "USD", "basis": "on-demand"},
    "stages": {"train": {"total": 0.123456}, "evaluate": {"total": 0.000012}},
}


def test_a_run_with_gpus_reads_the_same_in_every_view() -> None:
    assert devices(GPU) == "2 x NVIDIA H200, NVIDIA H200"
    assert run_gpu_text({"run": GPU}) == "2 x NVIDIA H200, NVIDIA H200: 12.3 GPU-seconds"
    assert lineage_gpu_text(GPU) == "2 x NVIDIA H200, NVIDIA H200, 12.3 GPU-s, util mean 72%"


def test_a_run_without_a_gpu_says_why_in_every_view() -> None:
    assert devices(NO_GPU) == "no GPU"
    assert no_gpu_reasons(NO_GPU["missing"]) == ["no GPU: NVML Shared Library Not Found"]
    assert run_gpu_text({"run": NO_GPU}) == "none used (no GPU: NVML Shared Library Not Found); costs in node-hours"
    assert run_gpu_text({}) == "none used (NVML saw no device); costs in node-hours"
    assert lineage_gpu_text(NO_GPU) == "no GPU (NVML Shared Library Not Found)"


def test_money_keeps_each_views_precision() -> None:
    assert money(1234.567891, "USD") == "1,234.5679 USD"
    assert money(None, "USD") == "n/a"
    assert run_cost_text(COST) == "1234.56789 USD (on-demand; train 0.12346, evaluate 0.00001)"
    assert run_cost_text({}) == "n/a"
    assert lineage_cost_text(COST["run"]) == "1234.5679 USD (on-demand)"
