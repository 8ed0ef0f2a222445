"""Cost per stage and per run from telemetry and a GpuPricing block; figures worked out by hand per row."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from blocks.pricing import GpuPricing
from tasks.core.errors import ConfigurationError
from tasks.reporting.cost import CostBreakdown, gpu_hour_price, run_cost, stage_cost
from workloads.telemetry import DeviceSummary, TelemetrySummary

H100 = "NVIDIA H100 80GB HBM3"
A100 = "NVIDIA A100-SXM4-80GB"
PRICES = GpuPricing(
    gpu_hour_prices={H100: 4.0, A100: 2.1},
    mig_hour_prices={"1g.10gb": 0.6},
    default_gpu_hour_price=2.5,
    node_hour_price=0.2,
)


def device(name: str, seconds: float, util_seconds: tuple[tuple[int, float], ...] = (), mig: str = "") -> DeviceSummary:
    return DeviceSummary(
        index=0,
        uuid="GPU-x",
        name=f"{name} MIG {mig}" if mig else name,
        mig_index=0 if mig else None,
        mig_profile=mig,
        seconds=seconds,
        util_seconds=util_seconds or (((50, seconds),) if not mig else ()),
    )


def telemetry(devices: list[DeviceSummary], duration: float, energy_j: float | None = None) -> TelemetrySummary:
    return TelemetrySummary(
        label="train",
        gpu_count=len(devices),
        gpu_names=tuple(d.name for d in devices),
        gpu_seconds=sum(d.seconds for d in devices),
        util_mean_pct=None,
        util_p95_pct=None,
        mem_peak_bytes=None,
        mem_total_bytes=None,
        proc_mem_peak_bytes=None,
        power_mean_w=None,
        energy_j=energy_j,
        energy_source="counter" if energy_j is not None else "none",
        samples=10,
        interval_s=1.0,
        duration_s=duration,
        devices=tuple(devices),
    )


@dataclass(frozen=True)
class Row:
    name: str
    summary: TelemetrySummary
    pricing: GpuPricing
    gpu_hours: float
    compute: float
    energy: float
    idle: float
    total: float
    basis: str = "gpu-hours"


ROWS = [
    Row(
        "one H100 for half an hour, a third of it idle",
        telemetry([device(H100, 1800, ((5, 600.0), (80, 1200.0)))], 1800, energy_j=1.8e6),
        PRICES,
        gpu_hours=0.5, compute=0.5 * 4.0, energy=0.0, idle=600 / 3600 * 4.0, total=2.0,
    ),
    Row(
        "energy priced: 1.8 MJ = 0.5 kWh at 0.30",
        telemetry([device(H100, 1800, ((5, 600.0), (80, 1200.0)))], 1800, energy_j=1.8e6),
        PRICES.model_copy(update={"kwh_price": 0.3}),
        gpu_hours=0.5, compute=2.0, energy=0.15, idle=4.0 / 6, total=2.15,
    ),
    Row(
        "idle threshold 90 %: everything under it is idle",
        telemetry([device(H100, 1800, ((5, 600.0), (80, 1200.0)))], 1800),
        PRICES.model_copy(update={"idle_utilization_pct": 90.0}),
        gpu_hours=0.5, compute=2.0, energy=0.0, idle=2.0, total=2.0,
    ),
    Row(
        "an H100 and an A100 for an hour each",
        telemetry([device(H100, 3600), device(A100, 3600)], 3600),
        PRICES,
        gpu_hours=2.0, compute=4.0 + 2.1, energy=0.0, idle=0.0, total=6.1,
    ),
    Row(
        "an unlisted model at the default price",
        telemetry([device("Tesla T4", 3600)], 3600),
        PRICES,
        gpu_hours=1.0, compute=2.5, energy=0.0, idle=0.0, total=2.5,
    ),
    Row(
        "a priced MIG profile for two hours",
        telemetry([device(H100, 7200, mig="1g.10gb")], 7200),
        PRICES,
        gpu_hours=2.0, compute=1.2, energy=0.0, idle=0.0, total=1.2,
    ),
    Row(
        "an unpriced MIG profile: 3 of 7 slices of its GPU's price",
        telemetry([device(A100, 3600, mig="3g.40gb")], 3600),
        PRICES,
        gpu_hours=1.0, compute=2.1 * 3 / 7, energy=0.0, idle=0.0, total=2.1 * 3 / 7,
    ),
    Row(
        "no GPU: 1.5 node-hours at 0.20",
        telemetry([], 5400),
        PRICES,
        gpu_hours=0.0, compute=0.3, energy=0.0, idle=0.0, total=0.3, basis="node-hours (no GPU)",
    ),
]  # fmt: skip


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_stage_cost(row: Row) -> None:
    cost = stage_cost(row.summary, row.pricing)

    assert cost.gpu_hours == pytest.approx(row.gpu_hours)
    assert cost.node_hours == pytest.approx(row.summary.duration_s / 3600)
    assert cost.compute_cost == pytest.approx(row.compute)
    assert cost.energy_cost == pytest.approx(row.energy)
    assert cost.idle_cost == pytest.approx(row.idle)
    assert cost.total == pytest.approx(row.total)
    assert cost.basis == row.basis and cost.currency == "USD"


@pytest.mark.parametrize(
    ("name", "profile", "price", "source"),
    [
        (H100, "", 4.0, f"gpu_hour_prices[{H100!r}]"),
        ("nvidia h100 80gb hbm3", "", 4.0, "gpu_hour_prices['nvidia h100 80gb hbm3']"),
        ("Tesla T4", "", 2.5, "default_gpu_hour_price"),
        (f"{H100} MIG 1g.10gb", "1g.10gb", 0.6, "mig_hour_prices['1g.10gb']"),
        (f"{A100} MIG 2g.20gb", "2g.20gb", 2.1 * 2 / 7, f"gpu_hour_prices[{A100!r}] x 2/7"),
        ("Unknown GPU MIG 7g.80gb", "7g.80gb", 2.5, "default_gpu_hour_price x 7/7"),
    ],
)
def test_gpu_hour_price_says_where_the_price_came_from(name: str, profile: str, price: float, source: str) -> None:
    assert gpu_hour_price(PRICES, name, profile) == (pytest.approx(price), source)


def test_defaulted_prices_and_unknown_idle_time_are_noted() -> None:
    cost = stage_cost(telemetry([device("Tesla T4", 60), device(H100, 60, mig="1g.10gb")], 60), PRICES)

    assert "no price for 'Tesla T4': priced by default_gpu_hour_price" in cost.notes
    assert f"idle time of '{H100} MIG 1g.10gb' unknown: utilisation not reported" in cost.notes


def test_energy_priced_but_not_measured_is_noted_not_guessed() -> None:
    cost = stage_cost(telemetry([device(H100, 3600)], 3600), PRICES.model_copy(update={"kwh_price": 0.3}))

    assert cost.energy_cost == 0.0 and cost.energy_kwh is None
    assert "energy not measured: energy cost left out" in cost.notes


def test_run_cost_sums_the_stages() -> None:
    prepare = stage_cost(telemetry([], 5400), PRICES)  # 0.30 in node-hours
    train = stage_cost(telemetry([device(H100, 1800, ((5, 600.0), (80, 1200.0)))], 1800, 1.8e6), PRICES)
    run = run_cost({"prepare": prepare, "train": train})

    assert run.stages["train"] is train
    assert run.total.total == pytest.approx(2.3)
    assert run.total.gpu_hours == pytest.approx(0.5) and run.total.node_hours == pytest.approx(2.0)
    assert run.total.energy_kwh == pytest.approx(0.5)
    assert run.total.idle_cost == pytest.approx(4.0 / 6)
    assert run.total.basis == "mixed"


def test_run_cost_refuses_mixed_currencies() -> None:
    usd = stage_cost(telemetry([], 3600), PRICES)
    eur = stage_cost(telemetry([], 3600), PRICES.model_copy(update={"currency": "EUR"}))

    with pytest.raises(ConfigurationError, match=r"several currencies \['EUR', 'USD'\]"):
        run_cost({"a": usd, "b": eur})


def test_cost_results_are_frozen_and_serialisable() -> None:
    cost = stage_cost(telemetry([device(H100, 3600)], 3600), PRICES)

    assert CostBreakdown.model_validate_json(cost.model_dump_json()) == cost
    with pytest.raises(ValueError, match="frozen"):
        cost.total = 0.0
