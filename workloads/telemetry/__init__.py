"""GPU and host telemetry for workloads and stages: NVML sampling, segment summaries, time to useful work.

No Prefect or MLflow import anywhere in this package: workloads run it inside pods. See docs/telemetry.md
for metric names, units and what is reported when there is no GPU.
"""

from workloads.telemetry.accumulator import Accumulator
from workloads.telemetry.milestones import DATA_LOADED, FIRST_STEP, MODEL_LOADED, WARMED_UP, Milestones
from workloads.telemetry.readings import DomainReading, GpuUnit, HostReading, PowerDomain, Sample, UnitReading
from workloads.telemetry.sampler import GpuSampler
from workloads.telemetry.series import read_series
from workloads.telemetry.summary import DeviceSummary, TelemetrySummary, percentile

__all__ = [
    "DATA_LOADED",
    "FIRST_STEP",
    "MODEL_LOADED",
    "WARMED_UP",
    "Accumulator",
    "DeviceSummary",
    "DomainReading",
    "GpuSampler",
    "GpuUnit",
    "HostReading",
    "Milestones",
    "PowerDomain",
    "Sample",
    "TelemetrySummary",
    "UnitReading",
    "percentile",
    "read_series",
]
