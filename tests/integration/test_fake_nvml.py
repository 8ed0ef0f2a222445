"""GpuSampler over the real pynvml and a fake libnvidia-ml.so.1 (tests/fixtures/fake_nvml), in a child process.

Each scripted sample is one memory query per device, and the sampler samples at start, at each mark and at
stop; with a long interval a test therefore knows exactly which scripted step each sample read, and the
figures below are worked out by hand from the script.
"""

from __future__ import annotations

import ctypes.util
import re

import pytest

from tests.fixtures.fake_nvml.harness import FakeNvml
from tests.fixtures.fake_nvml.script import Device, MigInstance, Script, Step

pytest_plugins = ("tests.fixtures.fake_nvml.plugin",)  # the fake_nvml and fake_nvml_lib fixtures

GIB = 2**30
MIB = 2**20
H100 = "NVIDIA H100 80GB HBM3"
A100 = "NVIDIA A100-SXM4-80GB"

# Three marks at ~0.1 s apart: samples at start (step 0), "epoch 1" (step 1), "epoch 2" (step 2), stop (step 3).
EPOCHS: list[list[object]] = [["sleep", 0.1], ["mark", "epoch 1"], ["sleep", 0.1], ["mark", "epoch 2"], ["sleep", 0.1]]


def _counter_script() -> Script:
    others = ((1, 4 * GIB),)  # pid 1 is not in our process tree: its memory is not ours
    ours: tuple[tuple[int | str, int], ...] = (("{self}", 512 * MIB), ("{child}", 256 * MIB))
    steps = [
        Step(util=10, mem=1 * GIB, power_mw=100_000, energy_mj=1_000_000, procs=others),
        Step(util=30, mem=4 * GIB, power_mw=200_000, energy_mj=1_100_000, procs=ours + others),
        Step(util=50, mem=3 * GIB, power_mw=300_000, energy_mj=1_300_000, procs=ours),
        Step(util=90, mem=2 * GIB, power_mw=400_000, energy_mj=1_600_000),
    ]
    return Script(devices=[Device(name=H100, steps=steps)])


def test_summary_figures_match_the_script_by_hand(fake_nvml: FakeNvml) -> None:
    result = fake_nvml.run(_counter_script(), EPOCHS)
    s = result.summary

    assert s.samples == 4 and s.gpu_count == 1 and s.gpu_names == (H100,)
    assert s.util_mean_pct == pytest.approx((10 + 30 + 50 + 90) / 4)  # 45
    assert s.util_p95_pct == pytest.approx(50 + 0.85 * (90 - 50))  # rank 3 x 0.95 = 2.85 -> 84
    assert s.mem_peak_bytes == 4 * GIB
    assert s.mem_total_bytes == 80 * GIB
    assert s.proc_mem_peak_bytes == 768 * MIB  # this process + its child, not pid 1
    assert s.power_mean_w == pytest.approx(250.0)
    assert s.energy_source == "counter"
    assert s.energy_j == pytest.approx((1_600_000 - 1_000_000) / 1000)  # 600 J from the counter
    assert s.gpu_seconds == pytest.approx(s.duration_s)
    assert 0.25 < s.duration_s < 2.0
    assert s.missing == ()


def test_segments_split_time_energy_and_samples_between_marks(fake_nvml: FakeNvml) -> None:
    result = fake_nvml.run(_counter_script(), EPOCHS)
    run, e1, e2 = (result.segments[k] for k in ("run", "epoch 1", "epoch 2"))

    assert result.labels == ["run", "epoch 1", "epoch 2"]
    # The sample at a mark closes the segment before it: "run" holds steps 0-1, "epoch 1" step 2, "epoch 2" step 3.
    assert (run.samples, e1.samples, e2.samples) == (2, 1, 1)
    assert run.util_mean_pct == pytest.approx(20.0) and e1.util_mean_pct == 50 and e2.util_mean_pct == 90
    assert (run.energy_j, e1.energy_j, e2.energy_j) == pytest.approx((100.0, 200.0, 300.0))
    assert run.duration_s + e1.duration_s + e2.duration_s == pytest.approx(result.summary.duration_s)
    assert e1.proc_mem_peak_bytes == 768 * MIB and e2.proc_mem_peak_bytes == 0


def test_without_an_energy_counter_energy_is_power_integrated_over_time(fake_nvml: FakeNvml) -> None:
    device = Device(name=H100, unsupported=["energy"], steps=[Step(util=60, power_mw=250_000)])
    s = fake_nvml.run(Script(devices=[device]), [["sleep", 0.4]], interval=0.05).summary

    assert s.energy_source == "integrated power"
    assert s.energy_j == pytest.approx(250.0 * s.duration_s)  # constant 250 W: trapezoids are exact
    assert "GPU 0: energy counter not supported: integrated power" in s.missing


