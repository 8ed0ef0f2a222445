"""The run report: what a pipeline run cost, where its GPU time went, and whether its training was worth it.

Everything comes from MLflow, so a report can be made any time after the run, on any machine:

- the pipeline run and its stage runs (``mlflow.parentRunId``); a train run id stands for its pipeline, or for
  itself when it ran alone;
- each stage's ``telemetry/summary.json`` and ``telemetry/series.csv.gz`` (tasks/reporting/stage_telemetry.py,
  the trainer);
- the train run's per-epoch metrics (loss, accuracy, epoch seconds, throughput, cumulative GPU-seconds) and
  its ``gpuflow.stop_reason`` tag.

Costs are the stages' telemetry at the prices of a ``GpuPricing`` block (tasks/reporting/cost.py); without a GPU
they are node-hours, and the report says so. An epoch's cost is the train stage's average price per GPU-second times the
GPU-seconds it took (start-up counted in the first epoch), or the node price times its wall time without a GPU.
Convergence figures are tasks/reporting/convergence_figures.py's, over those per-epoch series.

Writes ``report.md`` and PNG plots to a folder, logs them under ``report/`` on the pipeline run and publishes the
markdown as the Prefect artifact ``gpuflow-report``.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Run
from pydantic import BaseModel, ConfigDict

from blocks.mlflow_tracking import MLflowTracking
from blocks.pricing import GpuPricing
from tasks.core.errors import ConfigurationError
from tasks.core.mlflow_errors import not_found_as
from tasks.reporting.convergence_figures import ConvergenceReport, analyse_convergence
from tasks.reporting.stage_telemetry import (
    pipeline_gpu_and_cost,
    read_series,
    read_summary_document,
    summary_from_document,
)
from tasks.tracking.runs import client_for, experiment_id
from workloads.tags import TAG_DATASET_VERSION, TAG_PARENT, TAG_PIPELINE_VERSION, TAG_STAGE, TAG_STOP_REASON
from workloads.telemetry import TelemetrySummary
from workloads.telemetry import read_series as decode_series
from workloads.trainer.telemetry import CUMULATIVE_GPU_SECONDS, DATA_LOADING_SECONDS, GPU_SECONDS

STAGE_ORDER = ("prepare", "train", "evaluate", "rollout")
EPOCH_KEYS = (
    "val_accuracy", "val_loss", "train_loss", "epoch_seconds", "samples_per_second", GPU_SECONDS,
    CUMULATIVE_GPU_SECONDS,
)  # fmt: skip
STARTUP_METRICS = ("time_to_data_loaded_seconds", DATA_LOADING_SECONDS, "time_to_first_step_seconds")
REPORT_ARTIFACT_KEY = "gpuflow-report"
REPORT_FOLDER = "report"
REPORT_FILE = "report.md"

logger = logging.getLogger(__name__)


class ReportError(ConfigurationError):
    """The run asked for cannot be reported on (unknown id, not a pipeline or train run, no pipeline run yet)."""


# --------------------------------------------------------------------------------------------- finding runs


def _get_run(client: MlflowClient, run_id: str) -> Run:
    with not_found_as(lambda: ReportError(f"no MLflow run {run_id!r} in the tracking store at {client.tracking_uri}")):
        return client.get_run(run_id)


def latest_pipeline_run(client: MlflowClient, experiment: str) -> str:
    """The newest pipeline run of the experiment (``--last``)."""
    runs = client.search_runs(
        [experiment], filter_string=f"tags.`{TAG_STAGE}` = 'pipeline'", order_by=["attributes.start_time DESC"],
        max_results=1,
    )  # fmt: skip
    if not runs:
        raise ReportError(f"no pipeline run in MLflow experiment {experiment} yet: run `gpuflow run` first")
    return str(runs[0].info.run_id)


def report_root(client: MlflowClient, run_id: str) -> Run:
    """The run a report is about: a pipeline run, the pipeline of a train run, or a train run that ran alone."""
    run = _get_run(client, run_id)
    stage = run.data.tags.get(TAG_STAGE, "")
    if stage == "pipeline":
        return run
    if stage == "train":
        parent = run.data.tags.get(TAG_PARENT)
        return _get_run(client, parent) if parent else run
    raise ReportError(
        f"MLflow run {run_id!r} is {f'the {stage} stage run of a pipeline' if stage else 'not a gpuflow run'}; "
        "give a pipeline run id or a train run id"
    )


def stage_runs(client: MlflowClient, root: Run) -> dict[str, Run]:
    """Stage -> run under a pipeline run (the newest when a stage ran twice), in pipeline order."""
    if root.data.tags.get(TAG_STAGE) != "pipeline":
        return {root.data.tags.get(TAG_STAGE, "train"): root}
    children = client.search_runs(
        [root.info.experiment_id], filter_string=f"tags.`{TAG_PARENT}` = '{root.info.run_id}'",
        order_by=["attributes.start_time ASC"],
    )  # fmt: skip
    found: dict[str, Run] = {}
    for child in children:
        found[child.data.tags.get(TAG_STAGE, child.info.run_name or "stage")] = child
    return dict(sorted(found.items(), key=lambda item: _stage_rank(item[0])))


def _stage_rank(stage: str) -> tuple[int, str]:
    return (STAGE_ORDER.index(stage), "") if stage in STAGE_ORDER else (len(STAGE_ORDER), stage)


# --------------------------------------------------------------------------------------------- run data


@dataclass(frozen=True)
class StageData:
    stage: str
    run_id: str
    summary: TelemetrySummary
    recorded: bool  # False: the stage run has no telemetry/summary.json
    series: list[dict[str, str]]


@dataclass(frozen=True)
class RunData:
    """Everything the report shows about one pipeline run (or one lone train run)."""

    run_id: str
    label: str
    kind: str  # "pipeline" or "train"
    tags: dict[str, str]
    stages: dict[str, StageData]
    epochs: list[dict[str, float]]
    train_metrics: dict[str, float]
    stop_reason: str
    epoch_gpu_seconds: list[float] | None  # None: no GPU in training
    epoch_costs: list[float] | None
    convergence: ConvergenceReport | None
    gpu: dict[str, Any]
    cost: dict[str, Any]
    test_metrics: dict[str, float]

    @property
    def has_gpu(self) -> bool:
        return bool(self.gpu["run"]["has_gpu"])

    @property
    def currency(self) -> str:
        return str(self.cost["currency"])

    def wall_seconds(self) -> list[float]:
        """Training wall time at the end of each epoch (cumulative epoch seconds)."""
        return list(itertools.accumulate(e.get("epoch_seconds", 0.0) for e in self.epochs))

    def cumulative_gpu_seconds(self) -> list[float] | None:
        return list(itertools.accumulate(self.epoch_gpu_seconds)) if self.epoch_gpu_seconds is not None else None

    def cumulative_cost(self) -> list[float] | None:
        return list(itertools.accumulate(self.epoch_costs)) if self.epoch_costs is not None else None


def epoch_history(client: MlflowClient, run_id: str) -> list[dict[str, float]]:
    """The train run's per-epoch metrics, one dict per logged epoch (``epoch`` = step), oldest first."""
    by_step: dict[int, dict[str, float]] = {}
    for key in EPOCH_KEYS:
        for m in client.get_metric_history(run_id, key):
            if m.step >= 1:
                by_step.setdefault(int(m.step), {"epoch": float(m.step)})[key] = float(m.value)
    return [by_step[step] for step in sorted(by_step)]


