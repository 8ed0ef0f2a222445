"""Per-segment summaries of telemetry samples: the figures a stage reports and cost is computed from (the data
model; :mod:`workloads.telemetry.accumulator` builds them from the samples).

Time between two samples belongs to the segment of the later one, so segment durations add up to the run's.
Energy over an interval comes from NVML's energy counter when both ends have it, else from power integrated
with the trapezoid rule; the summary says which (``energy_source``). Statistics of instantaneous values
(utilisation, memory, power) are over the samples taken in the segment.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

MIB = 2**20

# Clock-event (throttle) reasons, nvml.h nvmlClocksEventReason*.
THROTTLE_REASONS = {
    0x1: "gpu_idle",
    0x2: "applications_clocks",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal",
    0x40: "hw_thermal",
    0x80: "hw_power_brake",
    0x100: "display_clocks",
}
SLOWDOWN_MASK = 0x4 | 0x8 | 0x20 | 0x40 | 0x80  # reasons that mean the GPU ran slower than asked


def throttle_names(mask: int) -> tuple[str, ...]:
    return tuple(name for bit, name in THROTTLE_REASONS.items() if mask & bit)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between ranks, as numpy's default."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class DeviceSummary:
    """One GPU or MIG instance over a segment. Power-domain figures of a MIG instance are the whole GPU's."""

    index: int
    uuid: str
    name: str
    mig_index: int | None = None
    mig_profile: str = ""
    parent_uuid: str = ""
    seconds: float = 0.0
    util_mean_pct: float | None = None
    util_p95_pct: float | None = None
    util_seconds: tuple[tuple[int, float], ...] = ()  # seconds spent at each utilisation %
    mem_peak_bytes: int | None = None
    mem_total_bytes: int | None = None
    proc_mem_peak_bytes: int | None = None
    power_mean_w: float | None = None
    energy_j: float | None = None
    temp_max_c: int | None = None
    sm_clock_mean_mhz: float | None = None
    lost_at_s: float | None = None

    @property
    def key(self) -> str:
        return f"{self.index}" if self.mig_index is None else f"{self.index}.mig{self.mig_index}"

    def idle_seconds(self, threshold_pct: float) -> float | None:
        """Seconds with utilisation below the threshold; None when utilisation was never known."""
        if not self.util_seconds:
            return None if self.seconds > 0 else 0.0
        return sum(s for util, s in self.util_seconds if util < threshold_pct)


