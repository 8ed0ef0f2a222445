"""Entry point: turn every outcome into the documented exit code and one line on stderr.

Only argument parsing (and starting the GPU sampler) happens before the heavy imports, so a bad command line
fails in a blink and the GPU time of the imports is counted.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Sequence

from workloads.telemetry.milestones import Milestones
from workloads.trainer.config import EXIT_FAILED, EXIT_OK, TrainerError, parse_config
from workloads.trainer.reporting import quiet_mlflow
from workloads.trainer.telemetry import TrainingTelemetry


def main(argv: Sequence[str] | None = None) -> int:
    """Run the trainer; returns the process exit code (see the package docstring)."""
    started = time.perf_counter()
    milestones = Milestones()  # time to useful work counts from here: start-up and imports included
    telemetry: TrainingTelemetry | None = None
    try:
        config = parse_config(sys.argv[1:] if argv is None else argv)
        # The GPU is ours from now on, imports included: sample before torch and MLflow load.
        telemetry = TrainingTelemetry(config.telemetry_interval, milestones).start()
        # Before torch and MLflow are imported: deterministic cuBLAS needs this before CUDA starts,
        # and MLflow reads its logging switches at import.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        quiet_mlflow()
        from workloads.trainer.run import train

        train(config, started, telemetry)
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
    finally:
        if telemetry is not None:
            telemetry.stop()
    return EXIT_OK
