"""``gpuflow trainer check SPEC --dataset URI``: does your trainer keep the contract? One short training says.

It trains once under the real launcher on the first ``--rows`` rows of each split of a prepared dataset, into a
throwaway MLflow store, all in a temporary folder removed at the end, and prints one line per point of
``gpuflow-trainer/1`` (docs/trainers.md) with the fix for each failure. Exit codes: 0 every point passed;
2 the contract is broken (or SPEC / --hp is refused before anything runs); 1 the check itself could not run.
Importing this module costs only argparse; a SPEC that is a saved block (not a file) needs the Prefect API.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from types import FrameType
from typing import Any

from flows.cli.arguments import EXIT_FAILED, EXIT_OK, EXIT_USAGE, positive_float, positive_int

OUTPUT_TAIL = 30  # lines of the trainer's output shown when a point failed


def add_trainer_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add ``trainer check`` to the ``gpuflow`` command's subparsers."""
    parser = subparsers.add_parser(
        "trainer",
        help="check your training code against the trainer contract",
        description="Your own training code: see docs/trainers.md.",
    )
    actions = parser.add_subparsers(dest="trainer_action", required=True, metavar="ACTION")
    check = actions.add_parser(
        "check",
        help="train once on a small sample and report each point of the trainer contract",
        description="Train once under gpuflow's launcher on the first N rows of each split of a prepared dataset "
        "(a temporary copy, a throwaway MLflow store) and print each point of the contract gpuflow-trainer/1 as "
        "pass or FAIL with its fix. Exit 0 when all pass, 2 when the contract is broken, 1 when the check could "
        "not run.",
    )
    check.add_argument("spec", metavar="SPEC", help="trainer spec: a YAML/JSON file or a saved TrainerSpec block")
    check.add_argument(
        "--dataset", required=True, metavar="DATASET_URI", help="prepared dataset folder <store>/datasets/NAME/VERSION"
    )
    check.add_argument("--rows", type=positive_int, default=200, help="rows of each split to train on (default 200)")
    check.add_argument(
        "--hp", action="append", default=[], metavar="KEY=VALUE", help="set a hyperparameter (repeatable; typed)"
    )
    check.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    check.add_argument(
        "--timeout", type=positive_float, default=900.0, help="seconds the training may take in all (default 900)"
    )
    check.add_argument("--json", action="store_true", help="print the result as one JSON object")
    return parser


def _resolve(ref: str, overrides: list[str]) -> Any:
    """The spec with ``--hp`` applied and checked; a block name is loaded through the Prefect API."""
    from tasks.core.spec_files import looks_like_file
    from tasks.core.trainer_spec import parse_override
    from tasks.training.trainer_choice import resolve_trainer

    def resolve() -> Any:
        spec = resolve_trainer(ref)
        types = spec.declared_types()
        return spec.with_overrides(dict(parse_override(text, types) for text in overrides))

    if looks_like_file(ref):
        return resolve()
    from flows.prefect_server import prefect_api

    with prefect_api(lambda: None):
        return resolve()


def trainer_command(args: argparse.Namespace) -> int:
    """Run ``gpuflow trainer check``; returns the exit code."""
    from tasks.core.errors import DataNotFoundError, GpuflowError
    from tasks.training.trainer_check import CheckNotRun

    if not args.spec.strip():
        return _error(args, "SPEC is empty: give a trainer spec file or a saved TrainerSpec block name", EXIT_USAGE)
    try:
        spec = _resolve(args.spec, args.hp)
    except GpuflowError as exc:  # a spec or hyperparameter refused: nothing ran
        return _error(args, str(exc), EXIT_USAGE)
    from tasks.training.trainer_check import check_trainer
    from workloads.quiet import quiet_mlflow
    from workloads.store import store_from_env

    quiet_mlflow()
    signal.signal(signal.SIGTERM, _interrupt)  # stopped like Ctrl-C: the trainer stopped, the folder removed
    try:
        report = check_trainer(
            spec, args.dataset, store_from_env(), rows=args.rows, device=args.device, timeout=args.timeout
        )
    except KeyboardInterrupt:  # the launcher and its trainer were stopped, the temporary folder removed
        print("gpuflow: interrupted; the trainer was stopped", file=sys.stderr)
        return 130
    except (CheckNotRun, DataNotFoundError) as exc:  # no verdict on the trainer
        return _error(args, str(exc), EXIT_FAILED)
    except GpuflowError as exc:  # a spec the check cannot train (the built-in trainer, a missing working_dir)
        return _error(args, str(exc), EXIT_USAGE)
    failed = bool(report.failed)
    if args.json:
        print(
            json.dumps(
                {
                    "passed": not failed,
                    "points": [
                        {"point": p.name, "status": p.status, "detail": p.detail, "fix": p.fix} for p in report.points
                    ],
                    "summary": report.summary(),
                    "output_tail": report.output[-OUTPUT_TAIL:],
                },
                sort_keys=True,
            )
        )
    else:
        if failed:
            print(f"--- the launch's last {OUTPUT_TAIL} output lines ---", file=sys.stderr)
            for line in report.output[-OUTPUT_TAIL:]:
                print(line, file=sys.stderr)
            sys.stderr.flush()
        for point in report.points:
            print(point.line())
        print(report.summary())
    return EXIT_USAGE if failed else EXIT_OK


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _error(args: argparse.Namespace, message: str, code: int) -> int:
    if args.json:
        print(json.dumps({"error": message, "exit_code": code}))
    print(f"gpuflow: error: {message}", file=sys.stderr)
    return code
