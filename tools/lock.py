"""The locked environment: write requirements.lock from pyproject.toml, check it is current, install from it.

Why a tool of its own: pip's resolver backtracks for many minutes through new upstream releases, so installs never
resolve. `make lock` resolves once with uv (fast, understands pyproject.toml) into a hashed, universal lock;
`make install` replays it with `pip install --no-deps --require-hashes`, so a fresh machine gets exactly what CI
tested. torch is the one exception: it is installed by its pin (`torch==2.13.0`) after the lock, so pip picks the
build that fits the machine (the CPU wheel where one is provided, the CUDA build from PyPI elsewhere) and the lock
never drags CUDA-only packages into a CPU install.

Stdlib only: it runs with any Python 3.11 before the virtualenv exists.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"
LOCK = ROOT / "requirements.lock"
DIGEST_PREFIX = "# pyproject-digest: "
# Installed by their pins after the lock (see the module docstring).
UNLOCKED = ("torch",)
# What the editable install builds with; locked too, so `pip install -e .` needs no index.
BUILD_REQUIREMENTS = ("setuptools>=77",)
PYTHON_VERSION = "3.11"
NEEDS_GB = 2.5  # the installed environment (about 1.7 GB, torch's CPU build included) plus pip's unpacking room


def dependency_digest(pyproject: Path = PYPROJECT) -> str:
    """A digest of what decides the lock (dependencies, extras, Python, build requirements), not of ruff's config."""
    data = tomllib.loads(pyproject.read_text())
    project = data.get("project", {})
    decisive = {
        "dependencies": project.get("dependencies", []),
        "optional-dependencies": project.get("optional-dependencies", {}),
        "requires-python": project.get("requires-python"),
        "build-system": data.get("build-system", {}).get("requires", []),
    }
    return hashlib.sha256(json.dumps(decisive, sort_keys=True).encode()).hexdigest()[:16]


def pinned_requirements(names: tuple[str, ...] = UNLOCKED, pyproject: Path = PYPROJECT) -> list[str]:
    """The pyproject.toml requirements of the unlocked packages, exactly as declared (torch==2.13.0)."""
    dependencies = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    return [spec for spec in dependencies if re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0] in names]


def _entries(text: str) -> list[tuple[str, list[str]]]:
    """Split a uv requirements file into (package name, its lines) entries; the header comes as name ''."""
    entries: list[tuple[str, list[str]]] = [("", [])]
    for line in text.splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==", line)
        if match:
            entries.append((match.group(1).lower(), [line]))
        else:
            entries[-1][1].append(line)
    return entries


def _parents(lines: list[str]) -> set[str]:
    """The packages that require this one, from uv's `# via` annotation."""
    parents: set[str] = set()
    collecting = False
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("# via"):
            collecting = True
            rest = stripped[len("# via") :].strip()
            if rest:
                parents.add(rest.split()[0].lower())
        elif collecting and stripped.startswith("#   "):
            parents.add(stripped[1:].strip().split()[0].lower())
        elif collecting:
            collecting = False
    return parents


def drop_platform_builds(text: str) -> tuple[str, list[str]]:
    """Drop the packages only the unlocked ones need on one platform (torch's CUDA wheels: nvidia-*, triton, cuda-*).

    A package reached only through an unlocked package and guarded by a platform marker belongs to that platform's
    build of it; the unlocked package's own install brings it where it is needed. Platform-free ones (sympy,
    networkx, filelock) are needed by every build and stay locked.
    """
    entries = _entries(text)
    dropped: set[str] = set(UNLOCKED)
    changed = True
    while changed:
        changed = False
        for name, lines in entries[1:]:
            parents = _parents(lines)
            platform_only = "sys_platform" in lines[0] or "platform_machine" in lines[0]
            if name not in dropped and platform_only and parents and parents <= dropped:
                dropped.add(name)
                changed = True
    kept = [lines for name, lines in entries if name not in dropped]
    return "\n".join(line for lines in kept for line in lines) + "\n", sorted(dropped - set(UNLOCKED))


