"""The Prefect API server process a gpuflow command owns (:class:`TemporaryPrefectServer`): started from the
main thread in its own session with its output in ``$GPUFLOW_HOME/logs/prefect-server.log``, health-checked in
a background thread, and stopped with its whole process group. :mod:`flows.prefect_server` decides when one
runs and points Prefect's clients at it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import IO

from tasks.core import settings
from tasks.core.errors import ServiceUnavailable
from tasks.core.processes import signal_group

DATABASE_VARIABLES = ("PREFECT_API_DATABASE_CONNECTION_URL", "PREFECT_SERVER_DATABASE_CONNECTION_URL")
START_LOCK_TIMEOUT_SECONDS = 900.0  # other commands' servers starting first, one after the other
MIN_START_SECONDS = 120.0  # a fresh database runs every migration; 2 busy cores take a while
STOP_SECONDS = 10.0
_BIND_FAILED = 3  # uvicorn's exit code when the port was taken in the meantime


def log_path() -> Path:
    return settings.home() / "logs" / "prefect-server.log"


def lock_path() -> Path:
    return settings.home() / "prefect-server.lock"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> Callable[[], None]:
    """A ``preexec_fn`` that has Linux send SIGTERM to the child when gpuflow dies (a backstop only)."""
    import ctypes

    prctl: Callable[[int, int], int] = lambda _option, _value: 0  # noqa: E731 - not Linux: no backstop
    if sys.platform.startswith("linux"):
        with suppress(OSError, AttributeError):
            prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before the fork
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def preexec() -> None:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # the parent held it back during the fork
        prctl(pr_set_pdeathsig, int(signal.SIGTERM))
        if os.getppid() != parent:  # gpuflow already died between fork and prctl
            os._exit(1)

    return preexec


def _unblock_sigint() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # the parent held it back during the fork


class TemporaryPrefectServer:
    """One ``uvicorn`` running Prefect's API for this command, owned from start to stop."""

    def __init__(self, start_timeout: float, on_ready: Callable[[], None] = lambda: None) -> None:
        self.start_timeout = start_timeout
        self.on_ready = on_ready  # called from the health thread as soon as the server answers
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self._log: IO[bytes] | None = None
        self._log_offset = 0
        self._health: threading.Thread | None = None
        self._health_outcome: str | None = None  # "ready", or why not

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def _environment(self) -> dict[str, str]:
        """What Prefect's ``SubprocessASGIServer`` passes, plus the database in the home unless one is set."""
        from prefect.settings import get_current_settings

        env = {
            **os.environ,
            "PREFECT_UI_ENABLED": "0",
            "PREFECT__SERVER_EPHEMERAL": "1",
            "PREFECT__SERVER_FINAL": "1",
            **get_current_settings().to_environment_variables(exclude_unset=True),
        }
        env.pop("PREFECT_API_URL", None)
        if not any(env.get(name) for name in DATABASE_VARIABLES):
            env["PREFECT_API_DATABASE_CONNECTION_URL"] = f"sqlite+aiosqlite:///{settings.home() / 'prefect.db'}"
        return env

    def spawn(self, die_with_parent: bool = True) -> None:
        """Start the server process (main thread) and its health check (background).

        SIGINT is held back while the process is created, so a Ctrl-C cannot land between the fork and
        ``self.process`` knowing the child (it is raised right after, and the caller's cleanup stops it).
        """
        import prefect

        self.port = _free_port()
        path = log_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        if self._log is None:
            self._log = path.open("ab")
        self._log_offset = self._log.tell()
        self._die_with_parent = die_with_parent
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            "--app-dir",
            str(prefect.__module_path__.parent),
            "--factory",
            "prefect.server.api.server:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            "error",
            "--lifespan",
            "on",
        ]
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            self.process = subprocess.Popen(
                command,
                env=self._environment(),
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                # only prctl, getppid and sigmask run in the child; PR_SET_PDEATHSIG fires when the forking
                # *thread* ends, so only a fork from the main thread may use it
                preexec_fn=_die_with_parent() if die_with_parent else _unblock_sigint,
            )
            self._log.write(
                f"--- gpuflow pid {os.getpid()}: Prefect API pid {self.process.pid} on port {self.port}\n".encode()
            )
            self._log.flush()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        self._health_outcome = None
        # the thread gets its own handle: stop() may clear self.process (SIGINT) before the thread first runs
        self._health = threading.Thread(
            target=self._wait_healthy, args=(self.process,), name="prefect-api-health", daemon=True
        )
        self._health.start()

    def _wait_healthy(self, process: subprocess.Popen[bytes]) -> None:
        url = f"{self.api_url}/health"
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                self._health_outcome = f"exited with code {process.returncode}"
                return
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        self._health_outcome = "ready"
                        self.on_ready()
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        self._health_outcome = f"did not answer {url} within {self.start_timeout:g} s"

    def wait_ready(self) -> None:
        """Block (interruptibly) until the server answers; a port lost to a race is retried once or twice."""
        for _attempt in range(3):
            assert self._health is not None
            while self._health.is_alive():
                self._health.join(0.2)
            if self._health_outcome == "ready":
                return
            if self.process is not None and self.process.returncode == _BIND_FAILED:
                self.spawn(self._die_with_parent)
                continue
            break
        raise ServiceUnavailable(
            f"the temporary Prefect server {self._health_outcome}; its log: {log_path()}{self._log_tail()}"
        )

    def _log_tail(self, lines: int = 5) -> str:
        try:
            with log_path().open("rb") as handle:
                handle.seek(self._log_offset)
                text = handle.read().decode(errors="replace")
        except OSError:
            return ""
        tail = [line for line in text.splitlines() if line.strip()][-lines:]
        return ("; last lines: " + " | ".join(tail)) if tail else ""

    def stop(self) -> str | None:
        """Stop the server's whole group; a warning line when it had to be killed, else None. Idempotent."""
        process, self.process = self.process, None
        warning = None
        if process is not None:
            group = process.pid  # its own session: the group id is its pid
            signal_group(group, signal.SIGTERM)
            try:
                process.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                warning = (
                    f"gpuflow: warning: the temporary Prefect server (pid {process.pid}) did not stop within "
                    f"{STOP_SECONDS:g} s of SIGTERM; killed it"
                )
                signal_group(group, signal.SIGKILL)
                process.wait()
            if signal_group(group, signal.SIGKILL):  # anything it started that is still in its group
                warning = warning or "gpuflow: warning: killed processes the temporary Prefect server left behind"
        if self._log is not None:
            self._log.close()
            self._log = None
        return warning


def start_timeout() -> float:
    """Prefect's own start-up timeout for its ephemeral server, and at least :data:`MIN_START_SECONDS`."""
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    return max(float(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()), MIN_START_SECONDS)
