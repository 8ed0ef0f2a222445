"""The ``report`` flow and ``gpuflow report``: cost, GPU and convergence report of a pipeline run.

A flow so the report shows up in Prefect beside the runs it describes (and can be deployed, e.g. triggered by
``gpuflow.model.evaluated``) and its markdown artifact ``gpuflow-report`` belongs to a flow run. It only reads
MLflow, so it runs any time after the pipeline, on any machine. The logic is in tasks/report.py (data and
markdown) and tasks/report_plots.py (PNG plots), imported when the flow runs, so that importing this module
(as ``gpuflow``'s argument parser does) costs only Prefect's import.

Wiring (flows/cli.py)::

    add_report_parser(commands)            # in build_parser()
    if args.command == "report": return report_command(args)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from prefect import flow, get_run_logger

if TYPE_CHECKING:
    from tasks.report import ReportResult

EXIT_OK, EXIT_FAILED = 0, 1


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
    from blocks.mlflow_tracking import resolve_tracking
    from blocks.pricing import resolve_pricing
    from tasks.report import build_report

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


def add_report_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add ``report`` to the ``gpuflow`` command's subparsers."""
    parser = subparsers.add_parser(
        "report",
        help="cost, GPU and convergence report of a pipeline run",
        description="Write report.md and PNG plots for a pipeline run (or a train run): cost and GPU figures per "
        "stage, loss and accuracy against wall time, GPU-seconds and cost, utilisation over time, convergence. "
        "Logged to MLflow under report/ on the pipeline run and published as the Prefect artifact gpuflow-report.",
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument("run_id", nargs="?", metavar="RUN_ID", help="MLflow pipeline run id, or a train run id")
    which.add_argument("--last", action="store_true", help="the newest pipeline run (the default)")
    parser.add_argument(
        "--compare", nargs="+", default=[], metavar="RUN_ID", help="overlay these runs on the same plots"
    )
    parser.add_argument("--out", metavar="DIR", help="folder for report.md and plots (default GPUFLOW_HOME/reports/ID)")
    parser.add_argument("--pricing", metavar="BLOCK", help="saved GpuPricing block name (default prices otherwise)")
    parser.add_argument("--tracking", metavar="BLOCK", help="saved MLflowTracking block name")
    parser.add_argument("--json", action="store_true", help="end stdout with one JSON object describing the report")
    return parser


def report_command(args: argparse.Namespace) -> int:
    """Run ``gpuflow report``; returns the exit code (1 when the run cannot be found or read)."""
    from tasks.errors import GpuflowError
    from tasks.report import ReportResult

    state = report(
        run_id=None if args.last else args.run_id,
        compare=list(args.compare),
        out_dir=args.out,
        pricing=args.pricing,
        tracking=args.tracking,
        return_state=True,
    )
    outcome = state.result(raise_on_failure=False)
    if not state.is_completed() or not isinstance(outcome, ReportResult):
        if not isinstance(outcome, GpuflowError):
            raise outcome if isinstance(outcome, BaseException) else RuntimeError(state.message or "report failed")
        print(f"gpuflow: error: {outcome}", file=sys.stderr)
        return EXIT_FAILED
    gpu = "GPU" if outcome.has_gpu else "no GPU (costs in node-hours)"
    compared = f", compared with {', '.join(outcome.compared)}" if outcome.compared else ""
    print(f"report of run {outcome.run_id}{compared}: {gpu}, total cost {outcome.total_cost:.4f} {outcome.currency}")
    print(
        f"written to {outcome.report} ({len(outcome.images)} plots); logged to MLflow as {outcome.mlflow_artifact_path}"
    )
    if args.json:
        print(json.dumps(outcome.model_dump(mode="json"), sort_keys=True))
    return EXIT_OK
