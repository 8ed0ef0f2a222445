"""Process groups: start a child in its own group, signal the group, stop it for good.

The local compute target (the trainer) and the local canary servers both run ``python -m <module>`` as a
child in a new session, so stopping it stops whatever it started too: SIGTERM to the group, SIGKILL to what
is left after a grace period, no orphan keeping a GPU or a port busy.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from tasks.core.types import LogFn


def import_root(module: str) -> str | None:
    """The sys.path entry the flow imports the workload's top package from, so the child finds it too."""
    try:
        found = importlib.util.find_spec(module.split(".")[0])
    except (ImportError, ValueError):
        return None
    if found is None or not found.submodule_search_locations:
        return None
    return str(Path(next(iter(found.submodule_search_locations))).resolve().parent)


def with_import_root(env: dict[str, str], module: str) -> dict[str, str]:
    """``env`` with the folder ``module``'s package is imported from first on ``PYTHONPATH`` (when found)."""
    root = import_root(module)
    if root:
        parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join([root, *(p for p in parts if p != root)])
    return env


def spawn_group(command: Sequence[str], env: Mapping[str, str], cwd: str | None = None) -> subprocess.Popen[bytes]:
    """Start ``command`` in a new session (its own process group), output and errors on one pipe."""
    return subprocess.Popen(
        list(command),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=dict(env),
        cwd=cwd,
        start_new_session=True,
    )


def pump_lines(stream: IO[bytes], on_line: LogFn) -> None:
    """Pass each output line (decoded, line end stripped) to ``on_line`` until the stream closes."""
    try:
        for raw in iter(stream.readline, b""):
            on_line(raw.decode("utf-8", errors="replace").rstrip("\r\n"))
    finally:
        stream.close()


def signal_group(pgid: int, sig: int) -> bool:
    """Signal a process group; False when it no longer exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def end_group(proc: subprocess.Popen[bytes], grace: float, reap_seconds: float = 5.0) -> None:
    """Wait up to ``grace`` for the group to go, then SIGKILL whatever is left (children included)."""
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        proc.poll()  # reap the leader so its group can disappear
        if not signal_group(proc.pid, 0):
            break
        time.sleep(0.05)
    signal_group(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=reap_seconds)


def stop_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM the process group, SIGKILL whatever is left after ``grace`` seconds."""
    if not signal_group(proc.pid, signal.SIGTERM):
        proc.wait()
        return
    end_group(proc, grace, reap_seconds=max(grace, 5))
