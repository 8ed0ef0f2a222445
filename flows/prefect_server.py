"""The temporary Prefect API server a gpuflow command owns, so that nothing it starts outlives it.

Without ``PREFECT_API_URL``, Prefect starts its own temporary server (``SubprocessASGIServer``) on first use.
That helper runs ``uvicorn`` with gpuflow's stdout and stderr, from whichever thread asked first, and its stop
is only reached when nothing went wrong before; a server left behind keeps the pipe of anyone reading
gpuflow's output open forever. So gpuflow starts the same server itself (the same ``uvicorn`` command and
environment as Prefect's helper) and points Prefect's clients at it:

- started with ``Popen`` from the main thread, in its own session (process group), stdin closed and its
  output in ``$GPUFLOW_HOME/logs/prefect-server.log``, never gpuflow's descriptors; on Linux the kernel sends
  it SIGTERM should gpuflow die without cleaning up (``PR_SET_PDEATHSIG`` fires when the forking *thread*
  ends, hence the main thread);
- stopped on every path (success, failure, Ctrl-C during start-up, an exception while loading): SIGTERM to
  its group, a deadline, SIGKILL as the last resort, and one warning line when it had to be killed;
- its database is ``$GPUFLOW_HOME/prefect.db`` unless ``PREFECT_API_DATABASE_CONNECTION_URL`` says
  otherwise, so a home is self-contained;
- commands sharing a home each run their own server on that database, but one at a time *starts*: start-up
  (migrations, start-up writes) happens under a file lock in the home, held until the server answers its
  health check. Without it two servers ran the migrations at once ("duplicate column name").

The health check runs in a background thread while the command imports torch and MLflow.
"""

from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

from tasks.core import settings
from tasks.core.errors import ServiceUnavailable

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
            with suppress(ProcessLookupError):
                os.killpg(group, signal.SIGTERM)
            try:
                process.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                warning = (
                    f"gpuflow: warning: the temporary Prefect server (pid {process.pid}) did not stop within "
                    f"{STOP_SECONDS:g} s of SIGTERM; killed it"
                )
                with suppress(ProcessLookupError):
                    os.killpg(group, signal.SIGKILL)
                process.wait()
            with suppress(ProcessLookupError):  # anything it started that is still in its group
                os.killpg(group, signal.SIGKILL)
                warning = warning or "gpuflow: warning: killed processes the temporary Prefect server left behind"
        if self._log is not None:
            self._log.close()
            self._log = None
        return warning


def _start_timeout() -> float:
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    return max(float(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()), MIN_START_SECONDS)


@contextmanager
def prefect_api(load: Callable[[], None]) -> Iterator[None]:
    """Run the body against ``PREFECT_API_URL``, or against a temporary Prefect server this command owns.

    ``load`` does the heavy imports (torch, MLflow) while the server boots. Flow heartbeats are off: they let a
    long-lived server spot crashed runs, and each flow run waits up to a second for its heartbeat thread. At
    the end the run's events and logs are delivered, then the server stops, whatever happened.
    """
    from filelock import FileLock, Timeout
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    if PREFECT_API_URL.value():
        load()
        yield
        return
    lock = FileLock(str(lock_path()), thread_local=False)
    held = threading.Lock()

    def release() -> None:  # from the health thread once the server answers, or on the way out
        with held:
            if lock.is_locked:
                lock.release()

    server = TemporaryPrefectServer(_start_timeout(), on_ready=release)
    try:
        try:
            lock.acquire(timeout=0)
        except Timeout:  # another command's server is starting on this home: import meanwhile, then queue
            load()
            load = _nothing
            try:
                lock.acquire(timeout=START_LOCK_TIMEOUT_SECONDS)
            except Timeout as exc:
                raise ServiceUnavailable(
                    f"another gpuflow command held {lock_path()} for {START_LOCK_TIMEOUT_SECONDS:g} s while its "
                    "Prefect server started; is one stuck?"
                ) from exc
        try:
            server.spawn()
            load()
            server.wait_ready()
        finally:
            release()
        with _pointed_at(server), temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            try:
                yield
            finally:
                _drain()
    finally:
        warning = server.stop()
        if warning:
            print(warning, file=sys.stderr)


