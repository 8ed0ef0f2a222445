"""GPU telemetry per stage on the Prefect side: sample a stage's own work, log it, show it, price it.

Each stage's MLflow run gets the same things, whoever measured them:

- metrics ``gpu.<DCGM name>`` and ``gpu.gpuflow_*`` (docs/telemetry.md), the stage's whole work;
- tags ``gpuflow.telemetry`` (one line) and ``gpuflow.telemetry.missing`` (what could not be measured);
- artifacts ``telemetry/summary.json`` (``TelemetrySummary.as_dict`` under ``run``, segments, milestones)
  and ``telemetry/series.csv.gz`` (the raw samples);
- a Prefect table artifact ``telemetry-<stage>`` on the flow run.

prepare and evaluate do their work in the flow's process, so :func:`stage_telemetry` samples around it. The
train stage's work happens in the trainer (a subprocess or a pod), which samples itself; sampling again in the
flow would count the same GPU twice, so :func:`train_telemetry` reads the trainer's ``summary.json`` instead.

:func:`pipeline_gpu_and_cost` turns the stages' summaries into the ``gpu`` and ``cost`` objects of
``gpuflow run --json``. Telemetry never fails a stage: trouble logging it is a warning.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from blocks.mlflow_tracking import MLflowTracking
from blocks.pricing import GpuPricing
from tasks.reporting.cost import CostBreakdown, run_cost, stage_cost
from tasks.tracking.runs import client_for
from workloads.tags import TAG_TELEMETRY, TAG_TELEMETRY_MISSING
from workloads.telemetry import GpuSampler, TelemetrySummary
from workloads.trainer.telemetry import RUN_PREFIX, SERIES_ARTIFACT, SUMMARY_ARTIFACT, summary_document

if TYPE_CHECKING:
    from mlflow import MlflowClient  # clients come from tasks.tracking.runs.client_for

MAX_TAG_CHARS = 5000  # MLflow allows 8000; keep room
GIB = 2**30


def _logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


def empty_summary(label: str | None, reason: str) -> TelemetrySummary:
    """A summary of nothing measured, saying why (a stage whose telemetry could not be read)."""
    return TelemetrySummary(
        label=label,
        gpu_count=0,
        gpu_names=(),
        gpu_seconds=0.0,
        util_mean_pct=None,
        util_p95_pct=None,
        mem_peak_bytes=None,
        mem_total_bytes=None,
        proc_mem_peak_bytes=None,
        power_mean_w=None,
        energy_j=None,
        energy_source="none",
        samples=0,
        interval_s=0.0,
        duration_s=0.0,
        missing=(reason,),
    )


# --------------------------------------------------------------------------------------------- recording


@dataclass
class StageTelemetry:
    """What :func:`stage_telemetry` yields; ``summary`` is filled in when the block ends."""

    stage: str
    summary: TelemetrySummary | None = None
    segments: dict[str, TelemetrySummary] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """``TelemetrySummary.as_dict()`` of the stage (empty before the block ended)."""
        return self.summary.as_dict() if self.summary is not None else {}


@contextmanager
def stage_telemetry(
    tracking: MLflowTracking, run_id: str, stage: str, interval: float = 1.0
) -> Iterator[StageTelemetry]:
    """Sample the GPUs (and host) while the block runs and record it on the stage's run, even if the block fails.

    Use inside the stage's ``stage_run`` so the figures land before the run is closed::

        with stage_run(tracking, "evaluate") as run_id, stage_telemetry(tracking, run_id, "evaluate") as t:
            ...work...
        t.as_dict()
    """
    handle = StageTelemetry(stage)
    sampler = GpuSampler(interval, label=stage)
    sampler.start()
    try:
        yield handle
    finally:
        sampler.stop()
        handle.summary = sampler.summary()
        handle.segments = sampler.summaries()
        document = summary_document(handle.summary, handle.segments, stage=stage)
        series = sampler.series_bytes()
        record_stage_telemetry(tracking, run_id, stage, handle.summary, document=document, series=series)


def record_stage_telemetry(
    tracking: MLflowTracking,
    run_id: str,
    stage: str,
    summary: TelemetrySummary,
    *,
    document: dict[str, Any] | None = None,
    series: bytes | None = None,
    metrics: bool = True,
) -> None:
    """Metrics, tags and artifacts on the stage's run plus the Prefect table; trouble is logged, never raised."""
    logger = _logger()
    try:
        client = client_for(tracking)
        _log_summary(client, run_id, summary, metrics=metrics)
        if document is not None:
            client.log_dict(run_id, document, SUMMARY_ARTIFACT)
        if series is not None:
            _log_bytes(client, run_id, series, SERIES_ARTIFACT)
    except Exception as exc:
        logger.warning("could not log %s telemetry to MLflow run %s: %s: %s", stage, run_id, type(exc).__name__, exc)
    try:
        publish_telemetry_table(stage, summary)
    except Exception as exc:
        logger.warning("could not publish the telemetry-%s artifact: %s: %s", stage, type(exc).__name__, exc)
    logger.info("%s telemetry: %s", stage, summary.describe())


