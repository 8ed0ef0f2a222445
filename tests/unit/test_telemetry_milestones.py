"""Milestones (time to useful work), the series artifact, and the sampler's argument checks."""

from __future__ import annotations

import pytest

from workloads.telemetry import (
    DATA_LOADED,
    FIRST_STEP,
    MODEL_LOADED,
    DomainReading,
    GpuSampler,
    GpuUnit,
    HostReading,
    Milestones,
    Sample,
    UnitReading,
    read_series,
)
from workloads.telemetry.series import COLUMNS, encode_series


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_milestones_are_seconds_since_start_and_the_first_time_counts() -> None:
    clock = Clock()
    m = Milestones(clock=clock)
    clock.now = 102.5
    m.reach(DATA_LOADED)
    clock.now = 104.0
    m.reach(MODEL_LOADED)
    clock.now = 110.0
    assert m.reach(FIRST_STEP) == 10.0
    clock.now = 120.0
    assert m.reach(DATA_LOADED) == 2.5  # reaching it again changes nothing

    assert m.durations() == {DATA_LOADED: 2.5, MODEL_LOADED: 4.0, FIRST_STEP: 10.0}
    assert m.between(DATA_LOADED, FIRST_STEP) == 7.5
    assert m.between(DATA_LOADED, "warmed_up") is None
    assert m.seconds("warmed_up") is None
    assert m.as_metrics("train.")["train.time_to_first_step_seconds"] == 10.0


def test_the_series_round_trips_through_csv_gz() -> None:
    unit = GpuUnit(0, "GPU-0", "NVIDIA H100 80GB HBM3", domain=0)
    samples = [
        Sample(0.0, "run", (UnitReading(10, 100, 1000, 50),), (DomainReading(120.5, 7, xids=(79, 48)),)),
        Sample(0.5, "epoch 1", (None,), (None,), HostReading(cpu_pct=12.5)),
    ]
    data = encode_series(samples, [unit])
    rows = read_series(data)

    assert data == encode_series(samples, [unit])  # same samples, same bytes
    assert list(rows[0]) == list(COLUMNS)
    assert rows[0]["gpu_util_pct"] == "10" and rows[0]["power_w"] == "120.5" and rows[0]["xid"] == "79 48"
    assert rows[1]["label"] == "epoch 1" and rows[1]["fb_used_bytes"] == "" and rows[1]["host_cpu_pct"] == "12.5"


def test_a_series_without_gpu_has_one_row_per_sample() -> None:
    rows = read_series(encode_series([Sample(0.0, "run"), Sample(1.0, "run")], []))

    assert [(r["t_s"], r["gpu"]) for r in rows] == [("0", ""), ("1", "")]


@pytest.mark.parametrize("interval", [0.0, 0.01, -1.0, float("nan"), float("inf")])
def test_an_interval_finer_than_50_ms_is_refused(interval: float) -> None:
    with pytest.raises(ValueError, match=r"interval must be a number of seconds >= 0\.05"):
        GpuSampler(interval=interval)


def test_a_sampler_never_started_has_an_empty_summary_and_stop_is_harmless() -> None:
    sampler = GpuSampler(interval=0.05)
    sampler.stop()
    sampler.mark("epoch 1")

    assert sampler.summary().samples == 0 and sampler.label == "epoch 1" and sampler.missing == ()
