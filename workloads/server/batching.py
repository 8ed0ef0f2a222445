"""Dynamic batching: requests queued on the event loop are answered by one inference call over their rows.

When a queued batch runs (checked once per event-loop turn, after the turn's reads were parsed):

1. its rows reach ``max_batch_size``;
2. every connection that sends predictions has a request queued: nobody else can join, so waiting is waste
   (closed-loop clients at any concurrency get full batches and no added latency). This one is checked as
   the request is queued and runs the batch at once, without the loop turn;
3. the batch's first request arrived after an idle gap of at least ``max_wait``: a lone request does not
   pay the wait, it runs with whatever else arrived in the same loop turn;
4. its oldest request has waited ``max_wait``.

Otherwise a timer fires when (4) would hold. Inference runs inline on the loop (microseconds for a compiled
MLP) or, when ``offload``, in one worker thread while the loop keeps parsing the next batch's requests.

A batch that fails is run again request by request, so a request the model refuses (say, a category it never
saw) fails alone and the others in its batch are answered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


class Item:
    """One queued predict request: its rows and how to answer it."""

    __slots__ = ("compact", "connection", "proba", "received", "request", "x")

    def __init__(self, x: np.ndarray, connection: Any, request: Any, compact: bool, proba: bool) -> None:
        self.x = x
        self.connection = connection
        self.request = request
        self.compact = compact
        self.proba = proba
        self.received: float = request.received


Deliver = Callable[[list[Item], np.ndarray | None, BaseException | None], None]
Outcome = tuple[list[Item], np.ndarray | None, BaseException | None]


class Batcher:
    """Queues items and runs ``infer`` over batches of them; ``deliver`` answers each batch."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        infer: Callable[[np.ndarray], np.ndarray],
        deliver: Deliver,
        senders: Callable[[], int],
        *,
        max_batch_size: int,
        max_wait_s: float,
        offload: bool,
        observe: Callable[[int, float], None],
        thread_setup: Callable[[], None] | None = None,
    ) -> None:
        self._loop = loop
        self._infer = infer
        self._deliver = deliver
        self._senders = senders
        self._observe = observe
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        # thread_setup runs in the worker thread first: OpenMP's thread count is per thread (scikit-learn's
        # HistGradientBoosting on a busy machine spent 50 ms per row spinning its default threads otherwise)
        self._executor = (
            ThreadPoolExecutor(1, thread_name_prefix="inference", initializer=thread_setup) if offload else None
        )
        self._queue: deque[Item] = deque()
        self._rows = 0
        self._scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._busy = False
        self._lone = False
        self._last_arrival = 0.0

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing running (shutdown waits for this)."""
        return not self._queue and not self._busy

    def submit(self, item: Item) -> None:
        if not self._queue:
            self._lone = item.received - self._last_arrival >= self.max_wait_s
        self._last_arrival = item.received
        self._queue.append(item)
        self._rows += len(item.x)
        if not self._busy and len(self._queue) >= self._senders():
            self._run()  # nobody else can join this batch: skip the loop turn (c=1 latency)
        elif not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._check)

    def _check(self) -> None:
        self._scheduled = False
        if self._busy or not self._queue:
            return
        now = time.perf_counter()
        oldest = self._queue[0].received
        if (
            self._rows >= self.max_batch_size
            or self._lone
            or len(self._queue) >= self._senders()
            or now - oldest >= self.max_wait_s
        ):
            self._run()
        elif self._timer is None:
            self._timer = self._loop.call_later(self.max_wait_s - (now - oldest), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._check()

    def _take(self) -> list[Item]:
        """Items up to ``max_batch_size`` rows (always at least one)."""
        queue = self._queue
        first = queue.popleft()
        items = [first]
        rows = len(first.x)
        limit = self.max_batch_size
        while queue and rows + len(queue[0].x) <= limit:
            item = queue.popleft()
            items.append(item)
            rows += len(item.x)
        self._rows -= rows
        self._lone = False  # what is left has already waited
        return items

    def _compute(self, items: list[Item], x: np.ndarray) -> tuple[list[Outcome], float | None]:
        """Infer the batch (and its seconds); when it fails, each request alone (in the same thread)."""
        started = time.perf_counter()
        try:
            out = self._infer(x)
        except Exception as exc:
            if len(items) == 1:
                return [(items, None, exc)], None
        else:
            return [(items, out, None)], time.perf_counter() - started
        outcomes: list[Outcome] = []
        for item in items:
            try:
                outcomes.append(([item], self._infer(item.x), None))
            except Exception as exc:
                outcomes.append(([item], None, exc))
        return outcomes, None

    def _run(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        items = self._take()
        x = items[0].x if len(items) == 1 else np.concatenate([item.x for item in items])
        if self._executor is None:
            self._answer(len(x), *self._compute(items, x))
            self._reschedule()
            return
        self._busy = True
        future = self._loop.run_in_executor(self._executor, self._compute, items, x)
        future.add_done_callback(lambda done: self._finished(items, len(x), done))

    def _answer(self, rows: int, outcomes: list[Outcome], seconds: float | None) -> None:
        if seconds is not None:
            self._observe(rows, seconds)
        for items, out, error in outcomes:
            self._deliver(items, out, error)

    def _finished(self, items: list[Item], rows: int, done: asyncio.Future[tuple[list[Outcome], float | None]]) -> None:
        self._busy = False
        error = done.exception()
        if error is not None:  # _compute catches the model's errors: this is the worker thread failing
            log.error("the inference thread failed on a batch of %d rows: %r", rows, error)
            self._deliver(items, None, error)
        else:
            self._answer(rows, *done.result())
        self._reschedule()

    def _reschedule(self) -> None:
        if self._queue and not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._check)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._executor is not None:
            self._executor.shutdown(wait=False)
