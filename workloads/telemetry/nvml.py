"""NVML access for the sampler: find the visible GPUs and read them, turning every NVML failure into a note.

Nothing here raises to the caller. A query a device does not support (NotSupported, FunctionNotFound on an
older driver, NoPermission) is noted once and not asked again; a device that stops answering (GpuIsLost and
kin) is noted with the time and dropped; any other NVML error is counted and reported as a transient failure.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from workloads.telemetry.readings import DomainReading, GpuUnit, PowerDomain, UnitReading
from workloads.telemetry.visibility import PhysicalGpu, select_visible


def _import_pynvml() -> Any:
    """pynvml, or None: nvidia-ml-py is a dependency, but a slim workload image may still lack it."""
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


pynvml: Any = _import_pynvml()

# NVML return codes (nvml.h); named here so this module needs no pynvml to be importable.
NOT_SUPPORTED, NO_PERMISSION, NOT_FOUND, TIMEOUT = 3, 4, 6, 10
FUNCTION_NOT_FOUND, GPU_IS_LOST, RESET_REQUIRED, ARGUMENT_VERSION_MISMATCH, GPU_NOT_FOUND = 13, 15, 16, 25, 28
UNSUPPORTED_CODES = frozenset({NOT_SUPPORTED, FUNCTION_NOT_FOUND})
LOST_CODES = frozenset({GPU_IS_LOST, RESET_REQUIRED, GPU_NOT_FOUND})
MEMORY_V2 = 0x02000028
XID_EVENT = 0x8
CLOCK_SM = 1
TEMPERATURE_GPU = 0
ECC_UNCORRECTED, ECC_VOLATILE = 1, 0

QUERY_WHAT = {
    "memory": "memory",
    "utilization": "utilisation",
    "processes": "process list",
    "power": "power",
    "energy": "energy counter",
    "temperature": "temperature",
    "clock": "SM clock",
    "throttle": "throttle reasons",
    "ecc": "ECC error counter",
}


class _Lost(Exception):
    """Internal: the device stopped answering; carries NVML's message."""


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _address(handle: Any) -> int:
    return int(ctypes.cast(handle, ctypes.c_void_p).value or 0)


