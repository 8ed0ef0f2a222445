"""Compute targets: the one seam between a flow and the machine that runs its workload.

A flow builds a :class:`WorkloadSpec` (module, arguments, environment, secrets) and hands it to whatever
:class:`ComputeTarget` block it was given; :class:`LocalProcess` runs it as a child process here, a
Kubernetes backend runs the same command line as a Job. The flow never learns which one ran it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from prefect.blocks.core import Block
from pydantic import Field

from tasks.core.errors import ConfigurationError, WorkloadFailed

LogFn = Callable[[str], None]
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_EOF = object()


@dataclass(frozen=True)
class WorkloadSpec:
    """What to run, independent of where: ``python -m <module> <args>`` with this environment.

    ``env`` is plain configuration and may be shown; ``secret_env`` holds credentials, which the local
    backend merges into the process environment and a Kubernetes backend passes as secret references.
    Secrets are left out of ``repr`` and must never be logged.
    """

    name: str
    module: str
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    secret_env: dict[str, str] = field(default_factory=dict, repr=False)
    labels: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise ConfigurationError("workload name must not be empty")
        if not _MODULE.match(self.module):
            raise ConfigurationError(f"workload module must be a dotted Python module name, got {self.module!r}")
        for key, value in {**self.env, **self.secret_env}.items():
            if not isinstance(value, str):
                raise ConfigurationError(f"environment variable {key} of workload {self.name} must be a string")

    def command(self, python: str) -> list[str]:
        return [python, "-m", self.module, *self.args]


@dataclass(frozen=True)
class WorkloadResult:
    """A workload that exited 0: how long it ran (wall time seen by the backend) and its last lines.

    ``timings`` are the backend's own figures, e.g. a Kubernetes Job's ``k8s_queue_seconds`` (created ->
    scheduled) and ``k8s_start_seconds`` (scheduled -> running); empty for a local process.
    """

    name: str
    exit_code: int
    seconds: float
    tail: list[str]
    backend: str
    timings: dict[str, float] = field(default_factory=dict)


class ComputeTarget(Block, ABC):
    """Where workloads run. Subclasses implement :meth:`run_workload`; flows only call that.

    Example:
        ```python
        from prefect.blocks.core import Block
        target = Block.load("gpuflow-local-process/local")  # any saved compute block, by type and name
        result = target.run_workload(spec, print)
        ```
    """

    _block_type_name = "gpuflow Compute Target"
    _block_type_slug = "gpuflow-compute-target"
    _block_schema_capabilities = ["run-workload"]

    @abstractmethod
    def run_workload(self, spec: WorkloadSpec, log: LogFn) -> WorkloadResult:
        """Run the workload to completion, streaming its output lines to ``log``.

        Raises:
            WorkloadFailed: it exited non-zero, timed out or could not start (exit code and last lines inside).
        """


class LocalProcess(ComputeTarget):
    """Runs workloads as child processes of the flow, on this machine: the embedded default.

    The child gets its own process group; cancellation of the flow, an interrupt or the timeout stops
    the whole group (SIGTERM, then SIGKILL after a grace period), so no orphan keeps a GPU busy.

    Example:
        ```python
        from blocks.compute import LocalProcess
        local = LocalProcess.load("local")
        ```
    """

    _block_type_name = "gpuflow Local Process"
    _block_type_slug = "gpuflow-local-process"

    python_executable: str | None = Field(
        default=None, description="Python interpreter that runs the workload; empty: the one running the flow."
    )
    timeout_seconds: float = Field(
        default=3600, gt=0, description="Wall-clock limit; the workload is killed and the stage fails after it."
    )
    tail_lines: int = Field(default=20, ge=1, description="How many last output lines a failure report carries.")
    env: dict[str, str] = Field(
        default_factory=dict, description="Extra environment variables for every workload (not for secrets)."
    )
    working_dir: str | None = Field(
        default=None, description="Folder the workload starts in; empty: the flow's current folder."
    )
    termination_grace_seconds: float = Field(
        default=10, ge=0, description="Time between SIGTERM and SIGKILL when the workload is stopped."
    )

    def run_workload(self, spec: WorkloadSpec, log: LogFn) -> WorkloadResult:
        """Start ``python -m module args``, relay each output line to ``log``, wait for it to exit.

        Any exception in the waiting thread (KeyboardInterrupt, Prefect's cancellation) stops the
        process group and is re-raised.
        """
        python = self.python_executable or sys.executable
        tail: deque[str] = deque(maxlen=self.tail_lines)
        started = time.monotonic()
        try:
            proc = subprocess.Popen(
                spec.command(python),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=self._environment(spec),
                cwd=self.working_dir or None,
                start_new_session=True,
            )
        except OSError as exc:
            raise WorkloadFailed(spec.name, None, [], reason=f"could not start {python}: {exc}") from exc
        assert proc.stdout is not None
        lines: queue.Queue[object] = queue.Queue()
        reader = threading.Thread(target=_pump, args=(proc.stdout, lines), name=f"{spec.name}-output", daemon=True)
        reader.start()
        deadline = started + self.timeout_seconds
        try:
            self._relay(proc, lines, tail, log, deadline)
        except _TimedOut:
            _stop_group(proc, self.termination_grace_seconds)
            _drain(lines, tail, log)
            raise WorkloadFailed(
                spec.name, proc.returncode, list(tail), reason=f"timed out after {self.timeout_seconds:g}s"
            ) from None
        except BaseException:
            _stop_group(proc, self.termination_grace_seconds)
            raise
        exit_code = proc.wait()
        _signal_group(proc.pid, signal.SIGKILL)  # leftovers the workload started and left behind
        reader.join(timeout=5)
        seconds = time.monotonic() - started
        if exit_code != 0:
            raise WorkloadFailed(spec.name, exit_code, list(tail))
        return WorkloadResult(spec.name, exit_code, seconds, list(tail), backend="local-process")

    def _relay(
        self, proc: subprocess.Popen[bytes], lines: queue.Queue[object], tail: deque[str], log: LogFn, deadline: float
    ) -> None:
        """Pass lines on until the output closes; after the main process exits, end its stragglers."""
        leader_done = False
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _TimedOut
            try:
                item = lines.get(timeout=min(remaining, 0.2))
            except queue.Empty:
                if not leader_done and proc.poll() is not None:
                    leader_done = True  # children still holding the pipe would keep us here forever
                    _signal_group(proc.pid, signal.SIGKILL)
                continue
            if item is _EOF:
                return
            line = str(item)
            tail.append(line)
            log(line)

    def _environment(self, spec: WorkloadSpec) -> dict[str, str]:
        env = {**os.environ, **self.env, **spec.env, **spec.secret_env, "PYTHONUNBUFFERED": "1"}
        if self.python_executable is None:
            root = _import_root(spec.module)
            if root:
                parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
                if root not in parts:
                    env["PYTHONPATH"] = os.pathsep.join([root, *parts])
        return env


class _TimedOut(Exception):
    pass


def _import_root(module: str) -> str | None:
    """The sys.path entry the flow imports the workload's top package from, so the child finds it too."""
    try:
        found = importlib.util.find_spec(module.split(".")[0])
    except (ImportError, ValueError):
        return None
    if found is None or not found.submodule_search_locations:
        return None
    return str(Path(next(iter(found.submodule_search_locations))).resolve().parent)


def _pump(stream: IO[bytes], lines: queue.Queue[object]) -> None:
    try:
        for raw in iter(stream.readline, b""):
            lines.put(raw.decode("utf-8", errors="replace").rstrip("\r\n"))
    finally:
        lines.put(_EOF)
        stream.close()


def _drain(lines: queue.Queue[object], tail: deque[str], log: LogFn, wait: float = 2.0) -> None:
    """Relay what a stopped workload printed last (it may explain the stop)."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            item = lines.get(timeout=0.1)
        except queue.Empty:
            continue
        if item is _EOF:
            return
        tail.append(str(item))
        log(str(item))


def _signal_group(pgid: int, sig: int) -> bool:
    """Signal a process group; False when it no longer exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM the workload's process group, SIGKILL whatever is left after ``grace`` seconds."""
    if not _signal_group(proc.pid, signal.SIGTERM):
        proc.wait()
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        proc.poll()  # reap the leader so the group can disappear
        if not _signal_group(proc.pid, 0):
            break
        time.sleep(0.05)
    _signal_group(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=max(grace, 5))


def _concrete_targets() -> list[type[ComputeTarget]]:
    found: list[type[ComputeTarget]] = []
    pending: list[type[ComputeTarget]] = list(ComputeTarget.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if not inspect.isabstract(cls):
            found.append(cls)
    return found


def resolve_compute(name: str | None) -> ComputeTarget:
    """A saved compute block (``name`` or ``block-type-slug/name``), or ``LocalProcess()`` when no name is given."""
    if not name:
        return LocalProcess()
    import blocks.kubernetes  # noqa: F401  (registers KubernetesGPUJob; imported here: it imports this module)

    if "/" in name:
        try:
            block = Block.load(name)
        except ValueError as exc:
            raise ConfigurationError(f"no compute block {name!r}: {exc}") from exc
        if not isinstance(block, ComputeTarget):
            raise ConfigurationError(f"block {name!r} is a {type(block).__name__}, not a compute target")
        return block
    for cls in _concrete_targets():
        with contextlib.suppress(ValueError):
            loaded = cls.load(name)
            if isinstance(loaded, ComputeTarget):
                return loaded
    kinds = ", ".join(sorted(cls.get_block_type_slug() for cls in _concrete_targets()))
    raise ConfigurationError(f"no compute block named {name!r}; saved blocks of these types are looked up: {kinds}")
