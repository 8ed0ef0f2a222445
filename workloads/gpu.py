"""What GPUs this process can see, through NVML (pynvml), without ever failing on a machine without one.

The stages tag their MLflow runs with it (``gpuflow.gpu.*``). It asks the telemetry's NVML reader, so the GPUs it
names are exactly the ones the sampler measures and cost prices: ``NVIDIA_VISIBLE_DEVICES`` and
``CUDA_VISIBLE_DEVICES`` with CUDA's rules (indices, ``GPU-``/``MIG-`` UUIDs), MIG instances as units of their own.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from workloads.tags import TAG_GPU_COUNT, TAG_GPU_NAMES, TAG_GPU_SUMMARY
from workloads.telemetry.nvml import NvmlReader


@dataclass(frozen=True)
class GpuInventory:
    """GPUs (or MIG instances) visible to this process; ``note`` says why the list is empty when it is."""

    names: list[str] = field(default_factory=list)
    driver_version: str = ""
    note: str = ""
    uuids: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.names)

    def describe(self) -> str:
        if not self.names:
            return f"no GPU ({self.note})" if self.note else "no GPU"
        return f"{self.count} x {', '.join(sorted(set(self.names)))}"

    def as_tags(self) -> dict[str, str]:
        return {
            TAG_GPU_COUNT: str(self.count),
            TAG_GPU_NAMES: ", ".join(self.names) if self.names else "none",
            TAG_GPU_SUMMARY: self.describe(),
        }


def inventory(environ: Mapping[str, str] | None = None) -> GpuInventory:
    """Ask NVML for the visible GPUs; any NVML failure becomes an empty inventory with a note."""
    reader = NvmlReader(os.environ if environ is None else environ, lambda pids: ())
    try:
        reader.open()
        units = reader.units
        return GpuInventory(
            names=[u.name for u in units],
            driver_version=reader.driver_version,
            note="" if units else (reader.no_gpu_reason or "none visible"),
            uuids=[u.uuid for u in units],
        )
    except Exception as exc:  # the reader notes NVML trouble itself; anything else must not fail a stage either
        return GpuInventory(note=f"NVML error: {exc}")
    finally:
        reader.close()
