"""Metrics from the trainer's file to its MLflow run: tailed, checked, de-duplicated, sent in batches.

Exactly once: before the trainer starts, the run's metric history is read, and every (key, step) already there
is skipped from then on, so a trainer that writes a step again after a restart, or a launcher that is itself
restarted, logs nothing twice. The first value of a (key, step) wins. Batches go out through ``log_batch``
when they reach MLflow's limit of 1000 metrics or when their oldest point has waited ``batch_seconds``.
A full batch is sent from a background thread while the next one is read and parsed (the server, not the
relay, is the slow side); one request at most is in flight, so batches reach MLflow in the order they were
made, and ``flush`` returns only once everything is stored (a failed batch raises there, or at the next send).
A line that breaks the contract is skipped with one warning naming the line and what was expected.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from workloads.sdk.contract import MetricsLine, MetricsLineError, parse_metrics_line

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Metric

MAX_BATCH = 1000  # MLflow's limit of metrics per log_batch request
MAX_WARNINGS = 5  # bad lines reported one by one; the rest are counted


class MetricsTail:
    """Complete new lines of a file that another process appends to (a line is complete at its newline)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""
        self.lines_read = 0

    def read(self) -> list[str]:
        try:
            with open(self.path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                if size < self._offset:  # truncated or replaced: read it again (duplicates are skipped)
                    self._offset, self._partial = 0, b""
                handle.seek(self._offset)
                data = handle.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        data = self._partial + data
        cut = data.rfind(b"\n")
        if cut < 0:
            self._partial = data
            return []
        self._partial = data[cut + 1 :]
        lines = [line.decode("utf-8", "replace") for line in data[:cut].split(b"\n") if line.strip()]
        self.lines_read += len(lines)
        return lines

    def rest(self) -> str:
        """An unterminated last line (the trainer exited mid-write), if any."""
        return self._partial.decode("utf-8", "replace").strip()


def run_history(client: MlflowClient, run_id: str) -> dict[str, dict[int, float]]:
    """Every metric the run already has: key -> step -> first value logged."""
    history: dict[str, dict[int, float]] = {}
    for key in client.get_run(run_id).data.metrics:
        steps: dict[int, float] = {}
        for metric in client.get_metric_history(run_id, key):
            steps.setdefault(int(metric.step), float(metric.value))
        history[key] = steps
    return history


class MetricRelay:
    """Sends each (key, step) once; ``add`` accepts points, ``pending``/``flush`` send them."""

    def __init__(
        self,
        client: MlflowClient,
        run_id: str,
        history: dict[str, dict[int, float]],
        *,
        batch_seconds: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.run_id = run_id
        self.batch_seconds = batch_seconds
        self._clock = clock
        self._seen: set[tuple[str, int]] = {(key, step) for key, steps in history.items() for step in steps}
        self._keys: set[str] = {key for key, steps in history.items() if steps}
        self._buffer: list[Metric] = []
        self._oldest = 0.0
        self._sender: ThreadPoolExecutor | None = None
        self._in_flight: Future[int] | None = None
        self.sent = 0
        self.skipped = 0
        self.batches = 0

    def known(self, key: str) -> bool:
        """True once any step of ``key`` is logged or buffered."""
        return key in self._keys

    def add(self, step: int, metrics: dict[str, float]) -> dict[str, float]:
        """Queue the points not logged yet; returns them (the rest were logged before and are skipped)."""
        from mlflow.entities import Metric

        fresh = {key: value for key, value in metrics.items() if (key, step) not in self._seen}
        self.skipped += len(metrics) - len(fresh)
        if not fresh:
            return fresh
        if not self._buffer:
            self._oldest = self._clock()
        now = int(time.time() * 1000)
        for key, value in fresh.items():
            self._seen.add((key, step))
            self._keys.add(key)
            self._buffer.append(Metric(key, value, now, step))
        if len(self._buffer) >= MAX_BATCH:
            while len(self._buffer) >= MAX_BATCH:
                batch, self._buffer = self._buffer[:MAX_BATCH], self._buffer[MAX_BATCH:]
                self._send(batch)
            self._oldest = self._clock()  # what is left arrived just now
        return fresh

    def due(self) -> bool:
        return bool(self._buffer) and self._clock() - self._oldest >= self.batch_seconds

    def flush(self) -> None:
        """Send everything queued, in batches of at most :data:`MAX_BATCH`, and wait until MLflow has it all."""
        while self._buffer:
            batch, self._buffer = self._buffer[:MAX_BATCH], self._buffer[MAX_BATCH:]
            self._send(batch)
        self._wait()
        self._oldest = self._clock()

    def _send(self, batch: list[Metric]) -> None:
        """Start sending ``batch`` once the batch before it is stored (one request in flight keeps the order)."""
        self._wait()
        if self._sender is None:
            self._sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metric-relay")
        self._in_flight = self._sender.submit(self._log, batch)

    def _log(self, batch: list[Metric]) -> int:
        self.client.log_batch(self.run_id, metrics=batch)
        return len(batch)

    def _wait(self) -> None:
        """Wait for the batch in flight; its error, if any, is raised here."""
        if self._in_flight is None:
            return
        done, self._in_flight = self._in_flight, None
        self.sent += done.result()
        self.batches += 1


class LineReader:
    """Turns raw lines into :class:`MetricsLine` s, warning (on stderr) about the ones that break the contract."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.bad = 0
        self._number = 0

    def parse(self, lines: Iterable[str]) -> list[MetricsLine]:
        out: list[MetricsLine] = []
        for text in lines:
            self._number += 1
            try:
                out.append(parse_metrics_line(text))
            except MetricsLineError as exc:
                self.bad += 1
                if self.bad <= MAX_WARNINGS:
                    shown = text if len(text) <= 200 else text[:200] + "..."
                    print(
                        f"warning: line {self._number} of {self.source} skipped: {exc}: {shown}",
                        file=sys.stderr,
                        flush=True,
                    )
        return out
