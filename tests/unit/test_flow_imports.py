"""Loading a stage's flow module must stay cheap: a triggered run is Running only once its module is imported.

MLflow (~0.7 s), torch, scikit-learn and matplotlib (~2 s together on 2 cores) are imported by the flow body
when it needs them, after the run is Running, never by ``import flows.<stage>``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from deployments import PROJECT_ROOT

HEAVY = ("mlflow", "torch", "sklearn", "matplotlib", "pandas", "boto3")


MODULES = ("flows.prepare", "flows.evaluate", "flows.rollout", "flows.sensors", "flows.train", "flows.pipeline")


@pytest.fixture(scope="module")
def imports() -> Iterator[dict[str, subprocess.Popen[str]]]:
    """One fresh interpreter per module, all started at once: each import is seconds of CPU, and one after the
    other they were the longest wait of the unit tests."""
    # As a deployment's run imports it: with the worker's PREFECT_API_URL (never contacted by an import). Without
    # one, importing a flow also readies gpuflow's own ephemeral server for Python callers (flows/prefect_server.py).
    env = {**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api"}
    procs = {}
    for module in MODULES:
        code = f"import sys, json, {module}; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
        procs[module] = subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    yield procs
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.parametrize("module", MODULES)
def test_importing_a_flow_module_imports_no_heavy_library(
    module: str, imports: dict[str, subprocess.Popen[str]]
) -> None:
    out, err = imports[module].communicate(timeout=120)
    assert imports[module].returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1]) == [], f"import {module} pulled in heavy libraries"
