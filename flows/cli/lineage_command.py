"""``gpuflow lineage MODEL[@ALIAS | /VERSION]``: the data, training, code, test figures and cost behind a version.

Reads MLflow only (tasks/reporting/lineage.py). Exit code 1 with a message naming what exists when the model, alias or
version does not. Importing this module is cheap (argparse only), so ``gpuflow --help`` stays fast.

Wiring (flows/cli/__init__.py)::

    add_lineage_parser(commands)            # in build_parser()
    if args.command == "lineage": return lineage_command(args)
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from flows.cli.arguments import EXIT_FAILED, EXIT_OK

if TYPE_CHECKING:
    from tasks.reporting.lineage import Lineage


def add_lineage_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add ``lineage`` to the ``gpuflow`` command's subparsers."""
    parser = subparsers.add_parser(
        "lineage",
        help="what is behind a registered model version",
        description="Show the dataset version, training run, code version, hyperparameters, test metrics, GPU "
        "figures and cost behind a model version. MODEL alone means its champion (else its newest version).",
    )
    parser.add_argument(
        "model", metavar="MODEL[@ALIAS|/VERSION]", help="e.g. gpuflow-digits@champion, gpuflow-digits/3"
    )
    parser.add_argument("--pricing", metavar="BLOCK", help="saved GpuPricing block name (default prices otherwise)")
    parser.add_argument("--tracking", metavar="BLOCK", help="saved MLflowTracking block name")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    return parser


def render_table(lineage: Lineage) -> str:
    """The lineage as a two-column table for the terminal."""
    from rich.console import Console
    from rich.table import Table

    from tasks.reporting.gpu_cost_text import lineage_cost_text, lineage_gpu_text

    table = Table(title=f"{lineage.model_name} version {lineage.model_version}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    d, t = lineage.dataset, lineage.training_run
    rows = [
        ("aliases", ", ".join(lineage.aliases) or "none"),
        ("model uri", lineage.model_uri),
        ("dataset", f"{d.get('name') or '?'} version {d.get('version') or '?'}"),
        ("dataset uri", d.get("uri") or "unknown"),
        ("training run", f"{t['run_id']} ({t['status']}, started {t.get('started_at') or '?'})"),
        ("stopped", t.get("stop_reason") or "not recorded"),
        ("pipeline run", lineage.pipeline_run_id or "none (trained alone)"),
        ("evaluate run", lineage.evaluate_run_id or "unknown"),
        ("code version", lineage.code_version or "unknown"),
        ("environment", lineage.environment or "unknown"),
        ("trainer", lineage.trainer or "built-in MLP (recorded before trainers were named)"),
        ("hyperparameters", ", ".join(f"{k}={v}" for k, v in lineage.hyperparameters.items()) or "unknown"),
        ("test metrics", ", ".join(f"{k}={v:.4g}" for k, v in sorted(lineage.test_metrics.items())) or "none"),
        ("quality gate", {True: "passed", False: "failed", None: "unknown"}[lineage.gate_passed]),
        ("GPU", lineage_gpu_text(lineage.gpu["run"])),
        ("cost", lineage_cost_text(lineage.cost["run"])),
        *((f"  {stage}", lineage_cost_text(c)) for stage, c in lineage.cost["stages"].items()),
    ]
    for key, value in rows:
        table.add_row(key, value)
    console = Console(file=None, force_terminal=False, width=120)
    with console.capture() as capture:
        console.print(table)
    return capture.get()


def lineage_command(args: argparse.Namespace) -> int:
    """Run ``gpuflow lineage``; returns the exit code (1 when the model, alias or version does not exist)."""
    from blocks.mlflow_tracking import resolve_tracking
    from blocks.pricing import resolve_pricing
    from tasks.core.errors import GpuflowError
    from tasks.reporting.lineage import model_lineage

    try:
        lineage = model_lineage(resolve_tracking(args.tracking), args.model, resolve_pricing(args.pricing))
    except GpuflowError as exc:
        print(f"gpuflow: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(lineage.model_dump(mode="json"), sort_keys=True))
    else:
        sys.stdout.write(render_table(lineage))
    return EXIT_OK