def _stage_data(client: MlflowClient, stage: str, run: Run) -> StageData:
    run_id = str(run.info.run_id)
    document = read_summary_document(client, run_id)
    series = read_series(client, run_id)
    return StageData(
        stage=stage,
        run_id=run_id,
        summary=summary_from_document(document, stage, "no telemetry recorded for this stage"),
        recorded=document is not None,
        series=decode_series(series) if series else [],
    )


def epoch_gpu_seconds(epochs: Sequence[dict[str, float]], train: StageData | None) -> list[float] | None:
    """GPU-seconds paid per epoch: differences of the cumulative figure (start-up lands in the first epoch)."""
    if train is None or not train.summary.has_gpu or not epochs:
        return None
    if all(CUMULATIVE_GPU_SECONDS in e for e in epochs):
        cumulative = [e[CUMULATIVE_GPU_SECONDS] for e in epochs]
        return [b - a for a, b in zip([0.0, *cumulative[:-1]], cumulative, strict=True)]
    if all(GPU_SECONDS in e for e in epochs):
        return [e[GPU_SECONDS] for e in epochs]
    return None


def epoch_costs(
    epochs: Sequence[dict[str, float]], gpu_seconds: list[float] | None, gpu: dict[str, Any], cost: dict[str, Any],
    pricing: GpuPricing,
) -> list[float] | None:  # fmt: skip
    """Cost per epoch: the train stage's price per GPU-second x the epoch's GPU-seconds; node-hours without a GPU."""
    if not epochs:
        return None
    if gpu_seconds is not None:
        train_gpu_s = gpu["stages"].get("train", {}).get("gpu_seconds") or 0.0
        train_cost = cost["stages"].get("train", {}).get("total")
        if not train_gpu_s or train_cost is None:
            return None
        return [s * train_cost / train_gpu_s for s in gpu_seconds]
    if not all("epoch_seconds" in e for e in epochs):
        return None
    return [e["epoch_seconds"] / 3600.0 * pricing.node_hour_price for e in epochs]


