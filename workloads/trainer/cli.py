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

from workloads.quiet import quiet_mlflow
from workloads.telemetry.milestones import Milestones
from workloads.trainer.config import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, TrainerError, parse_config
from workloads.trainer.telemetry import TrainingTelemetry, own_device_environ


def main(argv: Sequence[str] | None = None) -> int:
    """Run the trainer; returns the process exit code (see the package docstring)."""
    started = time.perf_counter()
    milestones = Milestones()  # time to useful work counts from here: start-up and imports included
    telemetry: TrainingTelemetry | None = None
    prefix = ""
    try:
        config = parse_config(sys.argv[1:] if argv is None else argv)
        ranks = config.ranks
        prefix = f"[rank {ranks.rank}] " if ranks.distributed else ""  # torchrun merges the ranks' output
        # The GPU is ours from now on, imports included: sample before torch and MLflow load.
        # Under torchrun each rank samples only its own device.
        environ = own_device_environ(os.environ, ranks.local_rank) if ranks.distributed else None
        telemetry = TrainingTelemetry(config.telemetry_interval, milestones, environ).start()
        # Before torch and MLflow are imported: deterministic cuBLAS needs this before CUDA starts,
        # and MLflow reads its logging switches at import.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        quiet_mlflow()
        from workloads.trainer.run import train

        train(config, started, telemetry)
    except TrainerError as exc:
        print(f"error: {prefix}{exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"error: {prefix}interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except Exception as exc:  # unexpected: worth a retry (it resumes); keep the traceback for the logs
        traceback.print_exc()
        print(f"error: {prefix}training failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    finally:
        if telemetry is not None:
            telemetry.stop()
    return EXIT_OK
