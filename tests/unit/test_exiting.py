"""A program that handled Ctrl-C ends with its own exit code under ``python -m``, never by SIGINT.

The interrupt is raised inside code Python runs from a string, as when Ctrl-C lands while an import builds a
dataclass: CPython 3.11 then ended ``python -m flows.cli`` by SIGINT (-2) instead of 130, about one run in twenty
of tests/e2e/test_cli_processes.py's interrupt during start-up. With the ``forget_handled_interrupt()`` line
taken out of PROGRAM this test fails on CPython 3.11 (returncode -2).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PROGRAM = textwrap.dedent(
    """
    import sys

    from workloads.exiting import exit_quickly, forget_handled_interrupt


    def main() -> int:
        try:
            exec("raise KeyboardInterrupt")  # where Ctrl-C landed: code run from a string
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        return 0


    code = main()
    if sys.argv[1] == "quickly":
        exit_quickly(code)
    forget_handled_interrupt()
    sys.exit(code)
    """
)


@pytest.mark.parametrize("ending", ["quickly", "plain"])
def test_a_handled_interrupt_ends_with_130_under_python_m(tmp_path: Path, ending: str) -> None:
    (tmp_path / "interrupted_program.py").write_text(PROGRAM)
    run = subprocess.run(
        [sys.executable, "-m", "interrupted_program", ending],
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 130, run.stderr
    assert run.stderr == "interrupted\n"
