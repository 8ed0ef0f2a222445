"""``gpuflow trainer check`` as a user runs it: the real CLI process, the real launcher, real trainer programs.

Each test writes a trainer spec, runs ``gpuflow trainer check SPEC --dataset URI`` on a prepared digits dataset
and reads what a user sees: the exit code, one line per contract point with its fix, the summary line; and
that nothing was left behind (its temporary folder, any process).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures.cli_processes import ROOT, cli_env, leftovers, tracebacks
from tests.fixtures.datasets import write_digits_dataset

COMMAND_TRAINER = ["python", "tests/fixtures/trainers/command_trainer.py"]
POINTS = (
    "command starts / imports",
    "hyperparameters accepted",
    "metrics reported",
    "model logged",
    "model loads",
    "signature fits the dataset",
    "output shape per task",
    "exit code meaning",
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    return write_digits_dataset(tmp_path_factory.mktemp("check-store"))


def check(tmp_path: Path, spec: dict[str, Any], dataset: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the check; assert it left no temporary folder and no process behind."""
    path = tmp_path / "trainer.yaml"
    path.write_text(yaml.safe_dump(spec))
    scratch = tmp_path / "tmp"
    scratch.mkdir(exist_ok=True)
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", "trainer", "check", str(path), "--dataset", dataset, *args],
        cwd=ROOT,
        env={**cli_env(tmp_path), "TMPDIR": str(scratch), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert list(scratch.iterdir()) == []
    assert leftovers(tmp_path) == []
    return result


def points(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """Each point's verdict (what follows ``POINT: ``) from stdout."""
    found = {}
    for line in result.stdout.splitlines():
        name, sep, verdict = line.partition(": ")
        if sep and name in POINTS:
            found[name] = verdict
    assert list(found) == list(POINTS), result.stdout
    return found


def summary(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout.strip().splitlines()[-1]


def test_a_good_trainer_passes_every_point(tmp_path: Path, dataset: str) -> None:
    spec = {"command": COMMAND_TRAINER, "hyperparameters": {"steps": 2}, "hyperparameter_types": {"steps": "int"}}
    result = check(tmp_path, spec, dataset, "--rows", "150")

    assert result.returncode == 0, result.stdout + result.stderr
    verdicts = points(result)
    assert all(v.startswith("pass") for v in verdicts.values()), verdicts
    assert verdicts["hyperparameters accepted"] == "pass (1 declared type(s))"
    assert verdicts["exit code meaning"] == "pass (0: trained)"
    assert summary(result).startswith("8 passed, 0 failed, 0 not checked: the trainer keeps contract gpuflow-trainer/1")
    assert "150 rows per split of digits/" in summary(result)
    assert result.stderr == ""  # clean: the trainer's own output is shown only when a point fails


def test_an_sdk_entry_point_passes_and_json_says_so(tmp_path: Path, dataset: str) -> None:
    result = check(tmp_path, {"entry_point": "tests.fixtures.trainers.sdk_trainers:train_sklearn"}, dataset, "--json")

    assert result.returncode == 0, result.stdout + result.stderr
    payload = json.loads(result.stdout)
    assert payload["passed"] is True
    assert [p["point"] for p in payload["points"]] == list(POINTS)
    assert {p["status"] for p in payload["points"]} == {"pass"}
    assert payload["summary"].startswith("8 passed, 0 failed, 0 not checked")


@pytest.mark.parametrize(
    "entry_point", [{"entry_point": "workloads.trainer.entry:train"}, {}], ids=["named", "default"]
)
def test_the_builtin_mlp_on_the_sdk_keeps_the_contract(
    tmp_path: Path, dataset: str, entry_point: dict[str, str]
) -> None:
    """Named by its entry point or as the default trainer (a spec with hyperparameters only): the same check."""
    spec = {**entry_point, "hyperparameters": {"epochs": 1, "hidden_size": 16}}
    result = check(tmp_path, spec, dataset, "--rows", "150")

    assert result.returncode == 0, result.stdout + result.stderr
    verdicts = points(result)
    assert all(v.startswith("pass") for v in verdicts.values()), verdicts
    assert summary(result).startswith("8 passed, 0 failed, 0 not checked: the trainer keeps contract gpuflow-trainer/1")


def test_command_not_found(tmp_path: Path, dataset: str) -> None:
    result = check(tmp_path, {"command": ["gpuflow-no-such-trainer", "--epochs", "3"]}, dataset)

    assert result.returncode == 2
    assert points(result)["command starts / imports"] == (
        "FAIL: trainer command 'gpuflow-no-such-trainer' was not found on PATH: install it or give its full path"
        " — fix: install the program, or give its full path as the first word of the spec's command"
    )
    assert points(result)["model logged"] == "not checked (the trainer did not start)"
    assert summary(result).startswith("1 passed, 1 failed, 6 not checked: the trainer breaks contract")


def test_import_error_in_user_code(tmp_path: Path, dataset: str) -> None:
    result = check(tmp_path, {"entry_point": "tests.fixtures.trainers.broken_import:train"}, dataset)

    assert result.returncode == 2
    verdict = points(result)["command starts / imports"]
    assert verdict.startswith("FAIL: entry point 'tests.fixtures.trainers.broken_import:train': importing ")
    assert "No module named 'gpuflow_missing_dependency_for_tests'" in verdict
    assert verdict.endswith(
        "— fix: install the missing package where the trainer runs, or correct the import (the traceback above "
        "shows the line)"
    )
    assert points(result)["exit code meaning"] == "pass (2: configuration error, with its failure line)"
    assert result.stderr.count("Traceback") == 1  # the user's traceback, shown once
    assert 'broken_import.py", line 3' in result.stderr


def test_exit_0_without_a_model(tmp_path: Path, dataset: str) -> None:
    result = check(tmp_path, {"command": COMMAND_TRAINER, "hyperparameters": {"steps": 1, "no_model": True}}, dataset)

    assert result.returncode == 2
    verdicts = points(result)
    assert verdicts["metrics reported"] == "pass"
    assert verdicts["model logged"].startswith("FAIL: exited 0 but logged no model to run ")
    assert verdicts["model logged"].endswith(
        "— fix: log the model into MLFLOW_RUN_ID named 'model': ctx.log_model(model), or "
        "mlflow.<flavor>.log_model(model, name='model', signature=...)"
    )
    assert verdicts["model loads"] == "not checked (model logged failed)"
    assert verdicts["exit code meaning"] == "pass (0: trained)"


def test_signature_mismatch_names_both_shapes(tmp_path: Path, dataset: str) -> None:
    spec = {"command": COMMAND_TRAINER, "hyperparameters": {"steps": 1, "wrong_features": True}}
    result = check(tmp_path, spec, dataset)

    assert result.returncode == 2
    verdicts = points(result)
    assert verdicts["model logged"] == verdicts["model loads"] == "pass"
    assert (
        "signature takes a tensor [N, 10]; the dataset's features are [N, 64]" in verdicts["signature fits the dataset"]
    )
    assert verdicts["signature fits the dataset"].startswith("FAIL: model models:/m-")
    assert "— fix: log it with signature=mlflow.models.infer_signature(x, y)" in verdicts["signature fits the dataset"]
    assert verdicts["output shape per task"] == "not checked (signature fits the dataset failed)"


def test_no_primary_metric(tmp_path: Path, dataset: str) -> None:
    result = check(tmp_path, {"command": COMMAND_TRAINER, "hyperparameters": {"steps": 1, "no_primary": True}}, dataset)

    assert result.returncode == 2
    verdict = points(result)["metrics reported"]
    assert verdict.startswith(
        "FAIL: exited 0 but never reported val_accuracy, the classification task's primary metric, to run "
    )
    assert "— fix: append" in verdict and "ctx.report(step, {ctx.primary_metric: value})" in verdict
    assert points(result)["output shape per task"] == "pass"


def test_stall(tmp_path: Path, dataset: str) -> None:
    spec = {
        "command": COMMAND_TRAINER,
        "hyperparameters": {"steps": 3, "stall_after": 1},
        "stall_timeout_seconds": 3,
    }
    result = check(tmp_path, spec, dataset)

    assert result.returncode == 2
    verdicts = points(result)
    assert verdicts["metrics reported"] == (
        "FAIL: the trainer wrote no metrics line for 3 s (the stall timeout) and was stopped — fix: append a line "
        "to GPUFLOW_METRICS_FILE (ctx.report) at least every 3 s, or raise the spec's stall_timeout_seconds"
    )
    assert verdicts["model logged"] == "not checked (the trainer was stopped for stalling)"


def test_a_mistyped_hyperparameter_is_refused_before_anything_runs(tmp_path: Path, dataset: str) -> None:
    spec = {"command": COMMAND_TRAINER, "hyperparameter_types": {"steps": "int"}}
    result = check(tmp_path, spec, dataset, "--hp", "steps=two")

    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip() == "gpuflow: error: hyperparameter 'steps' must be int, got 'two'"
    assert tracebacks(result) == []


def test_a_missing_dataset_means_the_check_could_not_run(tmp_path: Path, dataset: str) -> None:
    result = check(tmp_path, {"command": COMMAND_TRAINER}, dataset + "-gone")

    assert result.returncode == 1
    assert result.stderr.strip().startswith(f"gpuflow: error: no prepared dataset at {dataset}-gone: ")
