"""``gpuflow run --json`` and the report of its run, end to end, as a newcomer runs them: a real process, an empty home,
no servers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_digits

from tests.fixtures.cli_processes import announced_ports, leftovers

ROOT = Path(__file__).resolve().parents[2]


def gpuflow(home: Path, *args: str, timeout: float = 420) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "GPUFLOW_"))}
    env.update(GPUFLOW_HOME=str(home / "gpuflow"), PREFECT_HOME=str(home / "prefect"), PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def dataset_dirs(home: Path) -> list[str]:
    root = home / "gpuflow" / "store" / "datasets"
    return sorted(str(p.relative_to(root)) for p in root.glob("*/*")) if root.exists() else []


def write_shuffled_digits(path: Path) -> None:
    digits = load_digits()
    frame = pd.DataFrame(digits.data, columns=[f"pixel_{i}" for i in range(64)])
    frame["label"] = np.random.default_rng(0).permutation(digits.target)
    frame.to_csv(path, index=False)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="module")
def first_run(home: Path) -> subprocess.CompletedProcess[str]:
    return gpuflow(home, "run", "--epochs", "15", "--json")


def test_first_run_registers_version_1_as_champion(first_run: subprocess.CompletedProcess[str]) -> None:
    assert first_run.returncode == 0, first_run.stderr[-3000:]
    result = last_json(first_run.stdout)
    assert result["model_version"] == "1"
    assert result["champion_version"] == "1"
    assert result["gate"]["passed"] is True
    assert result["metrics"]["accuracy"] > 0.9
    for key in ("dataset_version", "pipeline_run_id", "train_run_id", "model_name", "stage_seconds"):
        assert result[key], key
    assert set(result["stage_seconds"]) == {"prepare", "train", "evaluate", "rollout"}
    assert result["canary"]["decision"] == "promoted_without_canary"
    assert set(result["gpu"]["stages"]) == set(result["cost"]["stages"]) == {"prepare", "train", "evaluate", "rollout"}
    assert result["cost"]["run"]["total"] > 0  # no GPU here: priced in node-hours
    assert result["gpu"]["run"]["gpu_count"] == 0
    assert "quality gate" in first_run.stdout  # the human summary precedes the JSON line
    assert "promoted without canary" in first_run.stdout


def noisy_lines(run: subprocess.CompletedProcess[str]) -> list[str]:
    """Lines a user would read as trouble: warnings, errors, tracebacks."""
    return [
        line
        for line in (run.stderr + run.stdout).splitlines()
        if any(word in line for word in ("Traceback", "ERROR", "Warning", "WARNING", "warn("))
    ]


def test_successful_run_prints_no_warnings_errors_or_tracebacks(first_run: subprocess.CompletedProcess[str]) -> None:
    assert first_run.returncode == 0
    assert noisy_lines(first_run) == []


def test_successful_run_leaves_no_process_behind(home: Path, first_run: subprocess.CompletedProcess[str]) -> None:
    assert first_run.returncode == 0
    assert len(announced_ports(home)) == 1  # gpuflow's own temporary Prefect server, stopped before it exited
    assert leftovers(home) == []


def test_the_report_of_the_first_run_is_written_and_prints_nothing_noisy(
    home: Path, first_run: subprocess.CompletedProcess[str]
) -> None:
    assert first_run.returncode == 0
    run_id = last_json(first_run.stdout)["pipeline_run_id"]
    out = home / "report"
    report = gpuflow(home, "report", run_id, "--out", str(out), timeout=180)
    assert report.returncode == 0, report.stderr[-3000:]
    assert f"report of run {run_id}" in report.stdout
    assert (out / "report.md").read_text().startswith(f"# gpuflow report: pipeline run {run_id}")
    assert noisy_lines(report) == []  # Prefect's workers, drained at the end, once warned "Still processing items"
    assert leftovers(home) == []


def test_worse_model_fails_the_gate_and_champion_stays(home: Path, first_run: subprocess.CompletedProcess[str]) -> None:
    assert first_run.returncode == 0
    raw = home / "shuffled.csv"
    write_shuffled_digits(raw)
    # the same model name, so the worse version meets the champion; the dataset is named after its file
    second = gpuflow(home, "run", "--data", str(raw), "--model-name", "gpuflow-digits", "--epochs", "1", "--json")
    assert second.returncode == 3, second.stderr[-3000:]
    result = last_json(second.stdout)
    assert result["dataset_name"] == "shuffled"
    assert result["gate"]["passed"] is False
    assert any("accuracy" in reason for reason in result["gate"]["reasons"])
    assert result["model_version"] == "2"
    assert result["champion_version"] == "1"
    assert second.stderr.strip().splitlines()[-1].startswith("gpuflow: quality gate failed")


def test_same_data_again_reuses_the_dataset_and_a_good_canary_is_promoted(
    home: Path, first_run: subprocess.CompletedProcess[str]
) -> None:
    assert first_run.returncode == 0
    # 10 s steps, as `make run`: twice the requests the first step needs (200/s x 10 s x 10 % = 200 >= 100),
    # so a loaded machine that sends traffic slower still reaches min_requests.
    again = gpuflow(home, "run", "--epochs", "15", "--canary-seconds", "10", "--json")
    assert again.returncode == 0, again.stderr[-3000:]
    first, second = last_json(first_run.stdout), last_json(again.stdout)
    assert second["dataset_version"] == first["dataset_version"]
    assert second["dataset_cache_hit"] is True
    canary = second["canary"]
    assert canary["decision"] == "promoted"
    assert [step["weight"] for step in canary["steps"]] == [10, 25, 50, 100]
    assert second["champion_version"] == second["model_version"] != first["model_version"]
    assert "step 1 at 10%" in again.stdout
    assert noisy_lines(again) == []  # servers started and stopped by the canary included


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "no file"),
        ("", "empty"),
        ("pixel_0,label\n1,2\n", "missing"),
    ],
    ids=["missing-file", "empty-file", "missing-columns"],
)
def test_bad_input_exits_non_zero_with_a_clear_message_and_no_dataset(
    tmp_path: Path, content: str | None, expected: str
) -> None:
    raw = tmp_path / "raw.csv"
    if content is not None:
        raw.write_text(content)
    result = gpuflow(tmp_path, "run", "--data", str(raw), "--json")
    assert result.returncode == 1
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("gpuflow: error:")
    assert expected in last_line.lower()
    assert "Traceback" not in result.stderr
    assert dataset_dirs(tmp_path) == []
    assert "error" in last_json(result.stdout)
