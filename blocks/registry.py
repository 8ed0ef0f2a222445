"""Every gpuflow block type, registered by one explicit call rather than by the side effects of imports.

Prefect finds a saved block's class by its type slug only once that class has been imported; a resolver that
may load any compute target (``resolve_compute``) and ``gpuflow bootstrap`` (which registers the types with the
API) ask :func:`block_types` for them. Nothing in blocks/ imports this module, so it may import them all.
"""

from __future__ import annotations

import contextlib
import inspect

from prefect.blocks.core import Block

from blocks.compute import ComputeTarget, LocalProcess
from blocks.loading import load_saved, saved_names
from tasks.core.errors import ConfigurationError


def local_block_types() -> list[type[Block]]:
    """The block types every installation uses (``gpuflow bootstrap`` saves a default of each)."""
    from blocks.canary_policy import CanaryPolicy
    from blocks.data_store import DataStore
    from blocks.dataset_spec import DatasetSpecBlock
    from blocks.mlflow_tracking import MLflowTracking
    from blocks.pricing import GpuPricing
    from blocks.quality_gate import QualityGate
    from blocks.trainer_spec import TrainerSpecBlock

    return [
        DataStore, MLflowTracking, QualityGate, CanaryPolicy, GpuPricing, LocalProcess, DatasetSpecBlock,
        TrainerSpecBlock,
    ]  # fmt: skip


def kubernetes_block_types() -> list[type[Block]]:
    """The Kubernetes block types; imported only when asked (prefect-kubernetes takes about a second)."""
    from blocks.kubernetes import KubernetesGPUJob
    from blocks.kubernetes_serving import KubernetesServing

    return [KubernetesGPUJob, KubernetesServing]


def block_types() -> list[type[Block]]:
    """Every gpuflow block type, imported (so registered with Prefect's type lookup) by this call."""
    return [*local_block_types(), *kubernetes_block_types()]


def compute_targets() -> list[type[ComputeTarget]]:
    """The concrete compute-target types: gpuflow's own (:func:`block_types`), then any other subclass imported."""
    found = [cls for cls in block_types() if issubclass(cls, ComputeTarget) and not inspect.isabstract(cls)]
    pending: list[type[ComputeTarget]] = list(ComputeTarget.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls not in found and not inspect.isabstract(cls):
            found.append(cls)
    return found


def resolve_compute(name: str | None) -> ComputeTarget:
    """A saved compute block (``name`` or ``block-type-slug/name``), or ``LocalProcess()`` when no name is given."""
    if not name:
        return LocalProcess()
    targets = compute_targets()
    if "/" in name:
        slug = name.split("/", 1)[0]
        cls = next((c for c in targets if c.get_block_type_slug() == slug), None)
        if cls is None:
            kinds = ", ".join(sorted(c.get_block_type_slug() for c in targets))
            raise ConfigurationError(f"no compute block type {slug!r} (compute block types: {kinds})")
        return load_saved(cls, name)
    for cls in targets:
        with contextlib.suppress(ValueError):
            loaded = cls.load(name)
            if isinstance(loaded, ComputeTarget):
                return loaded
    saved = "; ".join(f"{c.get_block_type_slug()}: {', '.join(saved_names(c)) or 'none'}" for c in targets)
    raise ConfigurationError(f"no compute block named {name!r} (saved compute blocks: {saved})")
