"""Turn samples into per-segment summaries: the figures a stage reports and cost is computed from.

Time between two samples belongs to the segment of the later one, so segment durations add up to the run's.
Energy over an interval comes from NVML's energy counter when both ends have it, else from power integrated
with the trapezoid rule; the summary says which (``energy_source``). Statistics of instantaneous values
(utilisation, memory, power) are over the samples taken in the segment.
"""

from __future__ import annotations

import dataclasses
import math
from array import array
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from workloads.telemetry.readings import GpuUnit, PowerDomain, Sample

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


# ---------------------------------------------------------------------------------------------- accumulation


@dataclass
class _UnitAcc:
    seconds: float = 0.0
    util: array = field(default_factory=lambda: array("B"))  # one byte per sample: long runs stay small
    util_seconds: defaultdict[int, float] = field(default_factory=lambda: defaultdict(float))
    mem_peak: int | None = None
    mem_total: int | None = None
    proc_peak: int | None = None


@dataclass
class _DomainAcc:
    seconds: float = 0.0
    power_sum: float = 0.0
    power_n: int = 0
    energy_j: float = 0.0
    counter_s: float = 0.0
    integrated_s: float = 0.0
    temp_max: int | None = None
    clock_sum: float = 0.0
    clock_n: int = 0
    throttle_mask: int = 0
    throttled_s: float = 0.0
    ecc_increase: int | None = None
    xids: list[int] = field(default_factory=list)


@dataclass
class _HostAcc:
    cpu_sum: float = 0.0
    cpu_n: int = 0
    mem_peak: int | None = None
    proc_cpu_sum: float = 0.0
    proc_cpu_n: int = 0
    rss_peak: int | None = None


def _max(current: int | None, value: int | None) -> int | None:
    if value is None:
        return current
    return value if current is None else max(current, value)


@dataclass
class _SegmentAcc:
    units: list[_UnitAcc]
    domains: list[_DomainAcc]
    host: _HostAcc = field(default_factory=_HostAcc)
    samples: int = 0
    duration: float = 0.0

    def observe(self, s: Sample) -> None:
        self.samples += 1
        for acc, r in zip(self.units, s.units, strict=False):
            if r is None:
                continue
            if r.util_pct is not None:
                acc.util.append(max(0, min(100, int(r.util_pct))))
            acc.mem_peak = _max(acc.mem_peak, r.mem_used)
            acc.mem_total = _max(acc.mem_total, r.mem_total)
            acc.proc_peak = _max(acc.proc_peak, r.proc_mem)
        for dacc, d in zip(self.domains, s.domains, strict=False):
            if d is None:
                continue
            if d.power_w is not None:
                dacc.power_sum += d.power_w
                dacc.power_n += 1
            dacc.temp_max = _max(dacc.temp_max, d.temp_c)
            if d.sm_clock_mhz is not None:
                dacc.clock_sum += d.sm_clock_mhz
                dacc.clock_n += 1
            dacc.throttle_mask |= d.throttle or 0
            if d.ecc_uncorrected is not None and dacc.ecc_increase is None:
                dacc.ecc_increase = 0
            dacc.xids.extend(d.xids)
        h = s.host
        if h.cpu_pct is not None:
            self.host.cpu_sum += h.cpu_pct
            self.host.cpu_n += 1
        if h.proc_cpu_pct is not None:
            self.host.proc_cpu_sum += h.proc_cpu_pct
            self.host.proc_cpu_n += 1
        self.host.mem_peak = _max(self.host.mem_peak, h.mem_used)
        self.host.rss_peak = _max(self.host.rss_peak, h.proc_rss)

    def interval(self, prev: Sample, cur: Sample) -> None:
        dt = cur.t - prev.t
        if dt <= 0:
            return
        self.duration += dt
        for acc, p, c in zip(self.units, prev.units, cur.units, strict=False):
            if p is None or c is None:
                continue
            acc.seconds += dt
            if c.util_pct is not None:
                acc.util_seconds[max(0, min(100, int(c.util_pct)))] += dt
        for dacc, pd, cd in zip(self.domains, prev.domains, cur.domains, strict=False):
            if pd is None or cd is None:
                continue
            dacc.seconds += dt
            if pd.energy_mj is not None and cd.energy_mj is not None and cd.energy_mj >= pd.energy_mj:
                dacc.energy_j += (cd.energy_mj - pd.energy_mj) / 1000.0
                dacc.counter_s += dt
            elif pd.power_w is not None and cd.power_w is not None:
                dacc.energy_j += (pd.power_w + cd.power_w) / 2.0 * dt
                dacc.integrated_s += dt
            if cd.throttle is not None and cd.throttle & SLOWDOWN_MASK:
                dacc.throttled_s += dt
            if pd.ecc_uncorrected is not None and cd.ecc_uncorrected is not None:
                dacc.ecc_increase = (dacc.ecc_increase or 0) + max(0, cd.ecc_uncorrected - pd.ecc_uncorrected)


def _mean(total: float, n: int) -> float | None:
    return total / n if n else None


