"""The ``report`` flow: cost, GPU and convergence report of a pipeline run (``gpuflow report`` runs it).

A flow so the report shows up in Prefect beside the runs it describes (and can be deployed, e.g. triggered by
``gpuflow.model.evaluated``) and its markdown artifact ``gpuflow-report`` belongs to a flow run. It only reads
MLflow, so it runs any time after the pipeline, on any machine. The logic is in tasks/reporting/run_report.py (data and
markdown) and tasks/reporting/plots.py (PNG plots); the command line is flows/cli/report_command.py.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from blocks.mlflow_tracking import resolve_tracking
from blocks.pricing import resolve_pricing
from flows.prefect_server import own_prefect_ephemeral_server
from tasks.reporting.run_report import ReportResult, build_report

own_prefect_ephemeral_server()  # flows called from Python use a server gpuflow owns (no leak, no race)


@flow(name="report", log_prints=False)
def report(
    run_id: str | None = None,
    compare: list[str] | None = None,
    out_dir: str | None = None,
    pricing: str | None = None,
    tracking: str | None = None,
) -> ReportResult:
    """Write report.md and PNG plots for a pipeline run, log them to MLflow and publish the markdown.

    Args:
        run_id: MLflow pipeline run id, or a train run id (its pipeline, or itself when it ran alone).
            Empty: the newest pipeline run of the experiment.
        compare: Other pipeline (or train) runs overlaid on the same plots and tabled beside it.
        out_dir: Folder for report.md and the plots; empty: GPUFLOW_HOME/reports/<run id>.
        pricing: Saved GpuPricing block name; empty uses the default prices.
        tracking: Saved MLflowTracking block name; empty uses MLFLOW_TRACKING_URI or SQLite under GPUFLOW_HOME.
    """
    result = build_report(
        resolve_tracking(tracking),
        run_id,
        compare=compare or [],
        out_dir=Path(out_dir) if out_dir else None,
        pricing=resolve_pricing(pricing),
    )
    get_run_logger().info(
        "report of %s written to %s and logged to MLflow as %s",
        result.run_id,
        result.report,
        result.mlflow_artifact_path,
    )
    return result
