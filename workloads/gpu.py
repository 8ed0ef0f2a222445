"""What GPUs this process can see, through NVML (pynvml), without ever failing on a machine without one.

Used by the stages to record "which GPU ran this" until full telemetry lands, and by workloads in pods.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field


@dataclass(frozen=True)
class GpuInventory:
    """GPUs visible to this process; ``note`` says why the list is empty when it is."""

    names: list[str] = field(default_factory=list)
    driver_version: str = ""
    note: str = ""

    @property
    def count(self) -> int:
        return len(self.names)

    def describe(self) -> str:
        if not self.names:
            return f"no GPU ({self.note})" if self.note else "no GPU"
        return f"{self.count} x {', '.join(sorted(set(self.names)))}"

    def as_tags(self) -> dict[str, str]:
        return {
            "gpuflow.gpu.count": str(self.count),
            "gpuflow.gpu.names": ", ".join(self.names) if self.names else "none",
            "gpuflow.gpu.summary": self.describe(),
        }


def _visible_indices(total: int) -> list[int]:
    """Indices allowed by CUDA_VISIBLE_DEVICES / NVIDIA_VISIBLE_DEVICES (integers only; UUIDs keep all)."""
    for var in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"):
        value = os.environ.get(var)
        if value is None:
            continue
        value = value.strip()
        if value in ("", "none", "void"):
            return []
        if value == "all":
            return list(range(total))
        parts = [p.strip() for p in value.split(",") if p.strip()]
        if all(p.isdigit() for p in parts):
            return [int(p) for p in parts if int(p) < total]
        return list(range(total))
    return list(range(total))


def inventory() -> GpuInventory:
    """Ask NVML for the visible GPUs; any NVML failure becomes an empty inventory with a note."""
    try:
        import pynvml
    except ImportError:
        return GpuInventory(note="pynvml is not installed")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return GpuInventory(note=f"NVML unavailable: {exc}")
    try:
        total = pynvml.nvmlDeviceGetCount()
        names = []
        for index in _visible_indices(total):
            name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(index))
            names.append(name.decode() if isinstance(name, bytes) else str(name))
        driver = pynvml.nvmlSystemGetDriverVersion()
        driver_text = driver.decode() if isinstance(driver, bytes) else str(driver)
        return GpuInventory(names=names, driver_version=driver_text, note="" if names else "none visible")
    except pynvml.NVMLError as exc:
        return GpuInventory(note=f"NVML error: {exc}")
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass
