"""Which GPUs (or MIG instances) this process may use, from NVIDIA_VISIBLE_DEVICES and CUDA_VISIBLE_DEVICES.

Telemetry must account for exactly the devices CUDA hands to the workload, or a pod sharing a node would be
billed for its neighbours' GPUs. CUDA's rules, followed here:

- the list is read left to right and stops at the first entry that names no device;
- an entry is an index into the devices CUDA enumerates (a MIG-enabled GPU enumerates as its MIG instances),
  a ``GPU-`` UUID (or a unique prefix of one), or a ``MIG-`` UUID;
- an empty value hides every device.

Indices follow NVML's PCI-bus order, CUDA's own with CUDA_DEVICE_ORDER=PCI_BUS_ID (UUIDs are exact everywhere).
NVIDIA_VISIBLE_DEVICES is applied first (in a container the runtime has already applied it, so indices that
do not exist are taken as host indices and ignored); CUDA_VISIBLE_DEVICES then indexes what is left.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class PhysicalGpu:
    """A GPU as NVML enumerates it; ``mig_uuids`` lists its MIG instances when MIG mode is on."""

    index: int
    uuid: str
    mig_uuids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Target:
    """One device CUDA would show: a whole GPU (``mig`` None) or one MIG instance (its position)."""

    gpu: int
    mig: int | None = None


@dataclass(frozen=True)
class Selection:
    targets: tuple[Target, ...]
    notes: tuple[str, ...] = ()
    hidden_by: str = ""  # the variable that hid every device, when one did


def cuda_view(gpus: Sequence[PhysicalGpu]) -> list[Target]:
    """Devices in CUDA's enumeration order: MIG-enabled GPUs contribute their instances."""
    view: list[Target] = []
    for gpu in gpus:
        if gpu.mig_uuids:
            view.extend(Target(gpu.index, j) for j in range(len(gpu.mig_uuids)))
        else:
            view.append(Target(gpu.index))
    return view


def _uuid_of(target: Target, by_index: Mapping[int, PhysicalGpu]) -> str:
    gpu = by_index[target.gpu]
    return gpu.uuid if target.mig is None else gpu.mig_uuids[target.mig]


def _match_uuid(token: str, view: Sequence[Target], by_index: Mapping[int, PhysicalGpu]) -> list[Target]:
    """Targets a GPU-/MIG- UUID (or unique prefix) names; a GPU UUID of a MIG-enabled GPU names all its instances."""
    if token.startswith("MIG-"):
        hits = [t for t in view if t.mig is not None and _uuid_of(t, by_index).startswith(token)]
        return hits if len(hits) == 1 else []
    gpus = [g for g in by_index.values() if g.uuid.startswith(token)]
    if len(gpus) != 1:
        return []
    return [t for t in view if t.gpu == gpus[0].index]


def _apply(
    value: str, var: str, view: list[Target], by_index: Mapping[int, PhysicalGpu], *, host_indices: bool
) -> tuple[list[Target], list[str]]:
    value = value.strip()
    if var == "NVIDIA_VISIBLE_DEVICES" and value == "all":
        return view, []
    if value in ("", "none", "void", "NoDevFiles"):
        return [], []
    tokens = [t.strip() for t in value.split(",")]
    if host_indices and all(t.isdigit() for t in tokens) and any(int(t) >= len(view) for t in tokens):
        return view, []  # host indices inside a container: the runtime already chose these devices
    chosen: list[Target] = []
    notes: list[str] = []
    for token in tokens:
        if token.isdigit() and int(token) < len(view):
            hits = [view[int(token)]]
        elif token.startswith(("GPU-", "MIG-")) and not token.startswith("MIG-GPU-"):
            hits = _match_uuid(token, view, by_index)
        else:
            hits = []
        if not hits:
            notes.append(f"{var} entry {token!r} names no visible device: it and the entries after it are ignored")
            break
        chosen.extend(t for t in hits if t not in chosen)
    return chosen, notes


def select_visible(gpus: Sequence[PhysicalGpu], environ: Mapping[str, str]) -> Selection:
    """The targets this process may use, with notes on entries that matched nothing."""
    by_index = {g.index: g for g in gpus}
    view = cuda_view(gpus)
    notes: list[str] = []
    for var in ("NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES"):
        if var not in environ:
            continue
        before = len(view)
        view, var_notes = _apply(environ[var], var, view, by_index, host_indices=var == "NVIDIA_VISIBLE_DEVICES")
        notes += var_notes
        if before and not view:
            return Selection((), tuple(notes), hidden_by=f"{var}={environ[var]!r}")
    return Selection(tuple(view), tuple(notes))
