"""The serving seam of the rollout, and its local backend.

:class:`Serving` is what the rollout flow needs from wherever the two versions run: serve stable and canary,
wait until they are ready, read each track's /metrics, route a share of traffic, promote, roll back, and
clean up on the way out. Two backends implement it: :class:`LocalServers` here (processes on loopback) and
``tasks.kube.cluster_serving.ClusterServing`` (Deployments on a Kubernetes cluster).

Locally each server is ``python -m workloads.server`` (the same command a pod runs) in its own process group,
on a free loopback port, its output kept as a tail for error messages. :class:`LocalServers` is a context
manager: whatever ends the stage (a decision, an error, a cancellation, a timeout), every process it started
is stopped on the way out, SIGTERM then SIGKILL to the whole group.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import IO, TYPE_CHECKING, Protocol

from tasks.core.errors import WorkloadFailed
from tasks.core.processes import end_group, pump_lines, signal_group, spawn_group, with_import_root
from tasks.core.types import LogFn, Track
from tasks.rollout.server_metrics import ServerSample, parse_server_metrics, startup_seconds
from tasks.rollout.traffic import Routes
from workloads.server.config import EXIT_LISTEN, EXIT_UNAVAILABLE

if TYPE_CHECKING:
    from tasks.tracking.model_registry import RegisteredVersion

SERVER_MODULE = "workloads.server"
HOST = "127.0.0.1"
TAIL_LINES = 30
STOP_GRACE_SECONDS = 10.0
SCRAPE_TIMEOUT_SECONDS = 2.0
_LISTEN_ATTEMPTS = 3


class ServerNotReady(WorkloadFailed):
    """A model server exited or did not answer GET /readyz with 200 in time; carries its exit code and tail.

    ``blameless``: the cause is not the model (MLflow unreachable, an image that cannot be pulled, no room
    on the cluster), so a canary that is not ready for it is an error, not a verdict on the candidate.
    """

    def __init__(
        self, name: str, exit_code: int | None, tail: list[str], reason: str = "", *, blameless: bool = False
    ) -> None:
        super().__init__(name, exit_code, tail, reason)
        self.blameless = blameless or exit_code == EXIT_UNAVAILABLE


class ServerUnreachable(Exception):
    """GET /metrics failed: the server is down or hung; ``tail`` holds its last log lines when known."""

    def __init__(self, message: str, tail: str = "") -> None:
        super().__init__(message)
        self.tail = tail


class Serving(Protocol):
    """Where a rollout's stable and canary run; the rollout flow sees only this.

    Every method may block (starting, scaling); errors carry the server or pod and its state. Leaving the
    context removes whatever the rollout started that must not outlive it.
    """

    backend: str  # "local" | "kubernetes": recorded on the rollout's MLflow run

    def __enter__(self) -> Serving: ...

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None: ...

    def serve_first(self, version: RegisteredVersion, timeout: float) -> None:
        """No champion yet: make ``version`` the stable one (nothing to do where no server outlives a stage)."""

    def start(self, role: Track, version: RegisteredVersion) -> None:
        """Begin serving ``version`` as ``role`` (not waiting for it)."""

    def wait_ready(self, role: Track, timeout: float) -> None:
        """Block until ``role`` answers GET /readyz; :class:`ServerNotReady` naming the server and its state."""

    def sample(self, role: Track) -> ServerSample:
        """The role's prediction counters (every server of the role summed); :class:`ServerUnreachable`."""

    def startup(self, role: Track) -> dict[str, float]:
        """The role's model load and warm-up seconds from its /metrics."""

    def down(self, role: Track) -> str | None:
        """Why the role stopped serving (a process exited, a pod crashed), with its last lines; None while up."""

    def failure(self, role: Track, detail: str) -> WorkloadFailed:
        """The error to raise when ``role`` stopped answering and must not have (stable)."""

    def routes(self, timeout: float) -> Routes:
        """Where the traffic driver sends requests, each with ``timeout``."""

    def set_weight(self, weight: int, timeout: float) -> float:
        """Give the canary ``weight`` percent of traffic before a step; returns the share it really gets."""

    def promote(self) -> None:
        """The canary's version becomes stable and the canary goes (after the last step passed)."""

    def roll_back(self) -> None:
        """The canary goes, stable keeps serving as before (idempotent)."""