class NvmlReader:
    """One NVML session: ``open`` once, ``read`` per sample, ``close`` at the end; notes say what was missing."""

    def __init__(self, environ: Mapping[str, str], owns: Callable[[Iterable[int]], Iterable[int]]) -> None:
        """``owns`` picks, from pids NVML reports, those whose GPU memory counts as this process tree's."""
        self._environ = environ
        self._owns = owns
        self.units: tuple[GpuUnit, ...] = ()
        self.domains: tuple[PowerDomain, ...] = ()
        self.no_gpu_reason = ""
        self.driver_version = ""
        self._notes: dict[str, None] = {}
        self._errors: Counter[tuple[str, str, str]] = Counter()
        self._unit_handles: list[Any] = []
        self._domain_handles: list[Any] = []
        self._disabled: set[tuple[str, int, str]] = set()
        self._lost_units: set[int] = set()
        self._lost_domains: set[int] = set()
        self._memory_v1: set[int] = set()
        self._throttle_legacy = False
        self._event_set: Any = None
        self._domain_by_address: dict[int, int] = {}
        self._initialised = False

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> None:
        if pynvml is None:
            self.no_gpu_reason = "pynvml is not installed"
            return
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            self.no_gpu_reason = str(exc)
            return
        except OSError as exc:  # a broken library file
            self.no_gpu_reason = f"NVML could not be loaded: {exc}"
            return
        self._initialised = True
        try:
            self.driver_version = _text(pynvml.nvmlSystemGetDriverVersion())
            self._enumerate()
        except pynvml.NVMLError as exc:
            self.no_gpu_reason = f"NVML could not list devices: {exc}"
            self.units, self.domains = (), ()
        if not self.units and not self.no_gpu_reason:
            self.no_gpu_reason = "NVML found no device"
        self._register_xid_events()

    def close(self) -> None:
        if not self._initialised:
            return
        self._initialised = False
        with contextlib.suppress(pynvml.NVMLError):
            if self._event_set is not None:
                pynvml.nvmlEventSetFree(self._event_set)
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()

    def notes(self) -> list[str]:
        """What was missing or went wrong, in the order it happened, then transient error counts."""
        notes = list(self._notes)
        for (label, query, error), count in self._errors.items():
            times = "once" if count == 1 else f"{count} times"
            notes.append(f"{label}: {QUERY_WHAT.get(query, query)} query failed {times} ({error})")
        return notes

    def note(self, text: str) -> None:
        self._notes.setdefault(text, None)

    # ------------------------------------------------------------------ enumeration

    def _enumerate(self) -> None:
        handles = {}
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            try:
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                uuid = _text(pynvml.nvmlDeviceGetUUID(handle))
            except pynvml.NVMLError as exc:
                self.note(f"GPU {index} could not be opened: {exc}")
                continue
            migs = self._mig_instances(index, handle)
            handles[index] = (handle, migs)
            gpus.append(PhysicalGpu(index, uuid, tuple(uuid for uuid, _ in migs)))
        selection = select_visible(gpus, self._environ)
        for text in selection.notes:
            self.note(text)
        if selection.hidden_by:
            self.no_gpu_reason = f"{selection.hidden_by} hides every device"
        units: list[GpuUnit] = []
        domains: list[PowerDomain] = []
        domain_of: dict[int, int] = {}
        for target in selection.targets:
            handle, migs = handles[target.gpu]
            if target.gpu not in domain_of:
                domain_of[target.gpu] = len(domains)
                name = self._name(handle, f"GPU {target.gpu}")
                domains.append(PowerDomain(target.gpu, _gpu_uuid(gpus, target.gpu), name))
                self._domain_handles.append(handle)
                self._domain_by_address[_address(handle)] = domain_of[target.gpu]
            domain = domains[domain_of[target.gpu]]
            if target.mig is None:
                units.append(GpuUnit(target.gpu, domain.uuid, domain.name, domain_of[target.gpu]))
                self._unit_handles.append(handle)
            else:
                mig_uuid, mig_handle = migs[target.mig]
                name = self._name(mig_handle, f"{domain.name} MIG")
                units.append(
                    GpuUnit(target.gpu, mig_uuid, name, domain_of[target.gpu], target.mig, parent_uuid=domain.uuid)
                )
                self._unit_handles.append(mig_handle)
        self.units, self.domains = tuple(units), tuple(domains)
        for d in sorted({u.domain for u in units if u.mig_index is not None}):
            self.note(f"{domains[d].label} is MIG-partitioned: power and energy are for the whole GPU")

    def _mig_instances(self, index: int, handle: Any) -> list[tuple[str, Any]]:
        """(uuid, handle) of each MIG instance when MIG mode is on; [] for GPUs without MIG."""
        try:
            current, _pending = pynvml.nvmlDeviceGetMigMode(handle)
            if current != 1:
                return []
            slots = pynvml.nvmlDeviceGetMaxMigDeviceCount(handle)
        except pynvml.NVMLError:
            return []
        found = []
        for slot in range(slots):
            try:
                mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
                found.append((_text(pynvml.nvmlDeviceGetUUID(mig)), mig))
            except pynvml.NVMLError as exc:
                if exc.value not in (NOT_FOUND, NO_PERMISSION, 2):  # empty slot or not ours
                    self.note(f"GPU {index} MIG slot {slot} could not be opened: {exc}")
        return found

    def _name(self, handle: Any, fallback: str) -> str:
        try:
            return _text(pynvml.nvmlDeviceGetName(handle))
        except pynvml.NVMLError:
            return fallback

    def _register_xid_events(self) -> None:
        if not self._domain_handles:
            return
        try:
            self._event_set = pynvml.nvmlEventSetCreate()
        except pynvml.NVMLError as exc:
            self.note(f"XID events not available: {exc}")
            return
        for domain, handle in zip(self.domains, self._domain_handles, strict=True):
            try:
                pynvml.nvmlDeviceRegisterEvents(handle, XID_EVENT, self._event_set)
            except pynvml.NVMLError as exc:
                self.note(f"{domain.label}: XID events not available ({exc})")

    # ------------------------------------------------------------------ reading

    def read(self, t: float) -> tuple[tuple[UnitReading | None, ...], tuple[DomainReading | None, ...]]:
        """One reading per unit and per domain at time ``t`` (seconds since start; used in loss notes)."""
        if not self._initialised or not self.units:
            return (), ()
        units = tuple(self._read_unit(i, t) for i in range(len(self.units)))
        xids = self._drain_xids()
        domains = tuple(self._read_domain(i, t, xids.get(i, ())) for i in range(len(self.domains)))
        return units, domains

    def _call(self, kind: str, pos: int, query: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run one NVML query; None when it failed (noted), _Lost when the device is gone."""
        if (kind, pos, query) in self._disabled:
            return None
        label = self.units[pos].label if kind == "unit" else self.domains[pos].label
        try:
            return fn(*args)
        except pynvml.NVMLError as exc:
            if exc.value in LOST_CODES:
                raise _Lost(str(exc)) from None
            if exc.value in UNSUPPORTED_CODES or exc.value == NO_PERMISSION:
                self._disabled.add((kind, pos, query))
                self.note(_unsupported_note(label, query, exc.value, self.units[pos] if kind == "unit" else None))
            else:
                self._errors[(label, query, str(exc))] += 1
            return None

    def _read_unit(self, i: int, t: float) -> UnitReading | None:
        if i in self._lost_units:
            return None
        handle = self._unit_handles[i]
        try:
            memory = self._call("unit", i, "memory", self._memory, i, handle)
            util = self._call("unit", i, "utilization", pynvml.nvmlDeviceGetUtilizationRates, handle)
            procs = self._call("unit", i, "processes", pynvml.nvmlDeviceGetComputeRunningProcesses, handle)
        except _Lost as lost:
            self._lose_unit(i, t, str(lost))
            return None
        proc_mem = None
        if procs is not None:
            ours = self._owns({int(p.pid) for p in procs}) if procs else frozenset()
            proc_mem = sum(int(p.usedGpuMemory or 0) for p in procs if int(p.pid) in ours)
        return UnitReading(
            util_pct=int(util.gpu) if util is not None else None,
            mem_used=int(memory.used) if memory is not None else None,
            mem_total=int(memory.total) if memory is not None else None,
            proc_mem=proc_mem,
        )

    def _memory(self, i: int, handle: Any) -> Any:
        """Memory info v2 (used excludes driver-reserved memory), falling back to v1 on older drivers."""
        if i not in self._memory_v1:
            try:
                return pynvml.nvmlDeviceGetMemoryInfo(handle, version=pynvml.nvmlMemory_v2)
            except pynvml.NVMLError as exc:
                if exc.value not in (NOT_SUPPORTED, FUNCTION_NOT_FOUND, ARGUMENT_VERSION_MISMATCH):
                    raise
                self._memory_v1.add(i)
        return pynvml.nvmlDeviceGetMemoryInfo(handle)

    def _read_domain(self, i: int, t: float, xids: tuple[int, ...]) -> DomainReading | None:
        if i in self._lost_domains:
            return None
        h = self._domain_handles[i]
        call = self._call
        try:
            power = call("domain", i, "power", pynvml.nvmlDeviceGetPowerUsage, h)
            energy = call("domain", i, "energy", pynvml.nvmlDeviceGetTotalEnergyConsumption, h)
            temp = call("domain", i, "temperature", pynvml.nvmlDeviceGetTemperature, h, TEMPERATURE_GPU)
            clock = call("domain", i, "clock", pynvml.nvmlDeviceGetClockInfo, h, CLOCK_SM)
            throttle = call("domain", i, "throttle", self._throttle, h)
            ecc = call("domain", i, "ecc", pynvml.nvmlDeviceGetTotalEccErrors, h, ECC_UNCORRECTED, ECC_VOLATILE)
        except _Lost as lost:
            self._lose_domain(i, t, str(lost))
            return None
        return DomainReading(
            power_w=power / 1000.0 if power is not None else None,
            energy_mj=int(energy) if energy is not None else None,
            temp_c=int(temp) if temp is not None else None,
            sm_clock_mhz=int(clock) if clock is not None else None,
            throttle=int(throttle) if throttle is not None else None,
            ecc_uncorrected=int(ecc) if ecc is not None else None,
            xids=xids,
        )

    def _throttle(self, handle: Any) -> int:
        """Clock-event reasons (driver 535+), or the older throttle-reasons call."""
        if not self._throttle_legacy:
            try:
                return int(pynvml.nvmlDeviceGetCurrentClocksEventReasons(handle))
            except pynvml.NVMLError as exc:
                if exc.value != FUNCTION_NOT_FOUND:
                    raise
                self._throttle_legacy = True
        return int(pynvml.nvmlDeviceGetCurrentClocksThrottleReasons(handle))

    def _drain_xids(self) -> dict[int, tuple[int, ...]]:
        """XID events waiting in the event set, by power domain (a zero timeout never blocks)."""
        if self._event_set is None:
            return {}
        found: dict[int, list[int]] = {}
        for _ in range(64):  # bounded: a storm of events must not stall sampling
            try:
                data = pynvml.nvmlEventSetWait_v2(self._event_set, 0)
            except pynvml.NVMLError as exc:
                if exc.value != TIMEOUT:
                    self._errors[("NVML", "XID event", str(exc))] += 1
                break
            domain = self._domain_by_address.get(_address(data.device))
            if domain is not None and data.eventType == XID_EVENT:
                found.setdefault(domain, []).append(int(data.eventData))
        return {d: tuple(codes) for d, codes in found.items()}

    # ------------------------------------------------------------------ loss

    def _lose_domain(self, i: int, t: float, why: str) -> None:
        if i in self._lost_domains:
            return
        self._lost_domains.add(i)
        self.note(f"{self.domains[i].label} lost at t={t:.1f}s ({why})")
        for u, unit in enumerate(self.units):
            if unit.domain == i:
                self._lost_units.add(u)

    def _lose_unit(self, i: int, t: float, why: str) -> None:
        unit = self.units[i]
        if unit.mig_index is None:
            self._lose_domain(unit.domain, t, why)
        elif i not in self._lost_units:
            self._lost_units.add(i)
            self.note(f"{unit.label} lost at t={t:.1f}s ({why})")


def _gpu_uuid(gpus: list[PhysicalGpu], index: int) -> str:
    return next(g.uuid for g in gpus if g.index == index)


def _unsupported_note(label: str, query: str, code: int, unit: GpuUnit | None) -> str:
    what = QUERY_WHAT.get(query, query)
    if code == NO_PERMISSION:
        return f"{label}: {what} not permitted"
    if query == "energy":
        return f"{label}: energy counter not supported: integrated power"
    if query == "utilization" and unit is not None and unit.mig_index is not None:
        return f"{label}: utilisation not supported on MIG instances"
    return f"{label}: {what} not supported"
