"""Summary arithmetic over hand-made samples: every expected figure is worked out in the comments."""

from __future__ import annotations

import json

import pytest

from workloads.telemetry import (
    Accumulator,
    DomainReading,
    GpuUnit,
    HostReading,
    PowerDomain,
    Sample,
    TelemetrySummary,
    UnitReading,
    percentile,
)

GIB = 2**30
GPU = GpuUnit(index=0, uuid="GPU-0", name="NVIDIA H100 80GB HBM3", domain=0)
DOMAIN = PowerDomain(index=0, uuid="GPU-0", name="NVIDIA H100 80GB HBM3")


def sample(
    t: float,
    util: int | None,
    *,
    label: str = "run",
    mem: int = GIB,
    power: float | None = 100.0,
    energy: int | None = None,
    throttle: int | None = 0,
    ecc: int | None = None,
) -> Sample:
    return Sample(
        t=t,
        label=label,
        units=(UnitReading(util_pct=util, mem_used=mem, mem_total=80 * GIB, proc_mem=mem // 2),),
        domains=(DomainReading(power_w=power, energy_mj=energy, throttle=throttle, ecc_uncorrected=ecc),),
        host=HostReading(cpu_pct=50.0, mem_used=8 * GIB, proc_cpu_pct=100.0, proc_rss=GIB),
    )


def summarise(samples: list[Sample], label: str | None = None) -> TelemetrySummary:
    acc = Accumulator([GPU], [DOMAIN], interval_s=1.0)
    for s in samples:
        acc.add(s)
    return acc.summary(label)


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([5], 95, 5.0),
        ([0, 100], 95, 95.0),  # rank 0.95 between 0 and 100
        ([10, 30, 50, 90], 95, 84.0),  # rank 2.85: 50 + 0.85 x 40
        ([1, 2, 3, 4, 5], 50, 3.0),
        ([3, 1, 2], 100, 3.0),
    ],
)
def test_percentile_interpolates_between_ranks(values: list[float], q: float, expected: float) -> None:
    assert percentile(values, q) == pytest.approx(expected)


def test_utilisation_mean_and_p95_are_over_samples() -> None:
    s = summarise([sample(0, 0), sample(1, 20), sample(2, 40), sample(3, 100)])

    assert s.util_mean_pct == pytest.approx(40.0)  # (0 + 20 + 40 + 100) / 4
    assert s.util_p95_pct == pytest.approx(91.0)  # rank 2.85: 40 + 0.85 x 60
    assert s.samples == 4 and s.duration_s == 3.0 and s.gpu_seconds == 3.0


def test_idle_time_is_weighted_by_the_interval_each_sample_closes() -> None:
    # Intervals: 0-1 s closed at 5 %, 1-4 s closed at 80 %, 4-6 s closed at 2 %.
    s = summarise([sample(0, 50), sample(1, 5), sample(4, 80), sample(6, 2)])

    assert s.devices[0].util_seconds == ((2, 2.0), (5, 1.0), (80, 3.0))
    assert s.idle_gpu_seconds(10.0) == pytest.approx(3.0)  # 1 s at 5 % + 2 s at 2 %
    assert s.idle_gpu_seconds(1.0) == 0.0


def test_energy_comes_from_the_counter_when_both_ends_have_it() -> None:
    s = summarise([sample(0, 50, energy=10_000), sample(2, 50, energy=410_000), sample(3, 50, energy=710_000)])

    assert s.energy_j == pytest.approx(700.0)  # (710 000 - 10 000) mJ
    assert s.energy_source == "counter"


def test_without_a_counter_energy_is_the_trapezoid_of_power() -> None:
    s = summarise([sample(0, 50, power=100.0), sample(2, 50, power=300.0), sample(3, 50, power=300.0)])

    assert s.energy_j == pytest.approx((100 + 300) / 2 * 2 + 300 * 1)  # 400 + 300 J
    assert s.energy_source == "integrated power"
    assert s.power_mean_w == pytest.approx(700 / 3)


def test_a_counter_that_goes_backwards_falls_back_to_power_for_that_interval() -> None:
    # A driver reload resets the counter: 0-1 s counter (200 J), 1-2 s power (150 W x 1 s).
    s = summarise(
        [
            sample(0, 50, power=150.0, energy=1_000_000),
            sample(1, 50, power=150.0, energy=1_200_000),
            sample(2, 50, power=150.0, energy=5_000),
        ]
    )

    assert s.energy_j == pytest.approx(200.0 + 150.0)
    assert s.energy_source == "mixed"


def test_segments_take_the_time_since_the_previous_sample() -> None:
    samples = [
        sample(0, 10, label="load"),
        sample(2, 20, label="load"),  # mark("epoch 1") samples with the old label
        sample(5, 60, label="epoch 1"),
        sample(6, 80, label="epoch 1", power=200.0),
    ]
    load, epoch = summarise(samples, "load"), summarise(samples, "epoch 1")

    assert (load.duration_s, epoch.duration_s) == (2.0, 4.0)
    assert load.util_mean_pct == 15.0 and epoch.util_mean_pct == 70.0
    assert load.energy_j == pytest.approx(200.0)  # 100 W x 2 s
    assert epoch.energy_j == pytest.approx(100 * 3 + 150 * 1)  # 3 s at 100 W, then 100 -> 200 W over 1 s
    assert summarise(samples, "never marked").samples == 0


