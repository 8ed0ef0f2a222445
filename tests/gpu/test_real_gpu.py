"""On a real NVIDIA GPU: train a toy model for ~20 s with GpuSampler running and check the telemetry is real.

Runs only where torch sees CUDA and NVML sees a device; elsewhere it is skipped with a plain reason.

    GPUFLOW_TEST_REAL_NVML=1 python -m pytest tests/gpu -m gpu -v
"""

from __future__ import annotations

import time

import pytest
import torch

from tests.gpu.availability import REASON
from workloads.telemetry import GpuSampler, TelemetrySummary, read_series

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(bool(REASON), reason=REASON or "GPU present")]

TRAIN_SECONDS = 20.0


def _train(seconds: float) -> int:
    """A small MLP on random data, on the GPU, until ``seconds`` have passed; returns steps taken."""
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(2048, 4096), torch.nn.ReLU(), torch.nn.Linear(4096, 4096), torch.nn.ReLU(),
        torch.nn.Linear(4096, 10),
    ).to(device)  # fmt: skip
    optimiser = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(4096, 2048, device=device)
    y = torch.randint(0, 10, (4096,), device=device)
    steps = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(20):
            optimiser.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimiser.step()
            steps += 1
        torch.cuda.synchronize()
    return steps


@pytest.fixture(scope="module")
def trained() -> tuple[GpuSampler, TelemetrySummary, int]:
    with GpuSampler(interval=0.2, label="setup") as sampler:
        torch.zeros(1, device="cuda")  # create the CUDA context inside the run, as a trainer would
        sampler.mark("train")
        steps = _train(TRAIN_SECONDS)
        sampler.mark("teardown")
        torch.cuda.synchronize()
    return sampler, sampler.summary("train"), steps


def test_training_shows_real_utilisation_memory_and_energy(trained: tuple[GpuSampler, TelemetrySummary, int]) -> None:
    sampler, train, steps = trained
    detail = train.describe()

    assert steps > 0
    assert train.gpu_count >= 1, detail
    assert train.samples >= 0.5 * TRAIN_SECONDS / sampler.interval, detail
    assert train.util_mean_pct is not None and train.util_mean_pct > 0, detail
    assert train.mem_peak_bytes is not None and train.mem_peak_bytes > 0, detail
    assert train.proc_mem_peak_bytes is not None and train.proc_mem_peak_bytes > 0, (
        f"NVML listed no GPU memory for this process tree ({detail}); inside a container without the host PID "
        "namespace NVML reports host pids, which cannot match ours"
    )
    assert train.energy_j is not None and train.energy_j > 0, detail
    assert train.power_mean_w is not None and train.power_mean_w > 0, detail
    assert train.gpu_seconds == pytest.approx(train.gpu_count * train.duration_s, rel=0.01)


def test_the_run_summary_and_series_cover_every_segment(trained: tuple[GpuSampler, TelemetrySummary, int]) -> None:
    sampler, train, _ = trained
    whole = sampler.summary()
    rows = read_series(sampler.series_bytes())

    assert sampler.labels == ["setup", "train", "teardown"]
    assert whole.duration_s >= train.duration_s >= 0.9 * TRAIN_SECONDS
    assert whole.energy_j is not None and train.energy_j is not None and whole.energy_j >= train.energy_j
    assert {r["label"] for r in rows} == {"setup", "train", "teardown"}
    assert max(int(r["gpu_util_pct"]) for r in rows if r["label"] == "train" and r["gpu_util_pct"]) > 0
    print(f"\n{train.describe()}\nsampler CPU {whole.sampler_cpu_s:.3f}s over {whole.duration_s:.1f}s")
