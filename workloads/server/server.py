"""The server's life: listen first, load and warm up in a thread, serve, and drain on SIGTERM.

Listening before the model is loaded lets Kubernetes (or a test) see the process alive (``/healthz`` 200)
and not ready (``/readyz`` 503) during the seconds MLflow and torch take. The ready line is logged before
readiness flips, so whoever waits for the line never sees a 503 after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from workloads.server.app import App
from workloads.server.config import EXIT_ERROR, EXIT_LISTEN, EXIT_OK, ServerConfig
from workloads.server.connection import Connection
from workloads.server.errors import HttpError, ModelLoadError
from workloads.server.predictor import OFFLOAD_ABOVE_S, Predictor, build, warm_up

log = logging.getLogger("workloads.server")
LINGER_S = 2.0  # how long a connection may keep sending after an error response


def _prepare(config: ServerConfig) -> tuple[Predictor, float, float]:
    """Resolve, download, load, compile and warm up (in the loader thread)."""
    from workloads.server.model_loading import load, resolve

    loaded = load(resolve(config.model_uri, config.tracking_uri), config.tracking_uri)
    predictor = build(loaded, config)
    warmup_seconds, full_batch_seconds = warm_up(predictor, config, loaded.example)
    return predictor, warmup_seconds, full_batch_seconds


def _in_thread(loop: asyncio.AbstractEventLoop, work: Callable[[], Any]) -> asyncio.Future[Any]:
    """Run ``work`` in a daemon thread (so a SIGTERM during loading does not wait for it)."""
    future: asyncio.Future[Any] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def target() -> None:
        try:
            result, error = work(), None
        except BaseException as exc:
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop is closed: the server stopped while loading
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=target, name="model-loader", daemon=True).start()
    return future


def _sweep(app: App, config: ServerConfig) -> None:
    """Once a second: close idle keep-alive connections, time out slow requests, end lingering closes."""
    now = time.monotonic()
    for connection in list(app.connections):
        if connection.draining_since:
            if now - connection.draining_since > LINGER_S:
                connection.abort()
        elif connection.parser.in_progress and not connection.busy and not connection.pending:
            if now - connection.parser.started > config.request_timeout_s:
                message = f"request incomplete after {config.request_timeout_s:g} s"
                app.protocol_error(connection, HttpError(408, message, "the whole request sooner", close=True))
        elif connection.idle and now - connection.last_active > config.keep_alive_s:
            connection.close_if_idle()


async def serve(config: ServerConfig) -> int:
    """Run until SIGTERM/SIGINT; returns the process exit code."""
    loop = asyncio.get_running_loop()
    app = App(config, loop)
    try:
        server = await loop.create_server(
            lambda: Connection(app), config.host, config.port, backlog=4096, reuse_address=True
        )
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", config.host, config.port, exc)
        return EXIT_LISTEN
    port = server.sockets[0].getsockname()[1]
    url = f"http://{config.host}:{port}"
    log.info("listening on %s, loading %s", url, config.model_uri)

    stop = asyncio.Event()

    def on_signal(name: str) -> None:
        if stop.is_set():
            log.warning("%s again: closing all connections now", name)
            for connection in list(app.connections):
                connection.abort()
        else:
            log.info("%s: finishing in-flight requests, then exiting", name)
            stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, on_signal, sig.name)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no signals here
            log.debug("cannot handle %s in this thread", sig.name)

    def sweep() -> None:
        _sweep(app, config)
        timers[0] = loop.call_later(1.0, sweep)

    timers = [loop.call_later(1.0, sweep)]
    try:
        loading = _in_thread(loop, lambda: _prepare(config))
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait([loading, stopping], return_when=asyncio.FIRST_COMPLETED)
        if not loading.done():
            log.info("stopped before the model was ready")
            return EXIT_OK
        stopping.cancel()
        try:
            predictor, warmup_seconds, full_batch_seconds = loading.result()
        except ModelLoadError as exc:
            log.error("%s", exc)
            return exc.exit_code
        except Exception:
            log.exception("loading %s failed", config.model_uri)
            return EXIT_ERROR
        offload = config.offload == "yes" or (config.offload == "auto" and full_batch_seconds > OFFLOAD_ABOVE_S)
        # MLflow and torch leave many long-lived objects behind: keep the collector from rescanning them
        # while serving (a full collection would be a latency spike).
        gc.collect()
        gc.freeze()
        app.metrics.load_seconds = predictor.load_seconds
        app.metrics.warmup_seconds = warmup_seconds
        log.info(
            "ready: model=%s version=%s backend=%s device=%s load_s=%.3f warmup_s=%.3f port=%d url=%s "
            "max_batch_size=%d max_wait_us=%d offload=%s",
            predictor.name,
            predictor.version,
            predictor.backend,
            predictor.device,
            predictor.load_seconds,
            warmup_seconds,
            port,
            url,
            config.max_batch_size,
            config.max_wait_us,
            "yes" if offload else "no",
        )
        app.serve(predictor, offload)
        await stop.wait()
        await _drain(app, server, config)
        return EXIT_OK
    finally:
        timers[0].cancel()
        server.close()
        if app.batcher is not None:
            app.batcher.close()


async def _drain(app: App, server: asyncio.Server, config: ServerConfig) -> None:
    """Stop accepting, close idle connections, let busy ones finish (up to the shutdown timeout)."""
    app.stopping = True
    app.metrics.ready = 0
    server.close()
    for connection in list(app.connections):
        connection.close_if_idle()
    deadline = time.monotonic() + config.shutdown_timeout_s
    while app.connections and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    if app.connections:
        log.warning(
            "%d connections still open after %.1f s: closing them", len(app.connections), config.shutdown_timeout_s
        )
        for connection in list(app.connections):
            connection.abort()
    log.info("stopped")