def test_the_energy_counter_and_integrated_power_agree_on_steady_power(fake_nvml: FakeNvml) -> None:
    # Without scripted energy_mj the fake's counter integrates power over real time, as hardware does.
    counter = Device(name=H100, steps=[Step(util=60, power_mw=300_000)])
    s = fake_nvml.run(Script(devices=[counter]), [["sleep", 0.4]], interval=0.05).summary

    assert s.energy_source == "counter"
    assert s.energy_j == pytest.approx(300.0 * s.duration_s, rel=0.05)


def test_several_gpus_are_summed_and_reported_one_by_one(fake_nvml: FakeNvml) -> None:
    gpus = [
        Device(name=H100, steps=[Step(util=20, mem=2 * GIB, power_mw=100_000, energy_mj=0)] * 3 + [
            Step(util=20, mem=2 * GIB, power_mw=100_000, energy_mj=30_000)]),
        Device(name=A100, memory_total=80 * GIB, steps=[Step(util=80, mem=6 * GIB, power_mw=300_000, energy_mj=0)]
               * 3 + [Step(util=80, mem=6 * GIB, power_mw=300_000, energy_mj=90_000)]),
    ]  # fmt: skip
    s = fake_nvml.run(Script(devices=gpus), EPOCHS).summary

    assert s.gpu_count == 2 and s.gpu_names == (H100, A100)
    assert s.gpu_seconds == pytest.approx(2 * s.duration_s)
    assert s.util_mean_pct == pytest.approx(50.0)  # four samples at 20 % and four at 80 %
    assert s.mem_peak_bytes == 6 * GIB  # the fuller of the two
    assert s.power_mean_w == pytest.approx(400.0)  # 100 W + 300 W
    assert s.energy_j == pytest.approx(30.0 + 90.0)
    assert [d.util_mean_pct for d in s.devices] == [20.0, 80.0]
    metrics = s.as_metrics("train.")
    assert metrics["train.gpu0.DCGM_FI_DEV_GPU_UTIL_mean"] == 20.0
    assert metrics["train.gpu1.DCGM_FI_DEV_POWER_USAGE_mean"] == 300.0
    assert metrics["train.DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"] == pytest.approx(120_000.0)  # mJ, as DCGM


THREE = Script(
    devices=[
        Device(name="GPU-A", uuid="GPU-aaaa1111-0000-0000-0000-000000000000"),
        Device(name="GPU-B", uuid="GPU-bbbb2222-0000-0000-0000-000000000000"),
        Device(name="GPU-C", uuid="GPU-cccc3333-0000-0000-0000-000000000000"),
    ]
)


@pytest.mark.parametrize(
    ("env", "names", "note"),
    [
        ({"CUDA_VISIBLE_DEVICES": "2,0"}, ("GPU-C", "GPU-A"), None),
        ({"CUDA_VISIBLE_DEVICES": "GPU-bbbb2222-0000-0000-0000-000000000000"}, ("GPU-B",), None),
        ({"CUDA_VISIBLE_DEVICES": "GPU-cccc"}, ("GPU-C",), None),
        ({"CUDA_VISIBLE_DEVICES": "0,7,1"}, ("GPU-A",), "CUDA_VISIBLE_DEVICES entry '7' names no visible device"),
        ({"CUDA_VISIBLE_DEVICES": ""}, (), "no GPU: CUDA_VISIBLE_DEVICES='' hides every device"),
        ({"NVIDIA_VISIBLE_DEVICES": "GPU-aaaa1111-0000-0000-0000-000000000000,GPU-cccc3333"}, ("GPU-A", "GPU-C"), None),
        ({"NVIDIA_VISIBLE_DEVICES": "1,2", "CUDA_VISIBLE_DEVICES": "1"}, ("GPU-C",), None),
        ({"NVIDIA_VISIBLE_DEVICES": "all"}, ("GPU-A", "GPU-B", "GPU-C"), None),
    ],
)
def test_visible_devices_variables_choose_what_is_sampled(
    fake_nvml: FakeNvml, env: dict[str, str], names: tuple[str, ...], note: str | None
) -> None:
    s = fake_nvml.run(THREE, env=env).summary

    assert s.gpu_names == names
    assert s.gpu_seconds == pytest.approx(len(names) * s.duration_s)
    if note:
        assert any(m.startswith(note) for m in s.missing), s.missing


