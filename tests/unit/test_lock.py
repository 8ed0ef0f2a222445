"""The locked environment: the checked-in lock matches pyproject.toml, stale locks fail naming `make lock`."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import lock

UV_OUTPUT = """\
filelock==3.20.0 \\
    --hash=sha256:aaa
    # via torch
nvidia-cublas==13.1.1.3 ; sys_platform == 'linux' \\
    --hash=sha256:bbb
    # via
    #   nvidia-cudnn-cu13
    #   torch
nvidia-cudnn-cu13==9.20.0.48 ; sys_platform == 'linux' \\
    --hash=sha256:ccc
    # via torch
nvidia-ml-py==13.615.71 \\
    --hash=sha256:ddd
    # via gpuflow (pyproject.toml)
triton==3.7.1 ; python_full_version < '3.15' and sys_platform == 'linux' \\
    --hash=sha256:eee
    # via torch
uvloop==0.23.0 ; sys_platform != 'win32' \\
    --hash=sha256:fff
    # via gpuflow (pyproject.toml)
"""


def test_the_checked_in_lock_is_current() -> None:
    result = subprocess.run([sys.executable, "tools/lock.py", "check"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_lock_pins_every_package_with_hashes_and_leaves_torch_to_its_pin() -> None:
    text = (ROOT / "requirements.lock").read_text()
    names = {name for name, _ in lock._entries(text) if name}
    assert {"prefect", "mlflow", "kubernetes", "pytest", "pytest-xdist", "filelock", "sympy"} <= names
    assert "torch" not in names and not any(n.startswith(("nvidia-cu", "nvidia-nccl", "triton")) for n in names)
    assert "torch==2.13.0" in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for name, lines in lock._entries(text)[1:]:
        assert any("--hash=sha256:" in line for line in lines), f"{name} has no hash"


def test_a_dependency_change_makes_the_lock_stale_and_the_check_names_make_lock(tmp_path: Path) -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    before = lock.dependency_digest()
    changed = tmp_path / "pyproject.toml"
    changed.write_text(pyproject.replace('"psutil>=5.9"', '"psutil>=6.0"'))
    assert lock.dependency_digest(changed) != before

    tooling_only = tmp_path / "tooling.toml"
    tooling_only.write_text(pyproject.replace("line-length = 120", "line-length = 100"))
    assert lock.dependency_digest(tooling_only) == before, "ruff's settings do not decide the lock"

    fake_root = tmp_path / "checkout"
    (fake_root / "tools").mkdir(parents=True)
    (fake_root / "tools" / "lock.py").write_text((ROOT / "tools" / "lock.py").read_text())
    (fake_root / "pyproject.toml").write_text(changed.read_text())
    (fake_root / "requirements.lock").write_text((ROOT / "requirements.lock").read_text())
    result = subprocess.run([sys.executable, "tools/lock.py", "check"], cwd=fake_root, capture_output=True, text=True)
    assert result.returncode != 0
    assert "out of date with pyproject.toml" in result.stderr and "run `make lock`" in result.stderr


def test_platform_builds_of_torch_are_dropped_and_shared_dependencies_kept() -> None:
    body, dropped = lock.drop_platform_builds(UV_OUTPUT)
    names = [name for name, _ in lock._entries(body) if name]
    assert names == ["filelock", "nvidia-ml-py", "uvloop"]
    assert dropped == ["nvidia-cublas", "nvidia-cudnn-cu13", "triton"]


def test_torch_is_installed_by_the_pin_pyproject_declares() -> None:
    assert lock.pinned_requirements() == ["torch==2.13.0"]


def test_an_install_that_fills_the_disk_says_so_without_pips_warning_flood(capsys: pytest.CaptureFixture[str]) -> None:
    # What pip printed on a CI machine whose disk was full: one ignored-index warning per package, then the cause.
    script = (
        "import sys\n"
        "for name in ('idna', 'six'):\n"
        "    print(f\"WARNING: Location 'file:///opt/pypi/simple/{name}/' is ignored: it is neither a file nor a "
        'directory.", file=sys.stderr)\n'
        "print('ERROR: Could not install packages due to an OSError: [Errno 28] No space left on device', "
        "file=sys.stderr)\n"
        "sys.exit(1)\n"
    )
    with pytest.raises(SystemExit) as ended:
        lock._phase("locked dependencies", [sys.executable, "-c", script], ROOT / ".venv")
    message = str(ended.value)
    assert message.startswith("install: locked dependencies failed (exit 1; the disk is full: ")
    assert "GB free on " in message and "now, the environment needs about 2.5 GB" in message
    shown = capsys.readouterr().err
    assert "No space left on device" in shown
    assert "is ignored" not in shown
