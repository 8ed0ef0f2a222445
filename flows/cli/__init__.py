"""The ``gpuflow`` command: every subcommand, one module each, mounted on one argparse program.

``run`` (run_command.py), ``serve`` (serve_command.py), ``report`` (report_command.py), ``lineage``
(lineage_command.py), ``manifests`` (manifests_command.py), ``bootstrap`` (bootstrap_command.py), ``emit``
(emit_command.py), ``spec`` (spec_command.py) and ``trainer`` (trainer_command.py); the options and exit codes
they share are in arguments.py. The temporary Prefect server a command owns is flows/prefect_server.py (the
flows use it too). Building the parser imports only argparse-level modules, so ``gpuflow --help`` and
``gpuflow serve`` start without Prefect, torch or MLflow.

Exit codes: 0 success; 1 a stage failed; 2 bad usage; 3 the quality gate rejected the model;
4 the canary was rolled back.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from flows.cli.arguments import EXIT_USAGE
from flows.cli.bootstrap_command import add_bootstrap_parser
from flows.cli.emit_command import add_emit_parser
from flows.cli.lineage_command import add_lineage_parser
from flows.cli.manifests_command import add_manifests_parser
from flows.cli.report_command import add_report_parser
from flows.cli.run_command import add_run_parser
from flows.cli.serve_command import add_serve_parser
from flows.cli.spec_command import add_spec_parser
from flows.cli.trainer_command import add_trainer_parser
from workloads.quiet import quiet_environment


class _NoTracebackForGpuflowErrors(logging.Filter):
    """On the console, errors gpuflow raised on purpose show their message, not a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        from tasks.core.errors import GpuflowError

        if record.exc_info and isinstance(record.exc_info[1], GpuflowError):
            record.exc_info = None
            record.exc_text = None
        return True


def _configure_logging() -> None:
    for name in ("mlflow", "alembic", "urllib3", "botocore", "git"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.ERROR)
    tidy = _NoTracebackForGpuflowErrors()
    for name in ("prefect", "prefect.flow_runs", "prefect.task_runs", ""):
        for handler in logging.getLogger(name).handlers:
            handler.addFilter(tidy)


class _GpuflowParser(argparse.ArgumentParser):
    """Keeps its subcommands, so that an unknown option is reported with the usage of its command."""

    commands: argparse._SubParsersAction[argparse.ArgumentParser]


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Plain argparse hands a command's unknown options back to the top level, whose error shows only
    ``gpuflow [-h] COMMAND ...``: no help for someone who mistyped one of ``gpuflow report``'s options."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        parser.commands.choices[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def build_parser() -> _GpuflowParser:
    parser = _GpuflowParser(
        prog="gpuflow",
        description="Event-driven GPU ML pipelines on Prefect, Kubernetes and MLflow.",
    )
    commands = parser.commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=argparse.ArgumentParser
    )
    add_run_parser(commands)
    add_serve_parser(commands)
    add_report_parser(commands)
    add_lineage_parser(commands)
    add_bootstrap_parser(commands)
    add_emit_parser(commands)
    add_manifests_parser(commands)
    add_spec_parser(commands)
    add_trainer_parser(commands)
    return parser


def _nothing() -> None:
    return None


def _import_report() -> None:
    import flows.report  # noqa: F401 - MLflow and matplotlib


def _note_interrupts() -> threading.Event:
    """Ctrl-C still raises KeyboardInterrupt, and is also remembered, so main can tell an interrupt it became."""
    interrupted = threading.Event()

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        interrupted.set()
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, on_sigint)
    return interrupted


def _exit_on_another_interrupt() -> None:
    """The interrupt is handled and everything stopped: another Ctrl-C while the interpreter exits ends it at once,
    still with 130, instead of a KeyboardInterrupt in the middle of ``sys.exit`` (Python then ends by SIGINT)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, lambda signum, frame: os._exit(130))


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    quiet_environment()  # a successful run's output free of noise that is not ours to show
    if args.command == "serve":
        from flows.cli.serve_command import serve_command

        return serve_command(args)
    if args.command == "bootstrap":
        return int(args.handler(args))
    if args.command == "spec":
        from flows.cli.spec_command import spec_command

        return spec_command(args)
    if args.command == "trainer":
        from flows.cli.trainer_command import trainer_command

        return trainer_command(args)
    if args.command == "manifests":
        from flows.cli.manifests_command import manifests_command

        return manifests_command(args)
    if args.command == "run":
        from flows.cli.run_command import refuse_early

        if (refused := refuse_early(args)) is not None:
            return refused
    interrupted = _note_interrupts()
    try:
        import prefect.logging.configuration

        from flows.prefect_server import prefect_api

        prefect.logging.configuration.setup_logging()  # Prefect's handlers first, so we can tune them
        _configure_logging()
        if args.command == "run":
            from flows.cli.run_command import run_command

            return run_command(args)
        if args.command == "report":
            from flows.cli.report_command import report_command

            with prefect_api(_import_report):
                return report_command(args)
        if args.command == "lineage":
            from flows.cli.lineage_command import lineage_command

            if not (args.tracking or args.pricing):  # no block to load: no Prefect API needed
                return lineage_command(args)
            with prefect_api(_nothing):
                return lineage_command(args)
        if args.command == "emit":
            with prefect_api(_nothing):
                return int(args.handler(args))
    except BaseException as exc:
        # Native code running when Ctrl-C lands may turn the KeyboardInterrupt into its own error (pydantic-core
        # building a schema during an import raised SchemaError): an interrupt is an interrupt whatever it became.
        if not (isinstance(exc, KeyboardInterrupt) or interrupted.is_set()):
            raise
        _exit_on_another_interrupt()
        print("gpuflow: interrupted; every process it started was stopped", file=sys.stderr)
        return 130
    return EXIT_USAGE