@dataclass(frozen=True)
class RunRecord:
    """What MLflow holds about one run, before anything is worked out from it."""

    run_id: str
    kind: str  # "pipeline" or "train"
    tags: dict[str, str]
    stages: dict[str, StageData]
    epochs: list[dict[str, float]]
    train_metrics: dict[str, float]
    stop_reason: str
    test_metrics: dict[str, float]


def read_run(client: MlflowClient, root: Run) -> RunRecord:
    """Read one run's stages, telemetry, training history and test metrics from MLflow."""
    runs = stage_runs(client, root)
    train_run, evaluate_run = runs.get("train"), runs.get("evaluate")
    return RunRecord(
        run_id=str(root.info.run_id),
        kind="pipeline" if root.data.tags.get(TAG_STAGE) == "pipeline" else "train",
        tags=dict(root.data.tags),
        stages={stage: _stage_data(client, stage, run) for stage, run in runs.items()},
        epochs=epoch_history(client, str(train_run.info.run_id)) if train_run is not None else [],
        train_metrics=dict(train_run.data.metrics) if train_run is not None else {},
        stop_reason=train_run.data.tags.get(TAG_STOP_REASON, "") if train_run is not None else "",
        test_metrics={
            key.removeprefix("test_"): value
            for key, value in (evaluate_run.data.metrics if evaluate_run is not None else {}).items()
            if key.startswith("test_")
        },
    )


def assemble(record: RunRecord, pricing: GpuPricing, label: str) -> RunData:
    """Work out a run's GPU figures, cost, per-epoch GPU time and cost, and convergence (no I/O)."""
    gpu, cost = pipeline_gpu_and_cost(
        {stage: s.summary.as_dict() if s.recorded else {} for stage, s in record.stages.items()}, pricing
    )
    gpu_s = epoch_gpu_seconds(record.epochs, record.stages.get("train"))
    costs = epoch_costs(record.epochs, gpu_s, gpu, cost, pricing)
    return RunData(
        run_id=record.run_id,
        label=label,
        kind=record.kind,
        tags=record.tags,
        stages=record.stages,
        epochs=record.epochs,
        train_metrics=record.train_metrics,
        stop_reason=record.stop_reason,
        epoch_gpu_seconds=gpu_s,
        epoch_costs=costs,
        convergence=analyse_convergence(record.epochs, gpu_seconds=gpu_s, costs=costs) if record.epochs else None,
        gpu=gpu,
        cost=cost,
        test_metrics=record.test_metrics,
    )


def load_run_data(client: MlflowClient, root: Run, pricing: GpuPricing, label: str) -> RunData:
    """Read one run from MLflow and work out its cost and convergence."""
    return assemble(read_run(client, root), pricing, label)


# --------------------------------------------------------------------------------------------- markdown


def _n(value: float | None, digits: int = 1, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:,.{digits}f}{unit}"


def _money(value: float | None, currency: str) -> str:
    return "n/a" if value is None else f"{value:,.4f} {currency}"


def _gib(value: float | None) -> str:
    return "n/a" if value is None else f"{value / 2**30:.2f}"


def _gpus(figures: dict[str, Any]) -> str:
    return f"{figures['gpu_count']} x {', '.join(figures['gpu_names'])}" if figures.get("gpu_count") else "no GPU"


