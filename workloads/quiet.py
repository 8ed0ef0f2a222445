"""Quiet defaults for every program whose output a user reads (the CLI, the trainer, the launcher, SDK trainers,
the model server) and for the tests and benchmarks that start them: one declaration of the environment, plus
MLflow's loggers and warnings for the workloads.

Its own module because every workload needs it and none should import another's package for it.
"""

from __future__ import annotations

import logging
import os
import warnings

QUIET_ENVIRONMENT = {
    # No usage telemetry from anything gpuflow runs. MLflow reads DO_NOT_TRACK only as "true"; its telemetry
    # otherwise tries the network from a thread and, when that fails, deletes an environment variable under any
    # thread reading os.environ (seen as a KeyError in a test's MLflow call).
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "GIT_PYTHON_REFRESH": "quiet",
}
"""Defaults for every gpuflow program and test: no telemetry, no progress bars, no git warning."""


def quiet_environment() -> None:
    """Apply :data:`QUIET_ENVIRONMENT` where the user has not set a value of their own."""
    for name, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)


def quiet_mlflow() -> None:
    """Silence MLflow's INFO chatter, progress bars and advisory warnings; keep real errors."""
    quiet_environment()
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    for name in ("mlflow", "alembic", "urllib3", "botocore"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"mlflow(\..*)?")
    warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.export(\..*)?")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch(\..*)?")