def _mig_script() -> Script:
    parent = Device(
        name=A100,
        steps=[Step(power_mw=200_000, energy_mj=0)] * 3 + [Step(power_mw=200_000, energy_mj=50_000)],
        mig=[
            MigInstance(f"{A100} MIG 1g.10gb", "MIG-1111aaaa-0000-0000-0000-000000000000", 10 * GIB,
                        steps=[Step(mem=1 * GIB, procs=(("{self}", 900 * MIB),))]),
            MigInstance(f"{A100} MIG 3g.40gb", "MIG-3333bbbb-0000-0000-0000-000000000000", 40 * GIB,
                        steps=[Step(mem=30 * GIB)]),
        ],
    )  # fmt: skip
    plain = Device(name=H100, steps=[Step(util=40, energy_mj=0)] * 3 + [Step(util=40, energy_mj=20_000)])
    return Script(devices=[parent, plain])


def test_mig_instances_are_sampled_as_units_sharing_their_gpus_energy(fake_nvml: FakeNvml) -> None:
    s = fake_nvml.run(_mig_script(), EPOCHS).summary

    assert s.gpu_count == 3
    assert [d.mig_profile for d in s.devices] == ["1g.10gb", "3g.40gb", ""]
    assert [d.mem_total_bytes for d in s.devices] == [10 * GIB, 40 * GIB, 80 * GIB]
    assert s.devices[0].proc_mem_peak_bytes == 900 * MIB
    assert s.devices[0].parent_uuid == s.devices[1].parent_uuid != ""
    assert s.energy_j == pytest.approx(50.0 + 20.0)  # the A100 counted once, not once per instance
    assert s.util_mean_pct == pytest.approx(40.0)  # MIG instances report no utilisation
    assert s.gpu_seconds == pytest.approx(3 * s.duration_s)
    assert "GPU 0 MIG 0 (1g.10gb): utilisation not supported on MIG instances" in s.missing
    assert "GPU 0 is MIG-partitioned: power and energy are for the whole GPU" in s.missing


def test_a_mig_uuid_in_cuda_visible_devices_selects_that_instance_only(fake_nvml: FakeNvml) -> None:
    env = {"CUDA_VISIBLE_DEVICES": "MIG-3333bbbb-0000-0000-0000-000000000000"}
    s = fake_nvml.run(_mig_script(), EPOCHS, env=env).summary

    assert s.gpu_count == 1
    assert s.devices[0].mig_profile == "3g.40gb" and s.devices[0].mig_index == 1
    assert s.mem_peak_bytes == 30 * GIB


def test_a_gpu_lost_mid_run_is_reported_and_sampling_goes_on(fake_nvml: FakeNvml) -> None:
    # GPU 1 answers two samples (start, "epoch 1"); its third memory query finds it lost.
    healthy = Device(name=H100, steps=[Step(util=50, power_mw=100_000)])
    fragile = Device(name=H100, steps=[Step(util=70, power_mw=100_000)], lost_after_calls=2)
    result = fake_nvml.run(Script(devices=[healthy, fragile]), EPOCHS)
    s = result.summary

    assert s.samples == 4 and s.gpu_count == 2
    lost = [m for m in s.missing if m.startswith("GPU 1 lost at t=")]
    assert len(lost) == 1 and lost[0].endswith("(GPU is lost)"), s.missing
    gpu0, gpu1 = s.devices
    assert gpu0.lost_at_s is None and gpu0.seconds == pytest.approx(s.duration_s)
    lost_at = result.segments["run"].duration_s + result.segments["epoch 1"].duration_s  # the "epoch 2" mark
    # Lost at the sample taken at that mark: on a busy machine the sample lands a little after the mark itself.
    assert gpu1.lost_at_s is not None
    assert lost_at - 1e-3 <= gpu1.lost_at_s <= lost_at + result.segments["epoch 2"].duration_s
    assert gpu1.seconds == pytest.approx(result.segments["run"].duration_s)
    assert s.gpu_seconds == pytest.approx(gpu0.seconds + gpu1.seconds)
    assert [r["gpu_util_pct"] for r in result.rows if r["gpu"] == "1"] == ["70", "70", "", ""]


def test_a_gpu_lost_while_sampling_fast_keeps_host_figures_coming(fake_nvml: FakeNvml) -> None:
    device = Device(name=H100, steps=[Step(util=90, power_mw=300_000)], lost_after_ms=250)
    s = fake_nvml.run(Script(devices=[device]), [["burn", 0.6]], interval=0.05).summary

    lost = [m for m in s.missing if m.startswith("GPU 0 lost at t=")]
    assert lost, s.missing
    when = float(re.search(r"t=([\d.]+)s", lost[0]).group(1))  # type: ignore[union-attr]
    assert 0.2 <= when <= 0.45
    assert s.gpu_seconds == pytest.approx(when, abs=0.11)  # counted until the last sample that answered
    assert s.samples >= 8  # the sampler kept going after the loss
    assert s.proc_cpu_mean_pct is not None and s.proc_cpu_mean_pct > 20  # the burn loop, seen by the host probe


