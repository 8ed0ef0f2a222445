"""What one telemetry sample holds: readings per GPU (or MIG instance), per power domain, and for the host.

A *unit* is what a workload is given: a whole GPU or one MIG instance. A *power domain* is what NVML can
measure power, energy, temperature, clocks and ECC on: always a physical GPU, shared by the MIG instances
carved from it. Keeping both apart means energy is never counted twice when two instances share a GPU.
A reading field is None when NVML could not tell (unsupported, not permitted, a transient error).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_MIG_PROFILE = re.compile(r"MIG\s+(\d+g\.\d+gb(?:\+\w+)*)", re.IGNORECASE)


def mig_profile_of(name: str) -> str:
    """The MIG profile NVML puts at the end of an instance's name ("... MIG 1g.10gb" -> "1g.10gb")."""
    found = _MIG_PROFILE.search(name)
    return found.group(1) if found else ""


@dataclass(frozen=True)
class GpuUnit:
    """A GPU or MIG instance being sampled; ``domain`` is the position of its power domain."""

    index: int  # NVML index of the physical GPU
    uuid: str
    name: str
    domain: int
    mig_index: int | None = None
    parent_uuid: str = ""  # the physical GPU's UUID for a MIG instance

    @property
    def mig_profile(self) -> str:
        return mig_profile_of(self.name) if self.mig_index is not None else ""

    @property
    def key(self) -> str:
        """Short stable id used in metric names and the series: "0", "1", "0.mig2"."""
        return f"{self.index}" if self.mig_index is None else f"{self.index}.mig{self.mig_index}"

    @property
    def label(self) -> str:
        """How messages name it: "GPU 0", "GPU 0 MIG 2 (1g.10gb)"."""
        if self.mig_index is None:
            return f"GPU {self.index}"
        return f"GPU {self.index} MIG {self.mig_index} ({self.mig_profile or self.name})"


@dataclass(frozen=True)
class PowerDomain:
    """A physical GPU whose power and energy the units on it share."""

    index: int
    uuid: str
    name: str

    @property
    def label(self) -> str:
        return f"GPU {self.index}"


@dataclass(frozen=True, slots=True)
class UnitReading:
    util_pct: int | None = None
    mem_used: int | None = None
    mem_total: int | None = None
    proc_mem: int | None = None  # GPU memory of this process tree on the unit


@dataclass(frozen=True, slots=True)
class DomainReading:
    power_w: float | None = None
    energy_mj: int | None = None  # NVML's total energy counter (millijoules since driver load)
    temp_c: int | None = None
    sm_clock_mhz: int | None = None
    throttle: int | None = None  # clocks-event (throttle) reason bitmask
    ecc_uncorrected: int | None = None  # volatile uncorrected ECC errors since driver load
    xids: tuple[int, ...] = ()  # XID error codes reported since the previous sample


@dataclass(frozen=True, slots=True)
class HostReading:
    cpu_pct: float | None = None  # whole host, % of all cores
    mem_used: int | None = None  # whole host, bytes
    proc_cpu_pct: float | None = None  # this process tree, % of one core
    proc_rss: int | None = None  # this process tree, bytes


@dataclass(frozen=True, slots=True)
class Sample:
    """One sample; a unit or domain reading is None once its GPU is lost.

    ``label`` is the segment the time *since the previous sample* belongs to (see GpuSampler.mark).
    """

    t: float  # seconds since the sampler started
    label: str
    units: tuple[UnitReading | None, ...] = ()
    domains: tuple[DomainReading | None, ...] = ()
    host: HostReading = HostReading()