def _stage_table(data: RunData) -> list[str]:
    currency = data.currency
    lines = [
        f"| stage | wall s | GPUs | GPU-s | util mean % | util p95 % | GPU mem peak GiB | power mean W | energy J "
        f"| cost {currency} | idle cost {currency} | basis |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    rows = [(stage, g, data.cost["stages"].get(stage)) for stage, g in data.gpu["stages"].items()]
    rows.append(("**run**", data.gpu["run"], data.cost["run"]))
    for stage, g, c in rows:
        lines.append(
            f"| {stage} | {_n(g.get('duration_s'))} | {_gpus(g)} | {_n(g.get('gpu_seconds'))} "
            f"| {_n(g.get('util_mean_pct'))} | {_n(g.get('util_p95_pct'))} | {_gib(g.get('mem_peak_bytes'))} "
            f"| {_n(g.get('power_mean_w'))} | {_n(g.get('energy_j'), 0)} "
            f"| {_n(c['total'], 4) if c else 'n/a'} | {_n(c['idle_cost'], 4) if c else 'n/a'} "
            f"| {c['basis'] if c else 'not recorded'} |"
        )
    return lines


def _gpu_statement(data: RunData, pricing: GpuPricing) -> str:
    if data.has_gpu:
        g = data.gpu["run"]
        return (
            f"GPUs: {_gpus(g)}; {_n(g['gpu_seconds'])} GPU-seconds over the run, utilisation "
            f"{_n(g['util_mean_pct'])} % on average (time-weighted)."
        )
    notes = [note.split(": ", 1)[-1] for note in data.gpu["run"]["missing"]]  # "<stage>: no GPU: <why>"
    reasons = sorted({note for note in notes if note.startswith("no GPU")})
    why = f" ({'; '.join(reasons)})" if reasons else ""
    return (
        f"**No GPU was used in this run**{why}. GPU figures are empty and costs are priced by node-hour "
        f"({pricing.node_hour_price:g} {pricing.currency} per node-hour)."
    )


def _convergence_lines(data: RunData) -> list[str]:
    c = data.convergence
    if c is None:
        return ["No training epochs were logged for this run."]
    currency = data.currency
    lines = [
        f"- best {c.metric}: **{_n(c.best_value, 4)}** at epoch {c.best_epoch} of {c.epochs}",
    ]
    if c.target_epoch is not None:
        gpu_part = (
            f"{_n(c.gpu_seconds_to_target, 2)} GPU-s (start-up included)"
            if c.gpu_seconds_to_target is not None
            else "no GPU"
        )
        lines.append(
            f"- {c.target_fraction:.0%} of best ({_n(c.target_value, 4)}) first reached at epoch {c.target_epoch}: "
            f"{c.epochs_to_target} epochs, {_n(c.seconds_to_target, 2)} s of epoch time, {gpu_part}, "
            f"cost {_money(c.cost_to_target, currency)}"
        )
    if c.gpu_seconds_after_best is not None:
        lines.append(
            f"- GPU time after the best epoch: {_n(c.gpu_seconds_after_best, 2)} GPU-s "
            "(what stopping at the best epoch would have saved)"
        )
    lines.append(
        f"- plateau: at epoch {c.plateau_epoch} (no improvement for {c.plateau_patience} epochs)"
        if c.plateau_epoch is not None
        else f"- plateau: none (never {c.plateau_patience} epochs without improvement)"
    )
    lines.append(
        f"- divergence: at epoch {c.divergence_epoch}: {c.divergence_reason}" if c.diverged else "- divergence: none"
    )
    if c.throughput_mean is not None:
        steady = "steady" if (c.throughput_cv or 0.0) < 0.1 else "unsteady"
        lines.append(
            f"- throughput: {_n(c.throughput_mean, 0)} samples/s on average, variation "
            f"{_n((c.throughput_cv or 0.0) * 100)} % ({steady})"
        )
    lines.append(f"- why training stopped: {data.stop_reason or 'not recorded'}")
    return lines


def _startup_lines(data: RunData) -> list[str]:
    m = data.train_metrics
    rows = [
        ("Kubernetes: Job created to pod on a node (queueing for a GPU)", m.get("k8s_queue_seconds")),
        ("Kubernetes: pod on a node to container running (image pull, start)", m.get("k8s_start_seconds")),
        ("trainer start to data loaded", m.get("time_to_data_loaded_seconds")),
        ("of which loading the data", m.get(DATA_LOADING_SECONDS)),
        ("trainer start to first optimizer step", m.get("time_to_first_step_seconds")),
        ("trainer total (start to model logged)", m.get("workload_seconds")),
    ]
    known = [(name, value) for name, value in rows if value is not None]
    if not known:
        return ["Not recorded for this run."]
    return ["| moment | seconds |", "|---|---:|", *(f"| {name} | {_n(v, 2)} |" for name, v in known)]


def _compare_table(runs: Sequence[RunData]) -> list[str]:
    lines = [
        "| run | dataset | test accuracy | best val_accuracy | epochs | epochs to 95 % | GPU-s | cost | stopped |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for d in runs:
        c = d.convergence
        lines.append(
            f"| {d.label} | {d.tags.get(TAG_DATASET_VERSION, 'n/a')} | {_n(d.test_metrics.get('accuracy'), 4)} "
            f"| {_n(c.best_value if c else None, 4)} | {c.epochs if c else 0} "
            f"| {c.epochs_to_target if c and c.epochs_to_target is not None else 'n/a'} "
            f"| {_n(d.gpu['run']['gpu_seconds']) if d.has_gpu else 'no GPU'} "
            f"| {_money(d.cost['run']['total'], d.currency)} "
            f"| {d.stop_reason or 'n/a'} |"
        )
    return lines


def render_markdown(runs: Sequence[RunData], images: dict[str, str], pricing: GpuPricing) -> str:
    """report.md: the first run in full, the others (``--compare``) beside it in a table and in the plots."""
    data = runs[0]
    what = "pipeline run" if data.kind == "pipeline" else "train run"
    lines = [
        f"# gpuflow report: {what} {data.run_id}",
        "",
        f"- pipeline version: {data.tags.get(TAG_PIPELINE_VERSION, 'n/a')}",
        f"- dataset version: {data.tags.get(TAG_DATASET_VERSION, 'n/a')}",
        f"- model version: {data.tags.get('gpuflow.model_version', 'n/a')}",
        f"- test accuracy: {_n(data.test_metrics.get('accuracy'), 4)}",
        f"- stage runs: {', '.join(f'{s.stage} {s.run_id}' for s in data.stages.values())}",
        "",
        _gpu_statement(data, pricing),
        "",
        f"## GPU and cost per stage ({data.currency}, {data.cost['basis']})",
        "",
        *_stage_table(data),
        "",
    ]
    notes = list(data.cost["run"]["notes"])
    if notes:
        lines += ["Cost notes:", "", *(f"- {n}" for n in notes), ""]
    lines += ["## Time to useful work (trainer)", "", *_startup_lines(data), ""]
    lines += ["## Convergence", "", *_convergence_lines(data), ""]
    if len(runs) > 1:
        lines += ["## Comparison", "", *_compare_table(runs), ""]
    if images:
        lines += ["## Plots", ""]
        lines += [f"![{title}]({name})" for name, title in images.items()]
        lines.append("")
    missing = data.gpu["run"]["missing"]
    if missing:
        lines += ["## Not measured", "", *(f"- {m}" for m in missing), ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- the report


class ReportResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    run_id: str
    compared: list[str]
    folder: str
    report: str
    images: list[str]
    mlflow_artifact_path: str
    has_gpu: bool
    total_cost: float
    currency: str


def _labels(count: int, ids: Sequence[str]) -> list[str]:
    return [f"{'this run' if i == 0 else 'compared'} {run_id[:8]}" for i, run_id in zip(range(count), ids, strict=True)]


def build_report(
    tracking: MLflowTracking,
    run_id: str | None,
    *,
    compare: Sequence[str] = (),
    out_dir: Path | None = None,
    pricing: GpuPricing | None = None,
    publish: bool = True,
) -> ReportResult:
    """Write the report of ``run_id`` (None: the newest pipeline run) and log and publish it."""
    from tasks.core import settings
    from tasks.reporting.plots import write_plots

    pricing = pricing or GpuPricing()
    client = client_for(tracking)
    first = run_id or latest_pipeline_run(client, experiment_id(tracking))
    roots = [report_root(client, rid) for rid in (first, *compare)]
    ids = [str(r.info.run_id) for r in roots]
    labels = _labels(len(roots), ids)
    runs = [load_run_data(client, root, pricing, label) for root, label in zip(roots, labels, strict=True)]
    folder = out_dir or settings.home() / "reports" / ids[0]
    folder.mkdir(parents=True, exist_ok=True)
    images = write_plots(runs, folder)
    markdown = render_markdown(runs, images, pricing)
    report_path = folder / REPORT_FILE
    report_path.write_text(markdown)
    for name in (*images, REPORT_FILE):
        client.log_artifact(ids[0], str(folder / name), artifact_path=REPORT_FOLDER)
    if publish:
        publish_report(markdown, ids[0])
    return ReportResult(
        run_id=ids[0],
        compared=ids[1:],
        folder=str(folder),
        report=str(report_path),
        images=[str(folder / name) for name in images],
        mlflow_artifact_path=f"{REPORT_FOLDER}/{REPORT_FILE}",
        has_gpu=runs[0].has_gpu,
        total_cost=float(runs[0].cost["run"]["total"]),
        currency=runs[0].currency,
    )


def publish_report(markdown: str, run_id: str) -> None:
    """The markdown as the Prefect artifact ``gpuflow-report``; a Prefect API that cannot be reached is a warning."""
    from prefect.artifacts import create_markdown_artifact

    try:
        create_markdown_artifact(markdown=markdown, key=REPORT_ARTIFACT_KEY, description=f"gpuflow report of {run_id}")
    except Exception as exc:
        logger.warning(
            "could not publish the %s Prefect artifact: %s: %s", REPORT_ARTIFACT_KEY, type(exc).__name__, exc
        )