def _energy_source(domains: Iterable[_DomainAcc]) -> str:
    counter = any(d.counter_s > 0 for d in domains)
    integrated = any(d.integrated_s > 0 for d in domains)
    if counter and integrated:
        return "mixed"
    return "counter" if counter else "integrated power" if integrated else "none"


class Accumulator:
    """Folds samples into per-segment totals as they arrive, so a long run needs little memory."""

    def __init__(self, units: Sequence[GpuUnit], domains: Sequence[PowerDomain], interval_s: float) -> None:
        self.units = tuple(units)
        self.domains = tuple(domains)
        self.interval_s = interval_s
        self._all = self._new()
        self._segments: dict[str, _SegmentAcc] = {}
        self._prev: Sample | None = None
        self._lost_at: dict[int, float] = {}

    def _new(self) -> _SegmentAcc:
        return _SegmentAcc([_UnitAcc() for _ in self.units], [_DomainAcc() for _ in self.domains])

    @property
    def labels(self) -> list[str]:
        return list(self._segments)

    def add(self, sample: Sample) -> None:
        segment = self._segments.get(sample.label)
        if segment is None:
            segment = self._segments[sample.label] = self._new()
        for acc in (self._all, segment):
            acc.observe(sample)
            if self._prev is not None:
                acc.interval(self._prev, sample)
        for i, reading in enumerate(sample.units):
            if reading is None and i not in self._lost_at:
                self._lost_at[i] = sample.t
        self._prev = sample

    def summary(
        self,
        label: str | None = None,
        *,
        missing: Sequence[str] = (),
        started_at: float = 0.0,
        sampler_cpu_s: float = 0.0,
    ) -> TelemetrySummary:
        """The whole run (label None) or one segment; an unknown label gives an empty summary."""
        acc = self._all if label is None else self._segments.get(label, self._new())
        devices = tuple(self._device(i, acc) for i in range(len(self.units)))
        pooled = [v for u in acc.units for v in u.util]
        domain_energy = [d.energy_j for d in acc.domains if d.counter_s + d.integrated_s > 0]
        domain_power = [d.power_sum / d.power_n for d in acc.domains if d.power_n]
        mask = 0
        for d in acc.domains:
            mask |= d.throttle_mask
        eccs = [d.ecc_increase for d in acc.domains if d.ecc_increase is not None]
        return TelemetrySummary(
            label=label,
            gpu_count=len(self.units),
            gpu_names=tuple(u.name for u in self.units),
            gpu_seconds=sum(u.seconds for u in acc.units),
            util_mean_pct=sum(pooled) / len(pooled) if pooled else None,
            util_p95_pct=percentile(pooled, 95) if pooled else None,
            mem_peak_bytes=max((d.mem_peak_bytes for d in devices if d.mem_peak_bytes is not None), default=None),
            mem_total_bytes=max((d.mem_total_bytes for d in devices if d.mem_total_bytes is not None), default=None),
            proc_mem_peak_bytes=max(
                (d.proc_mem_peak_bytes for d in devices if d.proc_mem_peak_bytes is not None), default=None
            ),
            power_mean_w=sum(domain_power) if domain_power else None,
            energy_j=sum(domain_energy) if domain_energy else None,
            energy_source=_energy_source(acc.domains),
            samples=acc.samples,
            interval_s=self.interval_s,
            duration_s=acc.duration,
            host_cpu_mean_pct=_mean(acc.host.cpu_sum, acc.host.cpu_n),
            host_mem_peak_bytes=acc.host.mem_peak,
            proc_cpu_mean_pct=_mean(acc.host.proc_cpu_sum, acc.host.proc_cpu_n),
            proc_rss_peak_bytes=acc.host.rss_peak,
            throttle_reasons=throttle_names(mask),
            throttled_gpu_seconds=sum(d.throttled_s for d in acc.domains),
            ecc_uncorrected=sum(eccs) if eccs else None,
            xid_errors=tuple(x for d in acc.domains for x in d.xids),
            missing=tuple(missing),
            devices=devices,
            started_at=started_at,
            sampler_cpu_s=sampler_cpu_s,
        )

    def _device(self, i: int, acc: _SegmentAcc) -> DeviceSummary:
        unit, u = self.units[i], acc.units[i]
        d = acc.domains[unit.domain]
        return DeviceSummary(
            index=unit.index,
            uuid=unit.uuid,
            name=unit.name,
            mig_index=unit.mig_index,
            mig_profile=unit.mig_profile,
            parent_uuid=unit.parent_uuid,
            seconds=u.seconds,
            util_mean_pct=sum(u.util) / len(u.util) if u.util else None,
            util_p95_pct=percentile(list(u.util), 95) if u.util else None,
            util_seconds=tuple(sorted(u.util_seconds.items())),
            mem_peak_bytes=u.mem_peak,
            mem_total_bytes=u.mem_total,
            proc_mem_peak_bytes=u.proc_peak,
            power_mean_w=_mean(d.power_sum, d.power_n),
            energy_j=d.energy_j if d.counter_s + d.integrated_s > 0 else None,
            temp_max_c=d.temp_max,
            sm_clock_mean_mhz=_mean(d.clock_sum, d.clock_n),
            lost_at_s=self._lost_at.get(i),
        )