@dataclass(frozen=True)
class TelemetrySummary:
    """What a segment (a stage, an epoch) or the whole run used. Read ``missing`` before trusting a None."""

    label: str | None
    gpu_count: int
    gpu_names: tuple[str, ...]
    gpu_seconds: float  # wall seconds x GPUs (MIG instances count one each) visible and answering
    util_mean_pct: float | None
    util_p95_pct: float | None
    mem_peak_bytes: int | None  # highest memory used on any one device
    mem_total_bytes: int | None
    proc_mem_peak_bytes: int | None  # highest memory this process tree used on any one device
    power_mean_w: float | None  # summed over GPUs
    energy_j: float | None
    energy_source: str  # "counter", "integrated power", "mixed", or "none"
    samples: int
    interval_s: float
    duration_s: float
    host_cpu_mean_pct: float | None = None
    host_mem_peak_bytes: int | None = None
    proc_cpu_mean_pct: float | None = None
    proc_rss_peak_bytes: int | None = None
    throttle_reasons: tuple[str, ...] = ()
    throttled_gpu_seconds: float = 0.0
    ecc_uncorrected: int | None = None  # new volatile uncorrected ECC errors in the segment
    xid_errors: tuple[int, ...] = ()
    missing: tuple[str, ...] = ()
    devices: tuple[DeviceSummary, ...] = ()
    started_at: float = 0.0  # unix time the sampler started
    sampler_cpu_s: float = 0.0  # CPU time the sampling itself cost

    @property
    def has_gpu(self) -> bool:
        return self.gpu_count > 0

    def idle_gpu_seconds(self, threshold_pct: float) -> float | None:
        """GPU-seconds below the utilisation threshold; None when no device reported utilisation."""
        parts = [d.idle_seconds(threshold_pct) for d in self.devices]
        known = [p for p in parts if p is not None]
        return sum(known) if known else (0.0 if not self.devices else None)

    def describe(self) -> str:
        """One line for logs and the CLI."""
        if not self.has_gpu:
            host = f"host CPU {self.host_cpu_mean_pct:.0f}%" if self.host_cpu_mean_pct is not None else "host"
            reason = next((m for m in self.missing if m.startswith("no GPU")), "no GPU")
            return f"{reason}; {host} over {self.duration_s:.1f}s"
        names = ", ".join(sorted(set(self.gpu_names)))
        parts = [f"{self.gpu_count} x {names}", f"{self.gpu_seconds:.1f} GPU-s"]
        if self.util_mean_pct is not None and self.util_p95_pct is not None:
            parts.append(f"util mean {self.util_mean_pct:.0f}% p95 {self.util_p95_pct:.0f}%")
        if self.mem_peak_bytes is not None:
            parts.append(f"peak memory {self.mem_peak_bytes / 2**30:.2f} GiB")
        if self.energy_j is not None:
            parts.append(f"{self.energy_j:.0f} J ({self.energy_source})")
        line = ", ".join(parts)
        return f"{line}; missing: {'; '.join(self.missing)}" if self.missing else line

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TelemetrySummary:
        """Inverse of as_dict (after a JSON round trip), for summaries a workload wrote in its pod."""
        values = dict(data)
        values["devices"] = tuple(
            DeviceSummary(**{**d, "util_seconds": tuple((int(u), float(s)) for u, s in d.get("util_seconds", ()))})
            for d in values.get("devices", ())
        )
        for name in ("gpu_names", "throttle_reasons", "xid_errors", "missing"):
            values[name] = tuple(values.get(name, ()))
        return cls(**values)

    def as_metrics(self, prefix: str = "") -> dict[str, float]:
        """Float metrics with DCGM-exporter meanings and units (docs/telemetry.md); unknown values are left out."""
        out: dict[str, float] = {}

        def put(name: str, value: float | None, scale: float = 1.0) -> None:
            if value is not None:
                out[prefix + name] = float(value) * scale

        put("DCGM_FI_DEV_GPU_UTIL_mean", self.util_mean_pct)
        put("DCGM_FI_DEV_GPU_UTIL_p95", self.util_p95_pct)
        put("DCGM_FI_DEV_FB_USED_peak", self.mem_peak_bytes, 1 / MIB)
        put("DCGM_FI_DEV_FB_TOTAL", self.mem_total_bytes, 1 / MIB)
        put("DCGM_FI_DEV_POWER_USAGE_mean", self.power_mean_w)
        put("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", self.energy_j, 1000.0)
        temps = [d.temp_max_c for d in self.devices if d.temp_max_c is not None]
        put("DCGM_FI_DEV_GPU_TEMP_max", max(temps) if temps else None)
        clocks = [d.sm_clock_mean_mhz for d in self.devices if d.sm_clock_mean_mhz is not None]
        put("DCGM_FI_DEV_SM_CLOCK_mean", sum(clocks) / len(clocks) if clocks else None)
        put("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", self.ecc_uncorrected)
        if self.has_gpu:
            put("DCGM_FI_DEV_XID_ERRORS", len(self.xid_errors))
            mask = sum(bit for bit, name in THROTTLE_REASONS.items() if name in self.throttle_reasons)
            put("DCGM_FI_DEV_CLOCKS_EVENT_REASONS", mask)
            put("gpuflow_throttled_gpu_seconds", self.throttled_gpu_seconds)
        put("gpuflow_process_fb_used_peak", self.proc_mem_peak_bytes, 1 / MIB)
        put("gpuflow_gpu_count", self.gpu_count)
        put("gpuflow_gpu_seconds", self.gpu_seconds)
        put("gpuflow_samples", self.samples)
        put("gpuflow_interval_seconds", self.interval_s)
        put("gpuflow_duration_seconds", self.duration_s)
        put("gpuflow_host_cpu_percent_mean", self.host_cpu_mean_pct)
        put("gpuflow_host_mem_used_peak_bytes", self.host_mem_peak_bytes)
        put("gpuflow_process_cpu_percent_mean", self.proc_cpu_mean_pct)
        put("gpuflow_process_rss_peak_bytes", self.proc_rss_peak_bytes)
        put("gpuflow_sampler_cpu_seconds", self.sampler_cpu_s)
        if len(self.devices) > 1:
            for d in self.devices:
                put(f"gpu{d.key}.DCGM_FI_DEV_GPU_UTIL_mean", d.util_mean_pct)
                put(f"gpu{d.key}.DCGM_FI_DEV_FB_USED_peak", d.mem_peak_bytes, 1 / MIB)
                put(f"gpu{d.key}.DCGM_FI_DEV_POWER_USAGE_mean", d.power_mean_w)
                put(f"gpu{d.key}.gpuflow_gpu_seconds", d.seconds)
        return out
