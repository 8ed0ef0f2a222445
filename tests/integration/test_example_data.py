"""The examples' make_data.py scripts, run as a user runs them: help, and a folder that does not exist yet."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

EXAMPLES = [
    ("diabetes_regression", "diabetes.csv", 442, "progression"),
    ("breast_cancer_sklearn", "breast_cancer.csv", 569, "diagnosis"),
    ("digits_cnn", "digits.csv", 1797, "label"),
]


def _make_data(example: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    script = ROOT / "examples" / example / "make_data.py"
    return subprocess.run([sys.executable, str(script), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("example", "name", "rows", "target"), EXAMPLES)
def test_make_data_writes_its_csv_into_a_new_folder(
    example: str, name: str, rows: int, target: str, tmp_path: Path
) -> None:
    done = _make_data(example, "data/v1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    written = tmp_path / "data" / "v1" / name
    assert done.stdout.strip() == str(Path("data/v1") / name)
    with written.open() as handle:
        table = list(csv.reader(handle))
    assert table[0][-1] == target
    assert len(table) == rows + 1


@pytest.mark.parametrize(("example", "name"), [(example, name) for example, name, *_ in EXAMPLES])
def test_make_data_help_says_what_it_writes_and_writes_nothing(example: str, name: str, tmp_path: Path) -> None:
    done = _make_data(example, "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"where to write {name}" in done.stdout
    assert list(tmp_path.iterdir()) == []