def _log_summary(client: MlflowClient, run_id: str, summary: TelemetrySummary, *, metrics: bool) -> None:
    import time

    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    tags = [RunTag(TAG_TELEMETRY, summary.describe()[:MAX_TAG_CHARS])]
    if summary.missing:
        tags.append(RunTag(TAG_TELEMETRY_MISSING, "; ".join(summary.missing)[:MAX_TAG_CHARS]))
    values = summary.as_metrics(RUN_PREFIX) if metrics else {}
    client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in values.items()], tags=tags)


def _log_bytes(client: MlflowClient, run_id: str, data: bytes, artifact_file: str) -> None:
    folder, _, name = artifact_file.rpartition("/")
    with tempfile.TemporaryDirectory(prefix="gpuflow-telemetry-") as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        client.log_artifact(run_id, str(path), artifact_path=folder or None)


def read_summary_document(client: MlflowClient, run_id: str) -> dict[str, Any] | None:
    """A run's ``telemetry/summary.json``, or None when it has none."""
    with tempfile.TemporaryDirectory(prefix="gpuflow-telemetry-") as tmp:
        try:
            path = client.download_artifacts(run_id, SUMMARY_ARTIFACT, tmp)
        except Exception:  # MLflow raises several types for "no such artifact"
            return None
        data = json.loads(Path(path).read_text())
    return data if isinstance(data, dict) else None


def read_series(client: MlflowClient, run_id: str) -> bytes | None:
    """A run's ``telemetry/series.csv.gz`` bytes, or None when it has none."""
    with tempfile.TemporaryDirectory(prefix="gpuflow-telemetry-") as tmp:
        try:
            path = client.download_artifacts(run_id, SERIES_ARTIFACT, tmp)
        except Exception:
            return None
        return Path(path).read_bytes()


def summary_from_document(document: Mapping[str, Any] | None, label: str | None, missing: str) -> TelemetrySummary:
    """The whole-run summary of a ``summary.json`` document, or an empty one saying ``missing``."""
    if not document or not isinstance(document.get("run"), dict):
        return empty_summary(label, missing)
    try:
        return TelemetrySummary.from_dict(document["run"])
    except (TypeError, ValueError, KeyError) as exc:
        return empty_summary(label, f"{missing}: unreadable summary ({exc})")


def train_telemetry(tracking: MLflowTracking, run_id: str) -> TelemetrySummary:
    """The trainer's own summary (its ``telemetry/summary.json``), tagged on the run and shown in Prefect.

    The trainer already logged its ``gpu.*`` metrics and series; only tags and the Prefect table are added.
    """
    document = read_summary_document(client_for(tracking), run_id)
    summary = summary_from_document(document, None, "the trainer wrote no telemetry/summary.json")
    record_stage_telemetry(tracking, run_id, "train", summary, metrics=False)
    return summary


read_train_telemetry = task(name="read-train-telemetry", cache_policy=NO_CACHE)(train_telemetry)


# --------------------------------------------------------------------------------------------- Prefect table


def _fmt(value: float | None, unit: str, digits: int = 1) -> str | None:
    return None if value is None else f"{value:.{digits}f} {unit}".rstrip()


