"""Fold samples into per-segment summaries as they arrive: the :class:`Accumulator` the sampler feeds.

Time between two samples belongs to the segment of the later one, so segment durations add up to the run's.
Energy over an interval comes from NVML's energy counter when both ends have it, else from power integrated
with the trapezoid rule. Memory stays small on long runs: utilisation is one byte a sample, everything else a
running sum, count or peak. What comes out is :mod:`workloads.telemetry.summary`'s data model.
"""

from __future__ import annotations

from array import array
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from workloads.telemetry.readings import GpuUnit, PowerDomain, Sample
from workloads.telemetry.summary import SLOWDOWN_MASK, DeviceSummary, TelemetrySummary, percentile, throttle_names


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
