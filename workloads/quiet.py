"""MLflow made quiet for programs whose output a user reads (the trainer, the launcher, SDK trainers, the CLI).

Its own module because every workload needs it and none should import another's package for it.
"""

from __future__ import annotations

import logging
import os
import warnings


def quiet_mlflow() -> None:
    """Silence MLflow's INFO chatter, progress bars and advisory warnings; keep real errors."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    # No usage telemetry from pods and trainers: it tries the network from a thread and, when that fails, deletes
    # an environment variable under any thread reading os.environ (seen as a KeyError in a test's MLflow call).
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    for name in ("mlflow", "alembic", "urllib3", "botocore"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"mlflow(\..*)?")
    warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.export(\..*)?")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch(\..*)?")
