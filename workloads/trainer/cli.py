"""Entry point: turn every outcome into the documented exit code and one line on stderr.

Only argument parsing happens before the heavy imports, so a bad command line fails in a blink.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Sequence

from workloads.trainer.config import EXIT_FAILED, EXIT_OK, TrainerError, parse_config
from workloads.trainer.reporting import quiet_mlflow


def main(argv: Sequence[str] | None = None) -> int:
    """Run the trainer; returns the process exit code (see the package docstring)."""
    started = time.perf_counter()
    try:
        config = parse_config(sys.argv[1:] if argv is None else argv)
        # Before torch and MLflow are imported: deterministic cuBLAS needs this before CUDA starts,
        # and MLflow reads its logging switches at import.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        quiet_mlflow()
        from workloads.trainer.run import train

        train(config, started)
    except TrainerError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr, flush=True)
        return 130
    except Exception as exc:  # unexpected: worth a retry (it resumes); keep the traceback for the logs
        traceback.print_exc()
        print(f"error: training failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    return EXIT_OK