def _nothing() -> None:
    return None


@contextmanager
def _pointed_at(server: TemporaryPrefectServer) -> Iterator[None]:
    """Every Prefect client of this process (any thread) and its children use the owned server.

    Threads that copied the settings context before this point (Prefect's event-loop thread) would still see
    no API URL and start Prefect's own temporary server, the one that leaked; so Prefect's helper for the
    default port is pointed at ours as well, already running: it never starts a process.
    """
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings

    helper = SubprocessASGIServer()
    helper.port, helper.server_process, helper.running = server.port, server.process, True
    before = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = server.api_url  # threads without the settings context read the environment
    try:
        # No UI URL: this server has no UI and stops with the command, so Prefect's "View at" links would dangle.
        with temporary_settings(updates={PREFECT_API_URL: server.api_url, PREFECT_UI_URL: ""}):
            yield
    finally:
        helper.server_process, helper.running = None, False  # its atexit stop (if any) finds nothing to do
        SubprocessASGIServer._instances.pop(None, None)
        if before is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = before


def _drain() -> None:
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    EventsWorker.drain_all(timeout=10)
    APILogWorker.drain_all(timeout=10)


_slot_guard = threading.Lock()


def own_prefect_ephemeral_server() -> None:
    """Fill Prefect's ephemeral-server slot with a server gpuflow owns, for flows called from Python.

    ``ml_pipeline(...)`` from a script or notebook, with no ``PREFECT_API_URL``, makes Prefect start its own
    temporary server on first use. On a fresh home that start is slow (every migration) and is asked for by
    several threads at once (the flow, the events worker, the log worker): Prefect's helper then times out
    ("Timed out while attempting to connect to ephemeral Prefect API server") and leaves servers running,
    holding the caller's pipes. Prefect looks the server up as ``SubprocessASGIServer()``, a per-port singleton
    (its own test harness registers a managed server the same way), so gpuflow puts in that slot a server
    that starts once for all threads, under the home's start-up lock, in its own process group with its own
    log file, and stops when the interpreter exits. Nothing starts until a flow needs the API; with
    ``PREFECT_API_URL`` set this does nothing and imports nothing.
    """
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return
    from prefect.server.api.server import SubprocessASGIServer

    with _slot_guard:
        if isinstance(SubprocessASGIServer._instances.get(None), _owned_slot_type()):
            return
        slot: Any = object.__new__(_owned_slot_type())
        slot.__init__()
        SubprocessASGIServer._instances[None] = slot


@functools.cache
def _owned_slot_type() -> type:
    import atexit

    from filelock import FileLock
    from prefect.server.api.server import SubprocessASGIServer

    class OwnedEphemeralServer(SubprocessASGIServer):
        """Prefect's ephemeral server, started once per process by gpuflow (see own_prefect_ephemeral_server)."""

        def __init__(self, port: int | None = None) -> None:
            if getattr(self, "_initialized", False):  # Prefect's ``SubprocessASGIServer()`` calls this again
                return
            super().__init__(None)
            self._start_guard = threading.Lock()
            self._owned: TemporaryPrefectServer | None = None

        def start(self, timeout: int | None = None) -> None:
            with self._start_guard:
                if self.running:
                    return
                owned = TemporaryPrefectServer(max(float(timeout or 0), _start_timeout()))
                try:
                    with FileLock(str(lock_path()), timeout=START_LOCK_TIMEOUT_SECONDS, thread_local=False):
                        owned.spawn(die_with_parent=threading.current_thread() is threading.main_thread())
                        owned.wait_ready()
                except BaseException:
                    owned.stop()
                    raise
                self._owned, self.port, self.server_process = owned, owned.port, owned.process
                self.running = True
                atexit.register(self.stop)

        def stop(self) -> None:
            with self._start_guard:
                owned, self._owned = self._owned, None
                self.server_process, self.running = None, False
            if owned is not None:
                _drain()
                warning = owned.stop()
                if warning:
                    print(warning, file=sys.stderr)

    return OwnedEphemeralServer
