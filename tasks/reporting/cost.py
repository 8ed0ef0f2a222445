"""What a stage and a run cost: telemetry (GPU-seconds per device, energy) times the prices of a GpuPricing block.

    compute cost = sum over GPUs and MIG instances of hours x price per hour      (GPU work)
                 = node-hours x node price                                        (no GPU seen)
    energy cost  = GPU energy in kWh x price per kWh                              (only when kwh_price is set)
    total        = compute cost + energy cost
    idle cost    = the part of compute cost spent below the idle utilisation threshold (included in total)

Pure functions: no Prefect task or I/O here, so the report flow and tests call them directly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict

from blocks.pricing import GpuPricing
from tasks.core.errors import ConfigurationError
from workloads.telemetry.summary import DeviceSummary, TelemetrySummary

SECONDS_PER_HOUR = 3600.0
JOULES_PER_KWH = 3.6e6
MIG_COMPUTE_SLICES = 7  # A100 / H100 / H200; price A30 profiles explicitly


class CostLine(BaseModel):
    """One GPU or MIG instance (or the node, without a GPU) and what its time cost."""

    model_config = ConfigDict(frozen=True)

    device: str
    mig_profile: str = ""
    hours: float
    hour_price: float
    price_source: str  # where hour_price came from, so a defaulted price is visible
    cost: float
    idle_hours: float | None = None  # None: utilisation not reported (MIG instances)
    idle_cost: float | None = None


class CostBreakdown(BaseModel):
    """Cost of one stage, or of a whole run when summed by run_cost."""

    model_config = ConfigDict(frozen=True)

    label: str | None = None
    gpu_hours: float
    node_hours: float
    energy_kwh: float | None
    compute_cost: float
    energy_cost: float
    idle_cost: float
    idle_gpu_hours: float
    total: float
    currency: str
    basis: str  # "gpu-hours", "node-hours (no GPU)", or "mixed" for a run with both kinds of stage
    lines: tuple[CostLine, ...] = ()
    notes: tuple[str, ...] = ()


class RunCost(BaseModel):
    model_config = ConfigDict(frozen=True)

    stages: dict[str, CostBreakdown]
    total: CostBreakdown


def _model_of_mig(name: str) -> str:
    """ "NVIDIA A100-SXM4-40GB MIG 3g.20gb" -> "NVIDIA A100-SXM4-40GB"."""
    return re.split(r"\s+MIG\b", name, maxsplit=1)[0].strip()


def _lookup(prices: Mapping[str, float], name: str) -> float | None:
    if name in prices:
        return prices[name]
    folded = {k.casefold(): v for k, v in prices.items()}
    return folded.get(name.casefold())


def gpu_hour_price(pricing: GpuPricing, name: str, mig_profile: str = "") -> tuple[float, str]:
    """Price per hour of a GPU (by NVML name) or MIG instance (by profile), and where the price came from."""
    if mig_profile:
        price = _lookup(pricing.mig_hour_prices, mig_profile)
        if price is not None:
            return price, f"mig_hour_prices[{mig_profile!r}]"
        slices = re.match(r"(\d+)g\.", mig_profile)
        share = int(slices.group(1)) / MIG_COMPUTE_SLICES if slices else 1.0
        model = _model_of_mig(name)
        full = _lookup(pricing.gpu_hour_prices, model)
        base, source = (full, f"gpu_hour_prices[{model!r}]") if full is not None else (
            pricing.default_gpu_hour_price, "default_gpu_hour_price"
        )  # fmt: skip
        return base * share, f"{source} x {slices.group(1) if slices else MIG_COMPUTE_SLICES}/{MIG_COMPUTE_SLICES}"
    price = _lookup(pricing.gpu_hour_prices, name)
    if price is not None:
        return price, f"gpu_hour_prices[{name!r}]"
    return pricing.default_gpu_hour_price, "default_gpu_hour_price"


def _device_line(device: DeviceSummary, pricing: GpuPricing) -> CostLine:
    price, source = gpu_hour_price(pricing, device.name, device.mig_profile)
    hours = device.seconds / SECONDS_PER_HOUR
    idle_s = device.idle_seconds(pricing.idle_utilization_pct)
    idle_h = idle_s / SECONDS_PER_HOUR if idle_s is not None else None
    return CostLine(
        device=device.name,
        mig_profile=device.mig_profile,
        hours=hours,
        hour_price=price,
        price_source=source,
        cost=hours * price,
        idle_hours=idle_h,
        idle_cost=idle_h * price if idle_h is not None else None,
    )


def stage_cost(summary: TelemetrySummary, pricing: GpuPricing) -> CostBreakdown:
    """Cost of one telemetry summary (a stage, an epoch, a run) at these prices."""
    node_hours = summary.duration_s / SECONDS_PER_HOUR
    energy_kwh = summary.energy_j / JOULES_PER_KWH if summary.energy_j is not None else None
    notes: list[str] = []
    if summary.has_gpu:
        lines = tuple(_device_line(d, pricing) for d in summary.devices)
        basis = "gpu-hours"
        compute = sum(line.cost for line in lines)
        for line in lines:
            if line.price_source.startswith("default"):
                notes.append(f"no price for {line.device!r}: priced by {line.price_source}")
            if line.idle_hours is None:
                notes.append(f"idle time of {line.device!r} unknown: utilisation not reported")
    else:
        lines = (
            CostLine(
                device="node (no GPU)",
                hours=node_hours,
                hour_price=pricing.node_hour_price,
                price_source="node_hour_price",
                cost=node_hours * pricing.node_hour_price,
            ),
        )
        basis = "node-hours (no GPU)"
        compute = lines[0].cost
    energy_cost = 0.0
    if pricing.kwh_price is not None:
        if energy_kwh is not None:
            energy_cost = energy_kwh * pricing.kwh_price
        elif summary.has_gpu:
            notes.append("energy not measured: energy cost left out")
    return CostBreakdown(
        label=summary.label,
        gpu_hours=summary.gpu_seconds / SECONDS_PER_HOUR,
        node_hours=node_hours,
        energy_kwh=energy_kwh,
        compute_cost=compute,
        energy_cost=energy_cost,
        idle_cost=sum(line.idle_cost or 0.0 for line in lines),
        idle_gpu_hours=sum(line.idle_hours or 0.0 for line in lines),
        total=compute + energy_cost,
        currency=pricing.currency,
        basis=basis,
        lines=lines,
        notes=tuple(dict.fromkeys(notes)),
    )


def run_cost(stages: Mapping[str, CostBreakdown]) -> RunCost:
    """Per-stage costs and their sum; every stage must be priced in the same currency."""
    currencies = {c.currency for c in stages.values()}
    if len(currencies) > 1:
        raise ConfigurationError(f"stage costs are in several currencies {sorted(currencies)}; expected one")
    parts = list(stages.values())
    energies = [c.energy_kwh for c in parts if c.energy_kwh is not None]
    bases = {c.basis for c in parts}
    total = CostBreakdown(
        label=None,
        gpu_hours=sum(c.gpu_hours for c in parts),
        node_hours=sum(c.node_hours for c in parts),
        energy_kwh=sum(energies) if energies else None,
        compute_cost=sum(c.compute_cost for c in parts),
        energy_cost=sum(c.energy_cost for c in parts),
        idle_cost=sum(c.idle_cost for c in parts),
        idle_gpu_hours=sum(c.idle_gpu_hours for c in parts),
        total=sum(c.total for c in parts),
        currency=currencies.pop() if currencies else GpuPricing().currency,
        basis=bases.pop() if len(bases) == 1 else ("mixed" if bases else "none"),
        lines=tuple(line for c in parts for line in c.lines),
        notes=tuple(dict.fromkeys(n for c in parts for n in c.notes)),
    )
    return RunCost(stages=dict(stages), total=total)