def telemetry_rows(summary: TelemetrySummary) -> list[dict[str, str]]:
    """The summary as ``figure``/``value`` rows for a Prefect table; unknown figures are left out."""
    gpus = f"{summary.gpu_count} x {', '.join(sorted(set(summary.gpu_names)))}" if summary.has_gpu else "none (no GPU)"
    mem = summary.mem_peak_bytes
    rows: list[tuple[str, str | None]] = [
        ("GPUs", gpus),
        ("GPU-seconds", _fmt(summary.gpu_seconds, "s")),
        ("SM utilisation mean", _fmt(summary.util_mean_pct, "%")),
        ("SM utilisation p95", _fmt(summary.util_p95_pct, "%")),
        ("GPU memory peak", _fmt(mem / GIB if mem is not None else None, "GiB", 2)),
        ("power mean", _fmt(summary.power_mean_w, "W")),
        ("energy", f"{summary.energy_j:.0f} J ({summary.energy_source})" if summary.energy_j is not None else None),
        ("throttled", f"{summary.throttled_gpu_seconds:.1f} GPU-s ({', '.join(summary.throttle_reasons)})"
         if summary.throttle_reasons else None),
        ("ECC uncorrected", str(summary.ecc_uncorrected) if summary.ecc_uncorrected else None),
        ("XID errors", ", ".join(map(str, summary.xid_errors)) or None),
        ("duration", _fmt(summary.duration_s, "s")),
        ("samples", f"{summary.samples} every {summary.interval_s:g} s"),
        ("host CPU mean", _fmt(summary.host_cpu_mean_pct, "%")),
        ("process RSS peak",
         _fmt(summary.proc_rss_peak_bytes / GIB if summary.proc_rss_peak_bytes else None, "GiB", 2)),
        ("not measured", "; ".join(summary.missing) or None),
    ]  # fmt: skip
    return [{"figure": name, "value": value} for name, value in rows if value is not None]


