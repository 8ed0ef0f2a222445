"""gpuflow's programs start MLflow without its usage telemetry.

MLflow reads ``DO_NOT_TRACK`` only as ``"true"``; otherwise its telemetry client tries the network from a thread
and, when that fails, deletes an environment variable while other threads may be reading ``os.environ`` (a test's
MLflow call once failed with ``KeyError: '_MLFLOW_TELEMETRY_SESSION_ID'`` that way). Checked in a fresh
interpreter with none of the CI variables that also turn it off.
"""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

PROBE = """
{setup}
import mlflow
from mlflow.telemetry.client import get_telemetry_client
print(get_telemetry_client() is not None)
"""


def telemetry_started(setup: str) -> bool:
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "DO_NOT_TRACK": "1"}  # as gpuflow's CLI sets it
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(setup=setup)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1] == "True"


def test_mlflow_alone_would_start_its_telemetry_client() -> None:  # what the fix is for
    assert telemetry_started("")


def test_quiet_mlflow_keeps_it_off() -> None:
    assert not telemetry_started("from workloads.quiet import quiet_mlflow; quiet_mlflow()")