def compile_lock(uv: str) -> None:
    started = time.monotonic()
    command = [
        uv,
        "pip",
        "compile",
        str(PYPROJECT.name),
        "-",
        "--extra",
        "dev",
        "--universal",
        "--python-version",
        PYTHON_VERSION,
        "--generate-hashes",
        "--no-header",
        "--quiet",
    ]
    command += [f"--no-emit-package={name}" for name in UNLOCKED]
    resolved = subprocess.run(
        command, cwd=ROOT, input="\n".join(BUILD_REQUIREMENTS) + "\n", text=True, capture_output=True
    )
    if resolved.returncode != 0:
        sys.exit(f"lock: uv could not resolve pyproject.toml:\n{resolved.stderr.strip()}")
    body, dropped = drop_platform_builds(resolved.stdout)
    header = [
        "# The whole gpuflow environment (runtime and the dev extra) at exact versions, with hashes.",
        "# Written by `make lock` from pyproject.toml; do not edit by hand. `make install` replays it with",
        "# `pip install --no-deps --require-hashes`, then installs "
        + ", ".join(pinned_requirements())
        + " by its pin (the build that fits the machine).",
        f"# Left to the pinned packages' own install (platform builds): {', '.join(dropped) or 'none'}.",
        f"{DIGEST_PREFIX}{dependency_digest()}",
        "",
    ]
    LOCK.write_text("\n".join(header) + body.lstrip("\n"))
    count = sum(1 for name, _ in _entries(body) if name)
    print(f"lock: wrote {LOCK.name} ({count} packages) in {time.monotonic() - started:.1f} s")


def check_lock() -> None:
    """Fail, naming the command to run, when pyproject.toml's dependencies changed after the lock was written."""
    if not LOCK.exists():
        sys.exit(f"lock: {LOCK.name} is missing; run `make lock` and commit it")
    recorded = next(
        (
            line[len(DIGEST_PREFIX) :].strip()
            for line in LOCK.read_text().splitlines()
            if line.startswith(DIGEST_PREFIX)
        ),
        None,
    )
    current = dependency_digest()
    if recorded != current:
        sys.exit(
            f"lock: {LOCK.name} is out of date with pyproject.toml (dependencies digest {recorded} in the lock, "
            f"{current} now); run `make lock` and commit requirements.lock"
        )


def _phase(label: str, command: list[str], venv: Path | None = None) -> None:
    started = time.monotonic()
    print(f"install: {label} ...", flush=True)
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        # pip repeats one warning per package for an index folder the machine lacks: keep the lines that explain.
        output = [line for line in (result.stdout + result.stderr).splitlines() if "' is ignored: " not in line]
        sys.stderr.write("\n".join(output)[-4000:] + "\n")
        why = f"exit {result.returncode}"
        if "No space left on device" in result.stdout + result.stderr:
            why += f"; the disk is full: {_free(venv or ROOT)[1]} now, the environment needs about {NEEDS_GB} GB"
        sys.exit(f"install: {label} failed ({why}); the command was: {' '.join(command)}")
    print(f"install: {label} done in {time.monotonic() - started:.0f} s", flush=True)


def _free(path: Path) -> tuple[int, str]:
    """Free bytes on the file system that holds ``path`` (or its nearest existing parent), and that in words."""
    while not path.exists():
        path = path.parent
    free = shutil.disk_usage(path).free
    return free, f"{free / 2**30:.1f} GB free on {path}"


def install(venv: Path) -> None:
    check_lock()
    started = time.monotonic()
    venv = venv.absolute()
    free, where = _free(venv)
    if free < NEEDS_GB * 2**30:
        print(f"install: warning: only {where}; the environment needs about {NEEDS_GB} GB", flush=True)
    python = venv / "bin" / "python"
    if not python.exists():
        _phase(f"create the virtualenv {venv}", [sys.executable, "-m", "venv", str(venv)], venv)
    # No pip cache: on a fresh machine it would only hold a second copy of every wheel on the same disk.
    pip = [str(python), "-m", "pip", "install", "--quiet", "--no-cache-dir"]
    _phase(f"locked dependencies from {LOCK.name}", [*pip, "--no-deps", "--require-hashes", "-r", str(LOCK)], venv)
    _phase(" ".join(pinned_requirements()), [*pip, *pinned_requirements()], venv)
    _phase("gpuflow itself (editable)", [*pip, "--no-deps", "--no-build-isolation", "-e", str(ROOT)], venv)
    _phase("pip check (the installed set is consistent)", [str(python), "-m", "pip", "check"], venv)
    print(f"install: ready in {time.monotonic() - started:.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    compile_parser = sub.add_parser("compile", help="resolve pyproject.toml into requirements.lock")
    compile_parser.add_argument("--uv", default=shutil.which("uv") or "uv")
    sub.add_parser("check", help="fail when requirements.lock is older than pyproject.toml's dependencies")
    install_parser = sub.add_parser("install", help="install the lock into a virtualenv")
    install_parser.add_argument("--venv", type=Path, default=ROOT / ".venv")
    args = parser.parse_args()
    if args.command == "compile":
        compile_lock(args.uv)
    elif args.command == "check":
        check_lock()
    else:
        install(args.venv)


if __name__ == "__main__":
    main()