def artifact_key(stage: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes."""
    return "telemetry-" + re.sub(r"[^a-z0-9-]+", "-", stage.lower()).strip("-")


def publish_telemetry_table(stage: str, summary: TelemetrySummary) -> None:
    from prefect.artifacts import create_table_artifact

    create_table_artifact(
        table=telemetry_rows(summary), key=artifact_key(stage), description=f"{stage}: {summary.describe()}"
    )


# --------------------------------------------------------------------------------------------- gpu and cost JSON


def stage_cost_from_dict(summary: Mapping[str, Any], pricing: GpuPricing) -> CostBreakdown:
    """Cost of a stage from its ``TelemetrySummary.as_dict()`` (as stage results carry it)."""
    return stage_cost(TelemetrySummary.from_dict(summary), pricing)


def _time_weighted_util(summaries: list[TelemetrySummary]) -> tuple[float | None, float | None]:
    """Mean and p95 of SM utilisation weighted by time, over every device of every stage.

    From each device's seconds at each utilisation %; the p95 is the lowest utilisation at or below which
    95 % of the GPU time was spent.
    """
    seconds: dict[int, float] = {}
    for s in summaries:
        for d in s.devices:
            for util, secs in d.util_seconds:
                seconds[util] = seconds.get(util, 0.0) + secs
    total = sum(seconds.values())
    if total <= 0:
        return None, None
    mean = sum(u * s for u, s in seconds.items()) / total
    running = 0.0
    for util in sorted(seconds):
        running += seconds[util]
        if running >= 0.95 * total - 1e-9:
            return mean, float(util)
    return mean, float(max(seconds))


def gpu_figures(summary: TelemetrySummary, pricing: GpuPricing | None = None) -> dict[str, Any]:
    """One stage's GPU figures, JSON-ready."""
    threshold = pricing.idle_utilization_pct if pricing is not None else GpuPricing().idle_utilization_pct
    return {
        "gpu_count": summary.gpu_count,
        "gpu_names": sorted(set(summary.gpu_names)),
        "gpu_seconds": summary.gpu_seconds,
        "util_mean_pct": summary.util_mean_pct,
        "util_p95_pct": summary.util_p95_pct,
        "mem_peak_bytes": summary.mem_peak_bytes,
        "mem_total_bytes": summary.mem_total_bytes,
        "power_mean_w": summary.power_mean_w,
        "energy_j": summary.energy_j,
        "energy_source": summary.energy_source,
        "idle_gpu_seconds": summary.idle_gpu_seconds(threshold),
        "duration_s": summary.duration_s,
        "missing": list(summary.missing),
    }


def _run_gpu_figures(stages: dict[str, TelemetrySummary], threshold: float) -> dict[str, Any]:
    parts = list(stages.values())
    util_mean, util_p95 = _time_weighted_util(parts)
    mems = [s.mem_peak_bytes for s in parts if s.mem_peak_bytes is not None]
    totals = [s.mem_total_bytes for s in parts if s.mem_total_bytes is not None]
    powered = [(s.power_mean_w, s.duration_s) for s in parts if s.power_mean_w is not None and s.duration_s > 0]
    energies = [s.energy_j for s in parts if s.energy_j is not None]
    idles = [i for s in parts if (i := s.idle_gpu_seconds(threshold)) is not None]
    return {
        "gpu_count": max((s.gpu_count for s in parts), default=0),
        "gpu_names": sorted({n for s in parts for n in s.gpu_names}),
        "gpu_seconds": sum(s.gpu_seconds for s in parts),
        "util_mean_pct": util_mean,
        "util_p95_pct": util_p95,
        "mem_peak_bytes": max(mems) if mems else None,
        "mem_total_bytes": max(totals) if totals else None,
        "power_mean_w": sum(p * d for p, d in powered) / sum(d for _, d in powered) if powered else None,
        "energy_j": sum(energies) if energies else None,
        "idle_gpu_seconds": sum(idles) if idles else None,
        "duration_s": sum(s.duration_s for s in parts),
        "has_gpu": any(s.has_gpu for s in parts),
        "missing": [f"{stage}: {note}" for stage, s in stages.items() for note in s.missing],
    }


def cost_figures(cost: CostBreakdown) -> dict[str, Any]:
    """One CostBreakdown, JSON-ready (price lines included, so a defaulted price is visible)."""
    return {
        "total": cost.total,
        "currency": cost.currency,
        "basis": cost.basis,
        "compute_cost": cost.compute_cost,
        "energy_cost": cost.energy_cost,
        "idle_cost": cost.idle_cost,
        "gpu_hours": cost.gpu_hours,
        "idle_gpu_hours": cost.idle_gpu_hours,
        "node_hours": cost.node_hours,
        "energy_kwh": cost.energy_kwh,
        "lines": [line.model_dump(mode="json") for line in cost.lines],
        "notes": list(cost.notes),
    }


def pipeline_gpu_and_cost(
    stage_telemetry: Mapping[str, Mapping[str, Any]], pricing: GpuPricing
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``gpu`` and ``cost`` of a pipeline run from each stage's ``TelemetrySummary.as_dict()``.

    Run figures: counts and GPU-seconds, energy, idle time and cost are sums over stages; ``gpu_count`` is the
    most GPUs a stage used; utilisation is time-weighted over all stages' GPU time; peak memory is the highest
    stage's; power is the duration-weighted mean of the stages that reported it. A stage with an empty summary
    (nothing recorded) is listed with a note and priced at nothing.
    """
    summaries = {
        stage: TelemetrySummary.from_dict(d) if d else empty_summary(stage, "no telemetry recorded for this stage")
        for stage, d in stage_telemetry.items()
    }
    costs = {stage: stage_cost(s, pricing) for stage, s in summaries.items() if s.samples > 0}
    total = run_cost(costs).total
    gpu = {
        "stages": {stage: gpu_figures(s, pricing) for stage, s in summaries.items()},
        "run": _run_gpu_figures(summaries, pricing.idle_utilization_pct),
    }
    unpriced = [f"{stage}: no telemetry, not priced" for stage in summaries if stage not in costs]
    run = cost_figures(total)
    run["notes"] = [*run["notes"], *unpriced]
    cost = {
        "currency": pricing.currency,
        "basis": total.basis,
        "stages": {stage: cost_figures(c) for stage, c in costs.items()},
        "run": run,
    }
    return gpu, cost
