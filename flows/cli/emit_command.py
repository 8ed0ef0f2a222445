"""``gpuflow emit``: send a gpuflow event to the Prefect server, starting the deployments it triggers.

It exists so a user (or a test) can start the event chain by hand, e.g. re-announce a file or re-run rollout
for a version, exactly as the stages' own events would. Importing this module costs only argparse.
"""

from __future__ import annotations

import argparse
import json
from typing import Any


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
