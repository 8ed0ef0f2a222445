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

What it is made of is run_data.py (read from MLflow, priced, analysed), its Markdown report_markdown.py, its
plots plots.py. This module writes ``report.md`` and PNG plots to a folder, logs them under ``report/`` on the
pipeline run and publishes the markdown as the Prefect artifact ``gpuflow-report``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from blocks.mlflow_tracking import MLflowTracking
from blocks.pricing import GpuPricing
from tasks.reporting.report_markdown import render_markdown
from tasks.reporting.run_data import latest_pipeline_run, load_run_data, report_root
from tasks.tracking.runs import client_for, experiment_id

REPORT_ARTIFACT_KEY = "gpuflow-report"
REPORT_FOLDER = "report"
REPORT_FILE = "report.md"

logger = logging.getLogger(__name__)


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
