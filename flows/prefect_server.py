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

The health check runs in a background thread while the command imports torch and MLflow. The server process
itself is :class:`flows.prefect_process.TemporaryPrefectServer`; this module decides when one runs.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from flows.prefect_process import START_LOCK_TIMEOUT_SECONDS, TemporaryPrefectServer, lock_path, start_timeout
from tasks.core.errors import ServiceUnavailable


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

    server = TemporaryPrefectServer(start_timeout(), on_ready=release)
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
                deliver_events_and_logs()
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


def deliver_events_and_logs() -> None:
    """Deliver what Prefect's events and log workers still hold, and stop them.

    Each is one per process for every self-hosted API, bound to the API URL in effect when it started: stopped,
    the next event or log starts a fresh one on the URL in effect then. So this runs before a process points
    its clients elsewhere, or its server stops; otherwise later events go to a server that is gone.
    """
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (EventsWorker, APILogWorker):
        _drop_drain_warning(logging.getLogger(worker.__name__))
        worker.drain_all(timeout=10)


def _still_processing(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Still processing items")


def _drop_drain_warning(logger: logging.Logger) -> None:
    """From now on, drop a worker's "Still processing items: N items remaining..." warning: Prefect logs it only
    when a worker is stopped with items queued, which is what a drain is for (every `gpuflow report` printed one).
    Its other warnings (a full queue dropping items) still show."""
    if _still_processing not in logger.filters:
        logger.addFilter(_still_processing)


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
                owned = TemporaryPrefectServer(max(float(timeout or 0), start_timeout()))
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
                deliver_events_and_logs()
                warning = owned.stop()
                if warning:
                    print(warning, file=sys.stderr)

    return OwnedEphemeralServer
