"""``gpuflow bootstrap``: create the work pools, blocks and deployments on a Prefect server (deployments/bootstrap.py).

Importing this module costs only argparse (the ``gpuflow`` parser imports it for every command).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from deployments import PROJECT_ROOT


def add_bootstrap_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "bootstrap",
        help="Create the work pool, blocks and deployments on the Prefect server at PREFECT_API_URL (idempotent).",
    )
    parser.add_argument("--project-dir", type=Path, default=PROJECT_ROOT, help="Folder holding prefect.yaml.")
    parser.add_argument("--json", action="store_true", help="Print the report as JSON.")
    parser.add_argument(
        "--kubernetes",
        action="store_true",
        help="Also create the gpuflow-kubernetes work pool (GPU base job template) and register the "
        "KubernetesGPUJob block type.",
    )
    parser.set_defaults(handler=bootstrap_command)
    return parser


def bootstrap_command(args: argparse.Namespace) -> int:
    from deployments.bootstrap import bootstrap
    from tasks.core.errors import ConfigurationError

    try:
        report = bootstrap(args.project_dir, kubernetes=args.kubernetes)
    except ConfigurationError as exc:
        print(f"bootstrap failed: {exc}")
        return 2
    if args.json:
        print(json.dumps({"version": report.version, "created": report.created, "existing": report.existing}))
    else:
        print("\n".join(report.lines()))
    return 0
