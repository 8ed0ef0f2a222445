"""What a run report is made of, read from MLflow: the pipeline run and its stage runs, each stage's telemetry and
the train run's per-epoch series (:class:`RunRecord`), and those priced and analysed (:class:`RunData`).

A train run id stands for its pipeline, or for itself when it ran alone. Costs are the stages' telemetry at the
prices of a ``GpuPricing`` block (tasks/reporting/cost.py); an epoch's cost is the train stage's average price per
GPU-second times the GPU-seconds it took (start-up counted in the first epoch), or the node price times its wall
time without a GPU. Convergence figures are tasks/reporting/convergence_figures.py's.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Run

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
from workloads.tags import TAG_PARENT, TAG_STAGE, TAG_STOP_REASON
from workloads.telemetry import TelemetrySummary
from workloads.telemetry import read_series as decode_series
from workloads.trainer.telemetry import CUMULATIVE_GPU_SECONDS, DATA_LOADING_SECONDS, GPU_SECONDS

STAGE_ORDER = ("prepare", "train", "evaluate", "rollout")
EPOCH_KEYS = (
    "val_accuracy", "val_loss", "train_loss", "epoch_seconds", "samples_per_second", GPU_SECONDS,
    CUMULATIVE_GPU_SECONDS,
)  # fmt: skip
STARTUP_METRICS = ("time_to_data_loaded_seconds", DATA_LOADING_SECONDS, "time_to_first_step_seconds")


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


@dataclass(frozen=True)
class RunData(RunRecord):
    """Everything the report shows about one pipeline run (or one lone train run): its record, priced and
    analysed."""

    label: str
    epoch_gpu_seconds: list[float] | None  # None: no GPU in training
    epoch_costs: list[float] | None
    convergence: ConvergenceReport | None
    gpu: dict[str, Any]
    cost: dict[str, Any]

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
    """GPU-seconds paid per epoch: differences of the cumulative figure (start-up lands in the first epoch).

    An epoch the launcher gave no figures (it ended less than a sampling interval after the last that got some)
    pays 0 here: the next epoch that has them carries its time, so the running sum stays whole."""
    if train is None or not train.summary.has_gpu or not epochs:
        return None
    if any(CUMULATIVE_GPU_SECONDS in e for e in epochs):
        cumulative = list(itertools.accumulate((e.get(CUMULATIVE_GPU_SECONDS) for e in epochs), _carry, initial=0.0))
        return [b - a for a, b in itertools.pairwise(cumulative)]
    if any(GPU_SECONDS in e for e in epochs):
        return [e.get(GPU_SECONDS, 0.0) for e in epochs]
    return None


def _carry(last: float, value: float | None) -> float:
    return last if value is None else value


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
        **{f.name: getattr(record, f.name) for f in dataclasses.fields(RunRecord)},
        label=label,
        epoch_gpu_seconds=gpu_s,
        epoch_costs=costs,
        convergence=analyse_convergence(record.epochs, gpu_seconds=gpu_s, costs=costs) if record.epochs else None,
        gpu=gpu,
        cost=cost,
    )


def load_run_data(client: MlflowClient, root: Run, pricing: GpuPricing, label: str) -> RunData:
    """Read one run from MLflow and work out its cost and convergence."""
    return assemble(read_run(client, root), pricing, label)
