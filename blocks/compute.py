"""Compute targets: the one seam between a flow and the machine that runs its workload.

A flow builds a :class:`WorkloadSpec` (module, arguments, environment, secrets) and hands it to whatever
:class:`ComputeTarget` block it was given; :class:`LocalProcess` runs it as a child process here, a
Kubernetes backend runs the same command line as a Job. The flow never learns which one ran it.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from typing import IO

from prefect.blocks.core import Block
from pydantic import Field

from tasks.core.errors import PermanentWorkloadFailure
from tasks.core.processes import pump_lines, signal_group, spawn_group, stop_group, with_import_root
from tasks.core.types import LogFn
from tasks.core.workload import WorkloadResult, WorkloadSpec, exit_failure

_EOF = object()


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

    def check_reachable(self, *, tracking_uri: str, store_uri: str) -> None:
        """Raise ConfigurationError when the workload could not reach this MLflow or store from where it runs
        (a cluster's pods cannot read this machine's files); called by flows before they create anything."""

    @abstractmethod
    def run_workload(self, spec: WorkloadSpec, log: LogFn) -> WorkloadResult:
        """Run the workload to completion, streaming its output lines to ``log``.

        Raises:
            WorkloadFailed: it exited non-zero, timed out or could not start (exit code and last lines inside);
                permanent or retryable as a Kubernetes pod would be (tasks.core.workload.exit_failure).
        """


class LocalProcess(ComputeTarget):
    """Runs workloads as child processes of the flow, on this machine: the embedded default.

    The child gets its own process group; cancellation of the flow, an interrupt or the timeout stops
    the whole group (SIGTERM, then SIGKILL after a grace period), so no orphan keeps a GPU busy.

    Example:
        ```python
        from blocks.compute import LocalProcess
        local = LocalProcess.load("BLOCK_NAME")  # "local": the one gpuflow bootstrap saves
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
        process group and is re-raised. The workload's TMPDIR is a folder of its own, as a pod's /tmp is, removed
        once its process group has ended however it ended: what it, torchrun or MLflow's downloads leave there
        does not pile up in the machine's /tmp. A TMPDIR in the block's or the spec's env wins.
        """
        with tempfile.TemporaryDirectory(prefix=f"gpuflow-{spec.name}-", ignore_cleanup_errors=True) as scratch:
            return self._run(spec, log, scratch)

    def _run(self, spec: WorkloadSpec, log: LogFn, scratch: str) -> WorkloadResult:
        python = self.python_executable or sys.executable
        tail: deque[str] = deque(maxlen=self.tail_lines)
        started = time.monotonic()
        try:
            cwd = spec.working_dir or self.working_dir or None
            proc = spawn_group(spec.command(python), self._environment(spec, scratch), cwd=cwd)
        except OSError as exc:
            raise PermanentWorkloadFailure(spec.name, None, [], reason=f"could not start {python}: {exc}") from exc
        assert proc.stdout is not None
        lines: queue.Queue[object] = queue.Queue()
        reader = threading.Thread(target=_pump, args=(proc.stdout, lines), name=f"{spec.name}-output", daemon=True)
        reader.start()
        deadline = started + self.timeout_seconds
        try:
            self._relay(proc, lines, tail, log, deadline)
        except _TimedOut:
            stop_group(proc, self.termination_grace_seconds)
            _drain(lines, tail, log)
            raise PermanentWorkloadFailure(  # as a Job past its activeDeadlineSeconds
                spec.name, proc.returncode, list(tail), reason=f"timed out after {self.timeout_seconds:g}s"
            ) from None
        except BaseException:
            stop_group(proc, self.termination_grace_seconds)
            raise
        exit_code = proc.wait()
        signal_group(proc.pid, signal.SIGKILL)  # leftovers the workload started and left behind
        reader.join(timeout=5)
        seconds = time.monotonic() - started
        if exit_code != 0:
            raise exit_failure(spec.name, exit_code, list(tail))
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
                    signal_group(proc.pid, signal.SIGKILL)
                continue
            if item is _EOF:
                return
            line = str(item)
            tail.append(line)
            log(line)

    def _environment(self, spec: WorkloadSpec, scratch: str) -> dict[str, str]:
        env = {**os.environ, "TMPDIR": scratch, **self.env, **spec.env, **spec.secret_env, "PYTHONUNBUFFERED": "1"}
        if self.python_executable is None:
            with_import_root(env, spec.module)
        return env


class _TimedOut(Exception):
    pass


def _pump(stream: IO[bytes], lines: queue.Queue[object]) -> None:
    try:
        pump_lines(stream, lines.put)
    finally:
        lines.put(_EOF)


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
