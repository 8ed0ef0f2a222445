"""Four ``gpuflow run --json`` at once on one fresh home: as clean as one run, one coherent registry (issue 12).

Each command starts its own temporary Prefect server on the home's database (one start-up at a time, under
a file lock), the MLflow store is created once under a lock, and rollouts of the model queue on its
concurrency limit. Output is read through pipes, as a script would. Select this module alone with
``pytest tests/e2e/test_concurrent_runs.py``; it takes a few minutes on 2 cores.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.fixtures.cli_processes import announced_ports, gpuflow_process, leftovers

RUNS = 4
CANARY_SECONDS = "5"  # the shortest feasible window: 200 req/s x 5 s x 10 % = 100 = min_requests


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[int, str, str]]]:
    home = tmp_path_factory.mktemp("concurrent")
    procs = [
        gpuflow_process(home, "run", "--epochs", "15", "--canary-seconds", CANARY_SECONDS, "--json")
        for _ in range(RUNS)
    ]
    outcomes = []
    for proc in procs:
        try:
            stdout, stderr = proc.communicate(timeout=1200)
        except subprocess.TimeoutExpired:
            for other in procs:
                other.kill()
            raise
        outcomes.append((proc.returncode, stdout, stderr))
    return home, outcomes


def test_every_run_returns_a_verdict(runs: tuple[Path, list[tuple[int, str, str]]]) -> None:
    _, outcomes = runs
    for code, _, stderr in outcomes:
        assert code in (0, 3, 4), stderr[-3000:]


def test_no_traceback_or_error_line(runs: tuple[Path, list[tuple[int, str, str]]]) -> None:
    _, outcomes = runs
    noisy = [
        line
        for _, stdout, stderr in outcomes
        for line in (stdout + stderr).splitlines()
        if "Traceback" in line or " ERROR " in line
    ]
    assert noisy == []


def test_one_coherent_registry_and_one_dataset(runs: tuple[Path, list[tuple[int, str, str]]]) -> None:
    home, outcomes = runs
    results = [json.loads(stdout.strip().splitlines()[-1]) for _, stdout, _ in outcomes]
    assert sorted(int(r["model_version"]) for r in results) == list(range(1, RUNS + 1))
    assert len({r["dataset_version"] for r in results}) == 1
    datasets = home / "gpuflow" / "store" / "datasets"
    assert [p.name for p in datasets.glob("*/*")] == [results[0]["dataset_version"]]  # published once
    client = MlflowClient(f"sqlite:///{home / 'gpuflow' / 'mlflow.db'}")
    versions = client.search_model_versions("name='gpuflow-digits'")
    assert sorted(int(v.version) for v in versions) == list(range(1, RUNS + 1))
    champions = [str(v.version) for v in versions if "champion" in client.get_model_version(v.name, v.version).aliases]
    assert len(champions) == 1
    promoted = [r for r in results if r["canary"] and r["canary"]["decision"] != "rolled_back"]
    assert champions[0] in {r["model_version"] for r in promoted}


def test_each_command_ran_its_own_server_and_left_nothing(runs: tuple[Path, list[tuple[int, str, str]]]) -> None:
    home, _ = runs
    assert len(announced_ports(home)) == RUNS
    assert leftovers(home) == []
