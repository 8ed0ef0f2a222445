"""The GPU pricing block: what an hour of each GPU model, MIG slice or CPU node costs, for cost reports."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field

from blocks.loading import load_saved


class GpuPricing(Block):
    """Prices the cost report multiplies telemetry by (tasks/reporting/cost.py). Figures are per hour of wall time.

    A GPU is priced by its NVML name (exact, then case-insensitive), a MIG instance by its profile; anything
    unlisted falls back to ``default_gpu_hour_price`` (a MIG instance to its share of it, compute slices / 7).
    Work that saw no GPU is priced by node-hour.

    Example:
        ```python
        from blocks.pricing import GpuPricing
        pricing = GpuPricing.load("BLOCK_NAME")  # e.g. "on-demand"
        ```
    """

    _block_type_name = "gpuflow GPU Pricing"
    _block_type_slug = "gpuflow-gpu-pricing"

    gpu_hour_prices: dict[str, float] = Field(
        default_factory=dict,
        description='Price per GPU-hour by GPU model as NVML names it, e.g. {"NVIDIA H100 80GB HBM3": 4.0}.',
    )
    mig_hour_prices: dict[str, float] = Field(
        default_factory=dict, description='Price per hour of a MIG instance by profile, e.g. {"1g.10gb": 0.6}.'
    )
    default_gpu_hour_price: float = Field(
        default=2.5, ge=0.0, description="Price per GPU-hour for a model not listed in gpu_hour_prices."
    )
    node_hour_price: float = Field(
        default=0.2, ge=0.0, description="Price per node-hour for work that ran without a GPU."
    )
    kwh_price: float | None = Field(
        default=None,
        ge=0.0,
        description="Price per kWh of GPU energy, added on top of GPU-hours; empty: energy is not charged.",
    )
    idle_utilization_pct: float = Field(
        default=10.0,
        ge=0.0,
        le=100.0,
        description="GPU time below this SM utilisation (%) is reported as idle cost.",
    )
    currency: str = Field(default="USD", min_length=1, description="Currency of every price above, e.g. USD.")


def resolve_pricing(name: str | None) -> GpuPricing:
    """A saved block by name, or the default prices when no name is given."""
    return load_saved(GpuPricing, name) if name else GpuPricing()
