"""Routes and answers: what each request gets, the predict path tuned for one-row JSON requests.

The app owns the server's state (loading, ready, stopping), the open connections, the batcher and the
metrics. Response bytes that do not depend on the request are built once: a one-row JSON classification is a
header prefix, the Date line and one of ``n_classes`` prebuilt tails. Answers follow the model's task: class
labels (and probabilities with ``?proba=1``) for a classifier, ``{"predictions": [value, ...]}`` for a regressor.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import numpy as np
import orjson

from workloads.server import openapi
from workloads.server.batching import Batcher, Item
from workloads.server.codec import COMPACT, JSON, Encoder, ValueEncoder, decode_compact, expected_compact, softmax
from workloads.server.config import ServerConfig
from workloads.server.connection import Connection
from workloads.server.errors import HttpError
from workloads.server.http import CLOSE, Request, build_response, date_line
from workloads.server.metrics import Metrics
from workloads.server.predictor import Predictor, limit_threads

log = logging.getLogger(__name__)

PREDICT = b"/v1/predict"
ROUTES = {
    b"/v1/predict": ("/v1/predict", b"POST"),
    b"/v1/model": ("/v1/model", b"GET"),
    b"/healthz": ("/healthz", b"GET"),
    b"/readyz": ("/readyz", b"GET"),
    b"/metrics": ("/metrics", b"GET"),
    b"/openapi.json": ("/openapi.json", b"GET"),
}
OTHER = "other"  # route label of paths that match no route
TEXT = b"text/plain; version=0.0.4; charset=utf-8"
_TRUE = (b"1", b"true", b"yes")
_FALSE = (b"0", b"false", b"no", b"")


def _proba(query: bytes) -> bool:
    """The ``proba`` query flag; any other parameter or value is refused, so a typo does not go unnoticed."""
    proba = False
    for part in query.split(b"&"):
        if not part:
            continue
        key, _, value = part.partition(b"=")
        if key != b"proba":
            raise HttpError(400, f"unknown query parameter {key.decode(errors='replace')!r}", "only proba=0|1")
        if value.lower() in _TRUE:
            proba = True
        elif value.lower() not in _FALSE:
            raise HttpError(400, f"proba={value.decode(errors='replace')!r}", "proba=1 or proba=0 (also true/false)")
    return proba


class App:
    """The server's state and request handling (one instance per process)."""

    def __init__(self, config: ServerConfig, loop: asyncio.AbstractEventLoop) -> None:
        self.config = config
        self.loop = loop
        self.metrics = Metrics(config.model_uri, "")
        self.connections: set[Connection] = set()
        self.senders = 0  # connections whose last request was a prediction
        self.predictor: Predictor | None = None
        self.batcher: Batcher | None = None
        self.stopping = False
        self._encoder: Encoder | None = None
        self._values = ValueEncoder()
        self._json_prefix = b""
        self._model_headers = b""  # X-Model-Name/-Version lines, also on refusals once a model is loaded
        self._compact_prefix = b""
        self._single: list[bytes] = []
        self._static: dict[str, bytes] = {}
        self._openapi = self._openapi_body()

    # -- state -------------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.predictor is not None and not self.stopping

    def serve(self, predictor: Predictor, offload: bool) -> None:
        """Start answering predictions with ``predictor``."""
        self.metrics.set_model(predictor.name, predictor.version)
        self.metrics.uri = predictor.uri
        self.metrics.backend = predictor.backend
        self.batcher = Batcher(
            self.loop,
            predictor.infer,
            self._deliver,
            lambda: self.senders,
            max_batch_size=self.config.max_batch_size,
            max_wait_s=self.config.max_wait_s,
            offload=offload,
            observe=self._observe_batch,
            thread_setup=lambda: limit_threads(self.config.threads),
        )
        self._encoder = Encoder(predictor.labels)
        model_headers = f"X-Model-Name: {_header(predictor.name)}\r\nX-Model-Version: {_header(predictor.version)}\r\n"
        self._model_headers = model_headers.encode("latin-1", "replace")
        base = b"HTTP/1.1 200 OK\r\nServer: gpuflow\r\n" + self._model_headers
        self._json_prefix = base + b"Content-Type: application/json\r\n"
        self._compact_prefix = base + b"Content-Type: application/octet-stream\r\n"
        self._single = [b"Content-Length: %d\r\n\r\n%s" % (len(body), body) for body in self._encoder.single]
        self.predictor = predictor
        self._openapi = self._openapi_body()
        self.metrics.ready = 1

    def opened(self, connection: Connection) -> None:
        self.connections.add(connection)

    def closed(self, connection: Connection) -> None:
        if connection in self.connections:
            self.connections.discard(connection)
            if connection.predicting:
                connection.predicting = False
                self.senders -= 1

    # -- requests ----------------------------------------------------------------------------------

    def handle(self, connection: Connection, request: Request) -> None:
        """Answer ``request`` now, or queue it for inference (the batcher answers it)."""
        path = request.path
        if path == PREDICT and request.method == b"POST" and self.batcher is not None:
            if not connection.predicting:
                connection.predicting = True
                self.senders += 1
            try:
                item = self._decode(connection, request)
            except HttpError as error:
                self.error(connection, request, "/v1/predict", error)
                return
            self.batcher.submit(item)
            return
        if connection.predicting:
            connection.predicting = False
            self.senders -= 1
        route = ROUTES.get(path)
        if route is None:
            known = ", ".join(sorted(name.decode() for name in ROUTES))
            self.error(connection, request, OTHER, HttpError(404, f"no route {_text(path)}", f"one of {known}"))
            return
        label, method = route
        if request.method != method:
            allow = (("Allow", method.decode()),)
            message = f"{_text(request.method)} {label}"
            self.error(connection, request, label, HttpError(405, message, f"{method.decode()} {label}", headers=allow))
            return
        if label == "/v1/predict" or (label == "/v1/model" and self.predictor is None):
            # Only reached before the model is ready: once it is, predictions take the branch above.
            loading = HttpError(503, "the model is loading", "a request after GET /readyz answers 200")
            self.error(connection, request, label, loading)
        elif label == "/v1/model":
            self.reply(connection, request, label, 200, self._model_body(), JSON)
        elif label == "/healthz":
            self.reply(connection, request, label, 200, b'{"status":"ok"}', JSON)
        elif label == "/readyz":
            if self.ready:
                self.reply(connection, request, label, 200, b'{"status":"ready"}', JSON)
            else:
                body = b'{"status":"stopping"}' if self.stopping else b'{"status":"loading"}'
                self.reply(connection, request, label, 503, body, JSON)
        elif label == "/metrics":
            self.metrics.open_connections = len(self.connections)
            self.metrics.ready = int(self.ready)
            self.reply(connection, request, label, 200, self.metrics.render(), TEXT)
        else:
            self.reply(connection, request, label, 200, self._openapi, JSON)

    def _decode(self, connection: Connection, request: Request) -> Item:
        predictor = self.predictor
        assert predictor is not None
        content_type = request.content_type
        if b";" in content_type:
            content_type = content_type.split(b";", 1)[0].strip()
        content_type = content_type.lower()
        proba = _proba(request.query) if request.query else False
        if proba and predictor.regression:
            raise HttpError(400, "proba=1 on a regression model", "no proba parameter: a regressor has no classes")
        spec = predictor.input_spec
        if content_type == JSON:
            return Item(spec.decode(request.body, self.config.max_rows), connection, request, False, proba)
        if content_type == COMPACT and not spec.typed:
            x = decode_compact(request.body, predictor.n_features, self.config.max_rows)
            if spec.dtype != "float32":
                x = x.astype(spec.dtype)
            return Item(x, connection, request, True, proba)
        shown = _text(request.content_type) if request.content_type else "missing"
        if spec.typed:
            raise HttpError(415, f"Content-Type {shown}", "application/json (this model takes typed columns)")
        raise HttpError(
            415,
            f"Content-Type {shown}",
            f"application/json, or application/octet-stream ({expected_compact(predictor.n_features)})",
        )

    def _deliver(self, items: list[Item], out: np.ndarray | None, failure: BaseException | None) -> None:
        """Answer a batch: each item gets its rows' predictions, in its own format."""
        predictor = self.predictor
        assert predictor is not None
        if out is None:
            self._failed(items, failure, predictor.refusals_are_client_errors)
        elif predictor.regression:
            self._deliver_values(items, out.reshape(len(out)))
        else:
            self._deliver_classes(items, out, predictor.output == "logits")

    def _failed(self, items: list[Item], failure: BaseException | None, client_fault: bool) -> None:
        """Inference failed: a fault of the server (500), or the model refusing this request's values (422)."""
        if not client_fault:
            rows = sum(len(item.x) for item in items)
            log.error("inference failed on %d rows", rows, exc_info=failure)
        for item in items:
            if client_fault:
                message = f"the model refused these rows: {failure}"
                error = HttpError(422, message[:500], "values the model was trained on (see GET /v1/model)")
            else:
                error = HttpError(500, f"inference failed: {failure!r}", "a server that works: please report this")
            self.error(item.connection, item.request, "/v1/predict", error)

    def _deliver_values(self, items: list[Item], values: np.ndarray) -> None:
        encoder = self._values
        count = self.metrics.count
        stopping = self.stopping
        start = 0
        for item in items:
            stop = start + len(item.x)
            request = item.request
            keep_alive = request.keep_alive and not stopping
            connection_line = request.connection if not stopping else CLOSE
            part = np.ascontiguousarray(values[start:stop])
            if item.compact:
                body, prefix = encoder.compact(part), self._compact_prefix
            else:
                body, prefix = encoder.json(part), self._json_prefix
            data = b"%s%s%sContent-Length: %d\r\n\r\n%s" % (prefix, date_line(), connection_line, len(body), body)
            start = stop
            item.connection.send(data, keep_alive)
            count("/v1/predict", 200, time.perf_counter() - item.received)

    def _deliver_classes(self, items: list[Item], scores: np.ndarray, logits: bool) -> None:
        encoder = self._encoder
        assert encoder is not None
        indices = scores.argmax(axis=1)
        probabilities = None
        if any(item.proba for item in items):
            probabilities = softmax(scores) if logits else scores
        count = self.metrics.count
        stopping = self.stopping
        start = 0
        for item in items:
            rows = len(item.x)
            request = item.request
            keep_alive = request.keep_alive and not stopping
            connection_line = request.connection if not stopping else CLOSE
            if rows == 1 and not item.proba and not item.compact:
                data = self._json_prefix + date_line() + connection_line + self._single[int(indices[start])]
            else:
                stop = start + rows
                probs = probabilities[start:stop] if item.proba and probabilities is not None else None
                if item.compact:
                    body, prefix = encoder.compact(indices[start:stop], probs), self._compact_prefix
                else:
                    body, prefix = encoder.json(indices[start:stop], probs), self._json_prefix
                data = b"%s%s%sContent-Length: %d\r\n\r\n%s" % (prefix, date_line(), connection_line, len(body), body)
            start += rows
            item.connection.send(data, keep_alive)
            count("/v1/predict", 200, time.perf_counter() - item.received)

    def _observe_batch(self, rows: int, seconds: float) -> None:
        self.metrics.batch_size.observe(rows)
        self.metrics.inference.observe(seconds)

    def reply(
        self, connection: Connection, request: Request, route: str, status: int, body: bytes, content_type: bytes
    ) -> None:
        keep_alive = request.keep_alive and not self.stopping
        data = build_response(status, body, content_type, request.connection if keep_alive else CLOSE)
        connection.send(data, keep_alive)
        self.metrics.count(route, status, time.perf_counter() - request.received)

    def error(self, connection: Connection, request: Request, route: str, error: HttpError) -> None:
        """A refusal on a request that was read completely: the connection stays usable unless told.

        It names the model version like an answer does, so a client behind a Service that balances two
        versions (the cluster canary) knows which one failed.
        """
        keep_alive = request.keep_alive and not self.stopping and not error.close
        data = build_response(
            error.status,
            _error_body(error),
            JSON,
            request.connection if keep_alive else CLOSE,
            self._model_headers + "".join(f"{name}: {value}\r\n" for name, value in error.headers).encode(),
        )
        connection.send(data, keep_alive)
        self.metrics.count(route, error.status, time.perf_counter() - request.received)

    def protocol_error(self, connection: Connection, error: HttpError) -> None:
        """A request that could not be parsed (or arrived too slowly): answer, then lingering close."""
        route = ROUTES.get(error.path, (OTHER, b""))[0] if error.path else OTHER
        transport = connection.transport
        if transport is not None:
            transport.write(build_response(error.status, _error_body(error), JSON, CLOSE, self._model_headers))
        connection.busy = False
        connection.linger()
        self.metrics.count(route, error.status, None)

    # -- bodies ------------------------------------------------------------------------------------

    def _model_body(self) -> bytes:
        predictor = self.predictor
        assert predictor is not None
        return orjson.dumps(
            {
                "name": predictor.name,
                "version": predictor.version,
                "uri": predictor.uri,
                "task": predictor.task,
                "backend": predictor.backend,
                "device": predictor.device,
                "labels": None if predictor.regression else predictor.labels,
                "n_features": predictor.n_features,
                "input": predictor.input_spec.describe(),
                "feature_names": predictor.feature_names,
                "max_rows": self.config.max_rows,
                "max_body_bytes": self.config.max_body_bytes,
                "max_batch_size": self.config.max_batch_size,
                "max_wait_us": self.config.max_wait_us,
            }
        )

    def _openapi_body(self) -> bytes:
        predictor = self.predictor
        return orjson.dumps(
            openapi.document(
                model=predictor.name if predictor else self.config.model_uri,
                version=predictor.version if predictor else "(loading)",
                inputs=predictor.input_spec if predictor else None,
                task=predictor.task if predictor else None,
                labels=predictor.labels if predictor else None,
                max_rows=self.config.max_rows,
                max_body_bytes=self.config.max_body_bytes,
            )
        )


def _header(value: str) -> str:
    """A header-safe value: no line breaks (names come from the registry, not from clients)."""
    return value.replace("\r", " ").replace("\n", " ")


def _text(raw: bytes) -> str:
    text = raw.decode("utf-8", errors="replace")
    return repr(text if len(text) <= 60 else text[:57] + "...")


def _error_body(error: HttpError) -> bytes:
    body: dict[str, Any] = {"error": error.message, "status": error.status}
    if error.expected:
        body["expected"] = error.expected
    return orjson.dumps(body)