@pytest.mark.skipif(
    ctypes.util.find_library("nvidia-ml") is not None, reason="a real NVML library is installed on this machine"
)
def test_without_any_nvml_library_the_summary_says_no_gpu_and_host_is_accounted(fake_nvml: FakeNvml) -> None:
    s = fake_nvml.run(None, [["burn", 0.4]], interval=0.05).summary

    assert s.gpu_count == 0 and s.gpu_seconds == 0.0 and s.energy_j is None
    assert s.missing[0] == "no GPU: NVML Shared Library Not Found"
    assert s.samples >= 5
    assert s.host_cpu_mean_pct is not None and s.host_mem_peak_bytes is not None
    assert s.proc_rss_peak_bytes is not None and s.proc_rss_peak_bytes > 10 * MIB
    assert s.describe().startswith("no GPU: NVML Shared Library Not Found; host CPU")


def test_a_driver_that_fails_to_initialise_is_a_no_gpu_summary(fake_nvml: FakeNvml) -> None:
    s = fake_nvml.run(Script(devices=[Device()], init_error=9), EPOCHS).summary

    assert s.gpu_count == 0 and s.missing[0] == "no GPU: Driver Not Loaded"
    assert s.samples == 4  # host samples still taken at start, marks and stop


def test_unsupported_queries_throttling_ecc_and_xid_errors_are_reported(fake_nvml: FakeNvml) -> None:
    device = Device(
        name=H100,
        unsupported=["temperature", "clock"],
        steps=[
            Step(util=50, power_mw=100_000, ecc=3),
            Step(util=50, power_mw=100_000, ecc=3, throttle=0x4),  # software power cap
            Step(util=50, power_mw=100_000, ecc=5, throttle=0x1),  # idle: not a slowdown
            Step(util=50, power_mw=100_000, ecc=5),
        ],
        xids=[(2, 79)],
    )
    result = fake_nvml.run(Script(devices=[device]), EPOCHS)
    s = result.summary

    assert "GPU 0: temperature not supported" in s.missing and "GPU 0: SM clock not supported" in s.missing
    assert s.devices[0].temp_max_c is None
    assert s.ecc_uncorrected == 2  # 3 -> 5 during the run
    assert s.xid_errors == (79,)
    assert set(s.throttle_reasons) == {"sw_power_cap", "gpu_idle"}
    # Only the interval closed by the power-capped sample counts: start -> "epoch 1", the "run" segment.
    assert s.throttled_gpu_seconds == pytest.approx(result.segments["run"].duration_s)
    metrics = s.as_metrics()
    assert metrics["DCGM_FI_DEV_XID_ERRORS"] == 1 and metrics["DCGM_FI_DEV_CLOCKS_EVENT_REASONS"] == 0x5


def test_periodic_sampling_keeps_the_interval_and_a_running_summary_is_safe(fake_nvml: FakeNvml) -> None:
    device = Device(name=H100, steps=[Step(util=50)])
    result = fake_nvml.run(Script(devices=[device]), [["sleep", 0.5], ["summary"], ["sleep", 0.2]], interval=0.05)

    s = result.summary
    assert s.interval_s == 0.05
    assert 9 <= s.samples <= 17  # ~0.7 s at 20 Hz, plus start, the running summary and stop
    gaps = [float(b["t_s"]) - float(a["t_s"]) for a, b in zip(result.rows, result.rows[1:], strict=False)]
    assert max(gaps) < 0.2
    assert len(result.running_summaries) == 1 and result.running_summaries[0].samples < s.samples
    host_rows = [r for r in result.rows if r["host_mem_used_bytes"]]
    assert 3 <= len(host_rows) <= 5  # host read at start, the summary, stop and once a second: not at 20 Hz


def test_the_series_has_one_row_per_sample_and_gpu(fake_nvml: FakeNvml) -> None:
    result = fake_nvml.run(_counter_script(), EPOCHS)

    assert len(result.rows) == result.summary.samples
    assert [r["label"] for r in result.rows] == ["run", "run", "epoch 1", "epoch 2"]
    assert [r["gpu_util_pct"] for r in result.rows] == ["10", "30", "50", "90"]
    assert [r["energy_mj"] for r in result.rows] == ["1000000", "1100000", "1300000", "1600000"]
    assert result.rows[1]["process_fb_used_bytes"] == str(768 * MIB)