def test_a_lost_device_stops_counting_gpu_seconds_and_records_when() -> None:
    lost = Sample(t=3.0, label="run", units=(None,), domains=(None,), host=HostReading(cpu_pct=10.0))
    s = summarise([sample(0, 50), sample(2, 50), lost, Sample(t=4.0, label="run", units=(None,), domains=(None,))])

    assert s.gpu_seconds == 2.0 and s.duration_s == 4.0
    assert s.devices[0].lost_at_s == 3.0
    assert s.host_cpu_mean_pct == pytest.approx((50 + 50 + 10) / 3)


def test_mig_instances_share_one_energy_figure() -> None:
    units = [
        GpuUnit(0, "MIG-a", "NVIDIA A100 MIG 1g.10gb", domain=0, mig_index=0, parent_uuid="GPU-0"),
        GpuUnit(0, "MIG-b", "NVIDIA A100 MIG 2g.20gb", domain=0, mig_index=1, parent_uuid="GPU-0"),
    ]
    acc = Accumulator(units, [DOMAIN], interval_s=1.0)
    for t, energy in ((0.0, 0), (1.0, 250_000)):
        acc.add(
            Sample(
                t=t,
                label="run",
                units=(UnitReading(mem_used=GIB), UnitReading(mem_used=3 * GIB)),
                domains=(DomainReading(power_w=250.0, energy_mj=energy),),
            )
        )
    s = acc.summary()

    assert s.energy_j == pytest.approx(250.0)  # not 500: both instances sit on one GPU
    assert s.gpu_seconds == 2.0  # but each instance is a unit of its own
    assert [d.mig_profile for d in s.devices] == ["1g.10gb", "2g.20gb"]
    assert s.util_mean_pct is None and s.idle_gpu_seconds(10) is None  # utilisation unknown on MIG
    assert s.mem_peak_bytes == 3 * GIB


def test_ecc_counts_new_errors_and_throttling_counts_slowdown_time() -> None:
    s = summarise(
        [
            sample(0, 50, ecc=4, throttle=0),
            sample(1, 50, ecc=4, throttle=0x4),  # power cap: a slowdown
            sample(3, 50, ecc=6, throttle=0x1),  # idle: not a slowdown
        ]
    )

    assert s.ecc_uncorrected == 2
    assert s.throttle_reasons == ("gpu_idle", "sw_power_cap")
    assert s.throttled_gpu_seconds == 1.0


def test_metrics_use_dcgm_names_and_units() -> None:
    s = summarise([sample(0, 40, mem=2 * GIB, energy=0), sample(10, 60, mem=4 * GIB, energy=3_000_000)])
    m = s.as_metrics("train.")

    assert m["train.DCGM_FI_DEV_GPU_UTIL_mean"] == 50.0
    assert m["train.DCGM_FI_DEV_FB_USED_peak"] == 4096.0  # MiB
    assert m["train.DCGM_FI_DEV_FB_TOTAL"] == 81920.0  # MiB
    assert m["train.DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"] == 3_000_000.0  # mJ
    assert m["train.DCGM_FI_DEV_POWER_USAGE_mean"] == 100.0  # W
    assert m["train.gpuflow_process_fb_used_peak"] == 2048.0  # MiB
    assert m["train.gpuflow_gpu_seconds"] == 10.0
    assert all(isinstance(v, float) for v in m.values())
    assert not any(k.startswith("train.gpu0.") for k in m)  # per-GPU keys only with several GPUs


def test_a_summary_survives_a_json_round_trip() -> None:
    s = summarise([sample(0, 50, energy=0), sample(1, 70, energy=1000)])
    again = TelemetrySummary.from_dict(json.loads(json.dumps(s.as_dict())))

    assert again == s


def test_no_gpu_summary_has_no_gpu_figures_but_host_ones() -> None:
    acc = Accumulator([], [], interval_s=0.5)
    acc.add(Sample(t=0.0, label="run", host=HostReading(cpu_pct=None, mem_used=2 * GIB)))
    acc.add(Sample(t=0.5, label="run", host=HostReading(cpu_pct=30.0, mem_used=3 * GIB, proc_rss=GIB)))
    s = acc.summary(missing=["no GPU: NVML Shared Library Not Found"])

    assert (s.gpu_count, s.gpu_seconds, s.util_mean_pct, s.energy_j) == (0, 0.0, None, None)
    assert s.host_cpu_mean_pct == 30.0 and s.host_mem_peak_bytes == 3 * GIB and s.duration_s == 0.5
    assert s.describe() == "no GPU: NVML Shared Library Not Found; host CPU 30% over 0.5s"
    assert "DCGM_FI_DEV_GPU_UTIL_mean" not in s.as_metrics() and s.as_metrics()["gpuflow_gpu_seconds"] == 0.0
