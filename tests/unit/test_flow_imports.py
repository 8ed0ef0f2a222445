"""Loading a stage's flow module must stay cheap: a triggered run is Running only once its module is imported.

MLflow (~0.7 s), torch, scikit-learn and matplotlib (~2 s together on 2 cores) are imported by the flow body
when it needs them, after the run is Running, never by ``import flows.<stage>``.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from deployments import PROJECT_ROOT

HEAVY = ("mlflow", "torch", "sklearn", "matplotlib", "pandas", "boto3")


@pytest.mark.parametrize(
    "module",
    [
        "flows.prepare",
        "flows.evaluate",
        "flows.rollout",
        "flows.sensors",
        "flows.train",
        "flows.pipeline",
    ],
)
def test_importing_a_flow_module_imports_no_heavy_library(module: str) -> None:
    code = f"import sys, json, {module}; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [], f"import {module} pulled in heavy libraries"
