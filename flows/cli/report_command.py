"""``gpuflow report``: the command line of the ``report`` flow (flows/report.py).

Importing this module costs only argparse: ``gpuflow``'s parser imports it for every command, and ``gpuflow
serve`` must start fast. Prefect, MLflow and matplotlib are imported when the command runs.

Wiring (flows/cli/__init__.py)::

    add_report_parser(commands)            # in build_parser()
    if args.command == "report": return report_command(args)
"""

from __future__ import annotations

import argparse
import json
import sys

from flows.cli.arguments import EXIT_FAILED, EXIT_OK


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
    from flows.report import report
    from tasks.core.errors import GpuflowError
    from tasks.reporting.run_report import ReportResult

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