def free_port() -> int:
    """A port nobody listens on right now (the server exits with EXIT_LISTEN if it is taken meanwhile)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def http_get(url: str, path: str, timeout: float) -> tuple[int, bytes]:
    """One GET on a fresh connection; raises OSError or HTTPException when there is no answer."""
    host, _, port = url.removeprefix("http://").partition(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@dataclass
class ServerProcess:
    """One running model server: its process, address and last output lines."""

    role: Track
    model_uri: str
    url: str
    proc: subprocess.Popen[bytes]
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    reader: threading.Thread | None = None

    @property
    def name(self) -> str:
        return f"{self.role} server ({self.model_uri}, pid {self.proc.pid})"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def exit_reason(self) -> str | None:
        """Why the server is gone, with its last lines; None while it runs."""
        code = self.proc.poll()
        if code is None:
            return None
        return f"{self.name} exited with code {code}; last log lines:\n" + self.log_tail()

    def log_tail(self) -> str:
        return "\n".join(f"  | {line}" for line in self.tail) if self.tail else "  | (no output)"

    def scrape(self, timeout: float = SCRAPE_TIMEOUT_SECONDS) -> str:
        """The /metrics body, read over HTTP as Prometheus would; :class:`ServerUnreachable` otherwise."""
        try:
            status, body = http_get(self.url, "/metrics", timeout)
        except (OSError, http.client.HTTPException) as exc:
            raise ServerUnreachable(f"{self.name}: GET {self.url}/metrics failed: {exc}", self.log_tail()) from exc
        if status != 200:
            raise ServerUnreachable(f"{self.name}: GET {self.url}/metrics answered {status}", self.log_tail())
        return body.decode("utf-8", errors="replace")

    def wait_ready(self, timeout: float) -> None:
        """Block until GET /readyz answers 200; :class:`ServerNotReady` when it exits or the time is up."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                self._join_reader()
                raise ServerNotReady(self.name, self.proc.returncode, list(self.tail), reason="exited before ready")
            with contextlib.suppress(OSError, http.client.HTTPException):
                if http_get(self.url, "/readyz", 1.0)[0] == 200:
                    return
            if time.monotonic() > deadline:
                raise ServerNotReady(
                    self.name, None, list(self.tail), reason=f"was not ready (GET /readyz) after {timeout:g}s"
                )
            time.sleep(0.1)

    def terminate(self) -> None:
        """Ask the server to drain and exit (SIGTERM to its process group); returns at once."""
        if self.alive():
            signal_group(self.proc.pid, signal.SIGTERM)

    def wait_stopped(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """Wait up to ``grace`` for the group to go, then SIGKILL whatever is left (children included)."""
        end_group(self.proc, grace)
        self._join_reader()

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """SIGTERM the process group (the server drains), SIGKILL whatever is left after ``grace``."""
        self.terminate()
        self.wait_stopped(grace)

    def _join_reader(self) -> None:
        if self.reader is not None:
            self.reader.join(timeout=2)


def _pump(stream: IO[bytes], server: ServerProcess, log: LogFn) -> None:
    prefix = f"[{server.role}] "

    def relay(line: str) -> None:
        server.tail.append(line)
        log(prefix + line)

    pump_lines(stream, relay)


class LocalServers:
    """Model servers started for one rollout; leaving the context stops every one of them.

    Args:
        tracking_uri: MLflow tracking (and registry) URI the servers load ``models:/`` URIs from.
        commands: Per-role replacement of ``workloads.server`` (module then arguments), the documented test
            seam ``CanaryPolicy.local_server_commands``; roles not named run the real server.
        log: Receives every output line of every server, prefixed with its role.
        python: Interpreter to run the servers with (default: this one).
    """

    backend = "local"

    def __init__(
        self,
        tracking_uri: str,
        *,
        commands: Mapping[Track, Sequence[str]] | None = None,
        log: LogFn = lambda line: None,
        python: str | None = None,
    ) -> None:
        self._tracking_uri = tracking_uri
        self._commands = dict(commands or {})
        self._log = log
        self._python = python or sys.executable
        self._servers: dict[Track, ServerProcess] = {}
        self._stopping: list[ServerProcess] = []  # signalled, not yet waited for

    def __enter__(self) -> LocalServers:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop_all()

    def __getitem__(self, role: Track) -> ServerProcess:
        return self._servers[role]

    def command(self, role: Track, model_uri: str, port: int) -> list[str]:
        """The command line for a role: the real server unless the test seam names another module."""
        program = list(self._commands.get(role, [SERVER_MODULE]))
        return [self._python, "-m", *program, "--model-uri", model_uri, "--host", HOST, "--port", str(port)]

    def start(self, role: Track, version: RegisteredVersion) -> None:
        self.spawn(role, version.model_uri)

    def spawn(self, role: Track, model_uri: str) -> ServerProcess:
        """Spawn the role's server on a free port (not waiting for it); a role already running is an error."""
        if role in self._servers:
            raise RuntimeError(f"a {role} server is already running")
        port = free_port()
        module = self._commands.get(role, [SERVER_MODULE])[0]
        env = {**os.environ, "MLFLOW_TRACKING_URI": self._tracking_uri, "PYTHONUNBUFFERED": "1"}
        proc = spawn_group(self.command(role, model_uri, port), with_import_root(env, module))
        server = ServerProcess(role=role, model_uri=model_uri, url=f"http://{HOST}:{port}", proc=proc)
        assert proc.stdout is not None
        server.reader = threading.Thread(
            target=_pump, args=(proc.stdout, server, self._log), name=f"{role}-server-output", daemon=True
        )
        server.reader.start()
        self._servers[role] = server
        return server

    def wait_ready(self, role: Track, timeout: float) -> None:
        """Wait for the role's server; a port taken between choosing and binding it is retried on another."""
        for attempt in range(1, _LISTEN_ATTEMPTS + 1):
            server = self._servers[role]
            try:
                server.wait_ready(timeout)
                return
            except ServerNotReady as exc:
                if exc.exit_code != EXIT_LISTEN or attempt == _LISTEN_ATTEMPTS:
                    raise
                del self._servers[role]
                self.spawn(role, server.model_uri)
        raise AssertionError("unreachable")

    # -- the Serving seam (one process per role; the traffic driver routes) -------------------------

    def serve_first(self, version: RegisteredVersion, timeout: float) -> None:
        """Nothing to start: locally no server outlives the stage (``gpuflow serve`` is the long-lived one)."""

    def sample(self, role: Track) -> ServerSample:
        return parse_server_metrics(self._servers[role].scrape())

    def startup(self, role: Track) -> dict[str, float]:
        return startup_seconds(self._servers[role].scrape())

    def down(self, role: Track) -> str | None:
        server = self._servers.get(role)
        return server.exit_reason() if server is not None else f"the {role} server was stopped"

    def failure(self, role: Track, detail: str) -> WorkloadFailed:
        server = self._servers[role]
        return WorkloadFailed(server.name, server.proc.poll(), list(server.tail), reason=detail)

    def routes(self, timeout: float) -> Routes:
        return Routes.local(self._servers["stable"].url, self._servers["canary"].url, timeout)

    def set_weight(self, weight: int, timeout: float) -> float:
        """The driver routes each request itself: the weight is exact."""
        return float(weight)

    def promote(self) -> None:
        """The old stable retires (signalled now, waited for on exit); the canary stops with the stage."""
        self.stop("stable", wait=False)

    def roll_back(self) -> None:
        """Traffic is already off the canary: it drains while the stage goes on."""
        self.stop("canary", wait=False)

    def stop(self, role: Track, *, wait: bool = True) -> None:
        """Stop one role's server (idempotent); ``wait=False`` only signals it, leaving the wait to ``stop_all``."""
        server = self._servers.pop(role, None)
        if server is None:
            return
        if wait:
            server.stop()
        else:
            server.terminate()
            self._stopping.append(server)

    def stop_all(self) -> None:
        """Stop every server this object started: all are signalled first, then each is waited for (or killed)."""
        running = list(self._servers.values())
        servers = [*self._stopping, *running]
        self._servers.clear()
        self._stopping.clear()
        errors: list[BaseException] = []
        for server in running:  # those in _stopping were signalled already: a second SIGTERM means "hurry"
            try:
                server.terminate()
            except BaseException as exc:  # keep stopping the others; re-raised below
                errors.append(exc)
        for server in servers:
            try:
                server.wait_stopped()
            except BaseException as exc:
                errors.append(exc)
        if errors:
            raise errors[0]
