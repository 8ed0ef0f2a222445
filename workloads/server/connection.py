"""One client connection as an ``asyncio.Protocol``: parse, hand requests to the app in order, write answers.

Requests on a connection are answered one at a time and in order (HTTP/1.1 pipelining is allowed but not
parallel); reading pauses when a client pipelines too far ahead. After a protocol error the connection
answers once, half-closes and discards whatever the client still sends (a "lingering close"), so the client
reads the 4xx instead of a connection reset.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import TYPE_CHECKING, cast

from workloads.server.errors import HttpError
from workloads.server.http import CONTINUE, Request, RequestParser

if TYPE_CHECKING:
    from workloads.server.app import App

MAX_PIPELINED = 32


class Connection(asyncio.Protocol):
    """Connection state; the :class:`App` decides what each request gets."""

    __slots__ = (
        "app",
        "busy",
        "draining_since",
        "eof",
        "last_active",
        "parser",
        "paused",
        "pending",
        "predicting",
        "transport",
    )

    def __init__(self, app: App) -> None:
        self.app = app
        self.parser = RequestParser(app.config.max_body_bytes)
        self.pending: deque[Request | HttpError] = deque()
        self.transport: asyncio.Transport | None = None
        self.busy = False  # a request is being answered (queued for inference or being written)
        self.paused = False
        self.predicting = False  # the last request was a prediction: this client can join a batch
        self.draining_since = 0.0
        self.eof = False  # the client will send nothing more: close once its requests are answered
        self.last_active = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        self.app.opened(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.pending.clear()
        self.app.closed(self)

    def eof_received(self) -> bool:
        # The client finished sending: answer what it already asked (a half-closed client may still read).
        self.eof = True
        return bool(self.busy or self.pending) and not self.draining_since

    def data_received(self, data: bytes) -> None:
        if self.draining_since:
            return
        self.last_active = time.monotonic()
        parsed = self.parser.feed(data)
        if self.parser.needs_continue:
            self.parser.needs_continue = False
            if self.transport is not None:
                self.transport.write(CONTINUE)
        if parsed:
            self.pending.extend(parsed)
            if not self.busy:
                self.dispatch()
            if len(self.pending) > MAX_PIPELINED and self.transport is not None and not self.paused:
                self.paused = True
                self.transport.pause_reading()

    def dispatch(self) -> None:
        """Answer pending requests until one has to wait (for inference) or none is left."""
        pending = self.pending
        while pending and not self.busy and self.transport is not None:
            request = pending.popleft()
            self.busy = True
            if isinstance(request, HttpError):
                self.app.protocol_error(self, request)
                return
            self.app.handle(self, request)
        if self.paused and len(pending) <= MAX_PIPELINED // 2 and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()

    def send(self, data: bytes, keep_alive: bool) -> None:
        """Write a complete response; afterwards close, or answer the next pipelined request."""
        transport = self.transport
        if transport is None:
            return
        transport.write(data)
        self.busy = False
        self.last_active = time.monotonic()
        if not keep_alive or (self.eof and not self.pending):
            transport.close()
            self.transport = None
        elif self.pending:
            self.dispatch()
        elif self.app.stopping:
            self.close_if_idle()

    def linger(self) -> None:
        """After an error response: stop writing, drop further input, close when the client does (or later)."""
        self.draining_since = time.monotonic()
        self.pending.clear()
        transport = self.transport
        if transport is not None and transport.can_write_eof():
            transport.write_eof()
        elif transport is not None:
            transport.close()

    @property
    def idle(self) -> bool:
        return not self.busy and not self.pending and not self.parser.in_progress

    def close_if_idle(self) -> bool:
        if self.idle and self.transport is not None:
            self.transport.close()
            self.transport = None
            return True
        return False

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
            self.transport = None
