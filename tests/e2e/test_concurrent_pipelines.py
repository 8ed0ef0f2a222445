"""Four ``ml_pipeline`` calls at once from Python threads of one process on one fresh home (issue 12).

What a notebook or a service does: no ``PREFECT_API_URL``, so the flows start the embedded Prefect server
(gpuflow's, in Prefect's ephemeral-server slot: one start for all threads, nothing left behind), share the
MLflow SQLite store and queue their rollouts on the model's concurrency limit. The process's output is read
through a pipe, as a script would.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.fixtures.cli_processes import ROOT, cli_env, leftovers

RUNS = 4


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """Four ``ml_pipeline`` calls from threads of one Python process on one fresh home, read through a pipe."""
    home = tmp_path_factory.mktemp("concurrent-python")
    run = subprocess.run(
        [sys.executable, "-m", "tests.fixtures.concurrent_pipelines", str(RUNS)],
        cwd=ROOT,
        env=cli_env(home),
        capture_output=True,
        text=True,
        timeout=1200,
    )
    return home, run


def test_four_ml_pipeline_calls_from_python_threads_each_return_a_verdict_and_share_one_registry(
    pipelines: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    home, run = pipelines
    assert run.returncode == 0, run.stderr[-3000:]
    outcomes = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert len(outcomes) == RUNS
    assert {o["outcome"] for o in outcomes} <= {"passed", "GateFailed", "RolledBack"}, outcomes
    assert sorted(int(o["model_version"]) for o in outcomes) == list(range(1, RUNS + 1))
    assert len({o["dataset_version"] for o in outcomes}) == 1
    assert [p.name for p in (home / "gpuflow" / "store" / "datasets").glob("*/*")] == [outcomes[0]["dataset_version"]]
    client = MlflowClient(f"sqlite:///{home / 'gpuflow' / 'mlflow.db'}")
    versions = client.search_model_versions("name='gpuflow-digits'")
    champions = [v.version for v in versions if "champion" in client.get_model_version(v.name, v.version).aliases]
    assert len(champions) == 1
    noisy = [line for line in (run.stdout + run.stderr).splitlines() if "Traceback" in line or " ERROR " in line]
    assert noisy == []
    assert leftovers(home) == []
