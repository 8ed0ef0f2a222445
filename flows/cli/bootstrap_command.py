"""``gpuflow bootstrap`` and ``gpuflow emit``: the server-side commands, as parsers the main CLI mounts.

``emit`` exists so a user (or a test) can start the event chain by hand, e.g. re-announce a file or
re-run rollout for a version, exactly as the stages' own events would.
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


def add_emit_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "emit", help="Emit a gpuflow event to the Prefect server (starts the deployments it triggers)."
    )
    parser.add_argument("event", help="Event name, e.g. gpuflow.data.arrived.")
    parser.add_argument("--resource", required=True, help="Resource id, e.g. gpuflow.data.incoming.")
    parser.add_argument("--payload", default="{}", help="JSON object carried by the event.")
    parser.set_defaults(handler=emit_command)
    return parser


def parse_payload(text: str) -> dict[str, Any]:
    """The payload must be a JSON object: triggers template parameters from its keys."""
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--payload is not JSON ({exc.msg} at position {exc.pos}): {text!r}") from exc
    if not isinstance(payload, dict):
        raise ValueError(f"--payload must be a JSON object, got {type(payload).__name__}: {text!r}")
    return payload


def emit_command(args: argparse.Namespace) -> int:
    from prefect.events.worker import EventsWorker

    from tasks.tracking import events  # Prefect: imported by the command that needs it, not by `gpuflow --help`

    if not args.event.startswith("gpuflow."):
        print(f"event {args.event!r} is not a gpuflow event: expected a name starting with 'gpuflow.'")
        return 2
    try:
        payload = parse_payload(args.payload)
    except ValueError as exc:
        print(str(exc))
        return 2
    events.emit(args.event, {"prefect.resource.id": args.resource}, payload)
    EventsWorker.drain_all()  # the process exits next: deliver the event first
    print(f"emitted {args.event} on {args.resource}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m deployments.cli bootstrap|emit ...`` until the main ``gpuflow`` CLI mounts these."""
    parser = argparse.ArgumentParser(prog="gpuflow")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_bootstrap_parser(subparsers)
    add_emit_parser(subparsers)
    args = parser.parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    raise SystemExit(main())
