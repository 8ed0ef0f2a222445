"""``python -m workloads.server`` and ``workloads.server.main(argv)``: parse, set up logging, run, exit code.

No Prefect and nothing from tasks/ is imported: the same command runs in a pod whose image has only the
workloads. ``gpuflow serve`` calls :func:`main` in-process.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence

from workloads.server.config import EXIT_ERROR, EXIT_OK, EXIT_USAGE, ServerConfig, parse_args

log = logging.getLogger("workloads.server")


def _runner(config: ServerConfig) -> asyncio.Runner:
    """An event loop runner: uvloop's loop when installed (and not ``--loop asyncio``), else asyncio's."""
    if config.loop == "auto":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return asyncio.Runner(loop_factory=uvloop.new_event_loop)
    return asyncio.Runner()


def run(config: ServerConfig) -> int:
    """Serve until a signal; returns the exit code."""
    import numpy as np

    from workloads.server.server import serve

    # Overflow to inf while converting to float32 is detected and refused per request; no warnings needed.
    np.seterr(over="ignore", invalid="ignore")
    with _runner(config) as runner:
        return runner.run(serve(config))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server with ``argv`` (``sys.argv[1:]`` when None); returns the exit code (see config.EXIT_*)."""
    try:
        config = parse_args(argv)
    except SystemExit as exc:  # argparse: 0 after --help, 2 on bad arguments (message already printed)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    logging.basicConfig(
        level=config.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    log.setLevel(config.log_level)
    try:
        return run(config)
    except KeyboardInterrupt:
        return EXIT_OK
    except Exception:
        log.exception("the server failed")
        return EXIT_ERROR
