"""tools/cpu_by_program.py names each process by the program it runs, whatever interpreter options precede it."""

from __future__ import annotations

import pytest

from tools.cpu_by_program import program_of

VENV_PYTHON = "/repo/.venv/bin/python"


@pytest.mark.parametrize(
    ("cmdline", "program"),
    [
        ([VENV_PYTHON, "-m", "workloads.server", "--model-uri", "models:/digits/2"], "-m workloads.server"),
        ([VENV_PYTHON, "-u", "-c", "import sys;exec(eval(sys.stdin.readline()))"], "pytest-xdist worker"),
        ([VENV_PYTHON, "-c", "print(1)"], "python -c ..."),
        ([VENV_PYTHON, "-X", "importtime", "-m", "flows.cli", "run"], "-m flows.cli"),
        (["python3.11", "-u", "/tmp/x/train.py", "--epochs", "2"], "train.py"),
        (
            [VENV_PYTHON, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app"],
            "-m uvicorn (Prefect API)",
        ),
        ([VENV_PYTHON, "-m", "uvicorn", "app:app"], "-m uvicorn"),
        (["/usr/bin/cc1", "fake_nvml.c"], "cc1"),
        ([], "?"),
    ],
)
def test_each_process_is_named_by_the_program_it_runs(cmdline: list[str], program: str) -> None:
    assert program_of(cmdline) == program
