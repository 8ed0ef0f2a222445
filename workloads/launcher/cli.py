"""Entry point: every outcome becomes the documented exit code and, on failure, one last line on stderr.

The GPU sampler starts before the heavy imports (MLflow), so the launch's GPU time includes them.
"""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Sequence

from workloads.launcher.config import parse_config
from workloads.launcher.telemetry import LaunchTelemetry
from workloads.quiet import quiet_mlflow
from workloads.store import StoreError
from workloads.trainer.config import EXIT_FAILED, EXIT_INTERRUPTED, TrainerError


def main(argv: Sequence[str] | None = None) -> int:
    started = time.perf_counter()
    telemetry: LaunchTelemetry | None = None
    try:
        config = parse_config(sys.argv[1:] if argv is None else argv)
        telemetry = LaunchTelemetry(config.telemetry_interval)
        telemetry.start()
        quiet_mlflow()
        from workloads.launcher.run import Launch

        return Launch(config, telemetry, started).run()
    except TrainerError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    except StoreError as exc:
        print(f"error: the store failed: {exc}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except Exception as exc:  # MLflow unreachable, a bug: worth a retry; keep the traceback for the logs
        traceback.print_exc()
        print(f"error: launcher failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    finally:
        if telemetry is not None:
            telemetry.stop()
