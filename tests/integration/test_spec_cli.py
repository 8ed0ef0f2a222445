"""``gpuflow spec infer`` then ``gpuflow spec check``, as a user runs them: subprocesses, output through a pipe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from deployments import PROJECT_ROOT
from tests.fixtures.spec_data import breast_cancer_csv, diabetes_csv


def gpuflow(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,  # stdout and stderr read through pipes, as a script would
        text=True,
        timeout=120,
    )


def test_infer_writes_a_spec_that_check_accepts_and_check_names_a_bad_row(tmp_path: Path) -> None:
    data = breast_cancer_csv(tmp_path)
    inferred = gpuflow("spec", "infer", str(data), "--target", "diagnosis", "-o", "spec.yaml", cwd=tmp_path)
    assert inferred.returncode == 0, inferred.stderr
    assert "wrote spec.yaml: 30 feature column(s), target 'diagnosis' (class)" in inferred.stdout
    spec = yaml.safe_load((tmp_path / "spec.yaml").read_text())
    assert spec["target"] == {"name": "diagnosis", "type": "class", "classes": ["benign", "malignant"]}
    assert {c["type"] for c in spec["columns"]} == {"float"}
    radius = next(c for c in spec["columns"] if c["name"] == "mean_radius")
    assert radius["min"] == 6.981 and radius["max"] == 28.11

    checked = gpuflow("spec", "check", "spec.yaml", str(data), cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert "matches the spec (classification); rows train 397, val 86, test 86" in checked.stdout

    bad = tmp_path / "bad.csv"
    lines = data.read_text().splitlines()
    lines[5] = lines[5].rsplit(",", 1)[0] + ",unsure"
    bad.write_text("\n".join(lines) + "\n")
    refused = gpuflow("spec", "check", "spec.yaml", str(bad), cwd=tmp_path)
    assert refused.returncode == 1
    assert refused.stderr.startswith("gpuflow: error: ")
    assert "column 'diagnosis'" in refused.stderr and "'unsure'" in refused.stderr and "data row(s) 5" in refused.stderr
    assert not (tmp_path / ".gpuflow").exists()  # nothing published, no store made


def test_infer_makes_a_float_target_a_regression_and_prints_yaml(tmp_path: Path) -> None:
    data = diabetes_csv(tmp_path)
    inferred = gpuflow("spec", "infer", str(data), "--target", "progression", cwd=tmp_path)
    assert inferred.returncode == 0, inferred.stderr
    spec = yaml.safe_load(inferred.stdout)
    assert spec["target"] == {"name": "progression", "type": "float"}
    (tmp_path / "diabetes.yaml").write_text(inferred.stdout)
    checked = gpuflow("spec", "check", "--json", "diabetes.yaml", str(data), cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    result = json.loads(checked.stdout.splitlines()[-1])
    assert result["task"] == "regression" and sum(result["rows"].values()) == 442 and len(result["version"]) == 16


def test_a_bad_spec_is_refused_with_the_field_named(tmp_path: Path) -> None:
    data = diabetes_csv(tmp_path)
    (tmp_path / "spec.yaml").write_text(
        "columns: [{name: age, type: number}]\ntarget: {name: progression, type: float}\n"
    )
    refused = gpuflow("spec", "check", "spec.yaml", str(data), cwd=tmp_path)
    assert refused.returncode == 1
    assert "columns[0] (age).type: unknown column type 'number'" in refused.stderr


def test_run_refuses_a_bad_spec_or_data_that_does_not_fit_it_before_any_server_starts(tmp_path: Path) -> None:
    data = diabetes_csv(tmp_path)
    (tmp_path / "bad.yaml").write_text("columns: [{name: age, type: float}]\ntarget: {name: age, type: float}\n")
    refused = gpuflow("run", "--data", str(data), "--dataset-spec", "bad.yaml", cwd=tmp_path)
    assert refused.returncode == 1
    assert "target: column 'age' is also listed as a feature" in refused.stderr
    (tmp_path / "other.yaml").write_text(
        "columns: [{name: weight, type: float}]\ntarget: {name: progression, type: float}\n"
    )
    refused = gpuflow("run", "--data", str(data), "--dataset-spec", "other.yaml", cwd=tmp_path)
    assert refused.returncode == 1
    assert "missing column(s) 'weight'" in refused.stderr and "unexpected column(s) 'age'" in refused.stderr
    assert not (tmp_path / ".gpuflow" / "store").exists()
