"""The local traffic driver: replays a labelled split against the stable and canary servers at a weight.

On a cluster, users send the traffic and a gateway splits it; locally gpuflow plays both parts, so the
canary analysis has traffic to judge and labels to judge it by.

- **Routing** is smooth weighted round-robin (nginx's algorithm): deterministic, and any 100 consecutive
  requests hold exactly ``weight`` canary requests, evenly spread (no bursts, no seed to pick).
- **Rows** are the split replayed in a new seeded order on every pass, so the canary does not see the same
  rows over and over when the split's size is a multiple of the routing period.
- **A failed canary request is answered anyway**: when the canary answers non-2xx, times out or refuses the
  connection, the driver asks stable for the same row and the user gets stable's answer. It counts as a
  canary error (and as ``retried_on_stable``); only a request stable cannot answer either is ``unanswered``.
- **Agreement** is measured per canary answer against stable's answer for the same row. Stable serves one
  fixed version, so its answer to a row never changes: the driver keeps each row's stable answer from routed
  traffic and, for a row stable has not answered yet, asks stable once in shadow (the answer is compared,
  never returned to the user). Shadow requests show in stable's /metrics like any other request.
- **Per task**: a classifier's answers are labels, compared as text (so integer labels and their JSON answers
  match), correct when equal to the row's label, agreeing when equal to stable's. A regressor's answers are
  numbers: each target records its squared errors against the labels, agreement is
  ``|canary - stable| <= atol + rtol * |stable|``, and for every compared row both versions' squared errors
  on that row are summed, so the canary's RMSE is judged against stable's on the very same rows.

Pacing is open-loop up to ``concurrency`` requests in flight: request *k* is sent at ``start + k / rate``
unless every worker is busy, so a slow canary does not slow the request rate of the whole test.

**Two ways to route** (:class:`Routes`). Locally the driver picks stable or canary per request (above). On a
cluster the split is the cluster's (replica ratio behind one Service, or HTTPRoute weights): every request goes
to one address, as a client's would, and each answer is attributed to a track by its ``X-Model-Version``
header (the server sets it on answers and refusals alike). A failure that names no version (the API server's
proxy or a gateway could not reach a pod) is ``unattributed``: it is charged to the canary as a transport error
(an unexplained failure must not let a canary look clean) and answered by stable like any failed canary request.
Retries and shadow requests always go to stable alone.
"""

from __future__ import annotations

import copy
import http.client
import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import numpy as np

from blocks.canary_policy import TaskThresholds
from tasks.core.types import Track

PREDICT_PATH = "/v1/predict"
VERSION_HEADER = "X-Model-Version"


@dataclass
class TargetRecord:
    """What the driver saw of one server during a step (user requests only, not retries or shadows)."""

    routed: int = 0
    http_errors: int = 0
    transport_errors: int = 0
    answered: int = 0
    correct: int = 0
    squared_error: float = 0.0  # regression: sum over answered rows of (answer - label)^2
    latencies: list[float] = field(default_factory=list)

    @property
    def errors(self) -> int:
        return self.http_errors + self.transport_errors

    @property
    def rmse(self) -> float | None:
        return (self.squared_error / self.answered) ** 0.5 if self.answered else None


@dataclass
class TrafficRecord:
    """The driver's record of one step: per target, plus what happened to canary requests that failed."""

    stable: TargetRecord = field(default_factory=TargetRecord)
    canary: TargetRecord = field(default_factory=TargetRecord)
    retried_on_stable: int = 0  # canary failures that stable answered
    unanswered: int = 0  # user requests nobody answered (stable failed a routed request or a retry)
    unattributed: int = 0  # upstream split: answers naming neither version (failures also count as canary errors)
    shadow_requests: int = 0
    compared: int = 0
    agreed: int = 0
    paired_canary_squared_error: float = 0.0  # regression: over compared rows, canary's (answer - label)^2
    paired_stable_squared_error: float = 0.0  # and stable's on the same rows
    seconds: float = 0.0

    @property
    def rmse_ratio(self) -> float | None:
        """Canary RMSE / stable RMSE on the compared rows (regression); None before any comparison."""
        if not self.compared:
            return None
        if self.paired_canary_squared_error == 0:
            return 1.0 if self.paired_stable_squared_error == 0 else 0.0
        # a perfect stable makes any canary error infinitely worse: a huge finite ratio (JSON, MLflow metrics)
        return (self.paired_canary_squared_error / max(self.paired_stable_squared_error, 1e-300)) ** 0.5

    def target(self, name: Track) -> TargetRecord:
        return self.stable if name == "stable" else self.canary


class WeightedRouter:
    """Smooth weighted round-robin between stable and canary; thread-safe."""

    def __init__(self, canary_percent: int) -> None:
        if not 0 <= canary_percent <= 100:
            raise ValueError(f"canary weight {canary_percent} is not a percent between 0 and 100")
        self._weights = {"stable": 100 - canary_percent, "canary": canary_percent}
        self._current = {"stable": 0, "canary": 0}
        self._lock = threading.Lock()

    def pick(self) -> Track:
        with self._lock:
            for name, weight in self._weights.items():
                self._current[name] += weight
            chosen: Track = "canary" if self._current["canary"] > self._current["stable"] else "stable"
            self._current[chosen] -= 100
            return chosen


class RowCycle:
    """Row indices of the split, each pass in a new seeded order; thread-safe."""

    def __init__(self, rows: int, seed: int = 0) -> None:
        if rows <= 0:
            raise ValueError("the traffic driver needs at least one labelled row")
        self._rng = np.random.default_rng(seed)
        self._rows = rows
        self._order: list[int] = []
        self._lock = threading.Lock()

    def next(self) -> int:
        with self._lock:
            if not self._order:
                self._order = self._rng.permutation(self._rows).tolist()[::-1]
            return self._order.pop()


@dataclass(frozen=True)
class Answer:
    """One request's outcome: a prediction (the JSON value), or why there is none, and the version that answered."""

    prediction: Any
    status: int | None  # None: no HTTP answer (refused, reset, timed out)
    seconds: float
    version: str | None = None

    @property
    def ok(self) -> bool:
        return self.prediction is not None


def read_answer(status: int, version: str | None, payload: bytes, seconds: float) -> Answer:
    """An HTTP answer to a one-row predict request: its prediction when 2xx with one, else a failure."""
    if not 200 <= status < 300:
        return Answer(None, status, seconds, version)
    try:
        prediction = json.loads(payload)["predictions"][0]
    except (ValueError, KeyError, IndexError, TypeError):
        return Answer(None, status, seconds, version)  # a 2xx without a prediction is no answer
    if prediction is None:
        return Answer(None, status, seconds, version)
    return Answer(prediction, status, seconds, version)


class Endpoint(Protocol):
    """Where one worker sends predict requests; each worker thread has its own."""

    def predict(self, body: bytes) -> Answer: ...

    def close(self) -> None: ...


EndpointFactory = Callable[[], Endpoint]


class HttpEndpoint:
    """One keep-alive connection to an ``http(s)://host[:port][/prefix]`` address, reopened after any error."""

    def __init__(self, url: str, timeout: float) -> None:
        parts = urlsplit(url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (443 if self._https else 80)
        self._path = parts.path.rstrip("/") + PREDICT_PATH
        self._timeout = timeout
        self._connection: http.client.HTTPConnection | None = None

    def predict(self, body: bytes) -> Answer:
        started = time.perf_counter()
        try:
            if self._connection is None:
                kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
                self._connection = kind(self._host, self._port, timeout=self._timeout)
            self._connection.request("POST", self._path, body=body, headers={"Content-Type": "application/json"})
            response = self._connection.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException):
            self.close()
            return Answer(None, None, time.perf_counter() - started)
        return read_answer(response.status, response.getheader(VERSION_HEADER), payload, time.perf_counter() - started)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def http_endpoint(url: str, timeout: float) -> EndpointFactory:
    """A factory of :class:`HttpEndpoint` for ``url``."""
    return lambda: HttpEndpoint(url, timeout)


@dataclass(frozen=True)
class Routes:
    """Where the driver's requests go.

    ``split_by`` None: the driver routes, ``canary`` alone gets the weight's share (local backend).
    Otherwise every user request goes to ``split_by`` (a Service or gateway balancing both tracks), and
    ``versions`` (registry version -> track) attributes each answer by its ``X-Model-Version`` header.
    ``stable`` reaches stable alone: its routed share locally, retries and shadows always.
    """

    stable: EndpointFactory
    canary: EndpointFactory | None = None
    split_by: EndpointFactory | None = None
    versions: Mapping[str, Track] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.canary is None) == (self.split_by is None):
            raise ValueError("routes need either a canary endpoint (the driver splits) or split_by (upstream splits)")
        if self.split_by is not None and sorted(self.versions.values()) != ["canary", "stable"]:
            raise ValueError(f"an upstream split needs one version per track, got {dict(self.versions)}")

    @classmethod
    def local(cls, stable_url: str, canary_url: str, timeout: float) -> Routes:
        return cls(stable=http_endpoint(stable_url, timeout), canary=http_endpoint(canary_url, timeout))


class TrafficDriver:
    """Sends the split's rows to stable and canary at a weight, one step at a time, and records what came back.

    ``start(weight)`` begins a step (a fresh record), ``snapshot()`` reads the record while traffic flows,
    ``stop()`` ends the step and returns its record. ``thresholds`` says the task (classification when None):
    classes are compared as strings, so integer labels and their JSON answers match; regression answers as
    numbers, with its tolerance.
    """

    def __init__(
        self,
        routes: Routes,
        features: np.ndarray,
        labels: Sequence[Any],
        *,
        requests_per_second: float,
        concurrency: int,
        timeout_seconds: float,
        seed: int = 0,
        thresholds: TaskThresholds | None = None,
    ) -> None:
        if len(features) != len(labels):
            raise ValueError(f"{len(features)} feature rows but {len(labels)} labels")
        self._routes = routes
        rows = np.asarray(features)  # float32 numbers, or objects: a category the models take as its string
        rows = rows if rows.dtype == object else rows.astype(np.float32, copy=False)
        self._bodies = [json.dumps({"rows": [row.tolist()]}).encode() for row in rows]
        self._thresholds = thresholds or TaskThresholds("classification")
        self._regression = self._thresholds.task == "regression"
        self._labels: list[Any] = [self._value(label.item() if hasattr(label, "item") else label) for label in labels]
        self._interval = 1.0 / requests_per_second
        self._concurrency = concurrency
        self._timeout = timeout_seconds
        self._rows = RowCycle(len(self._bodies), seed)
        self._stable_answers: dict[int, Any] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._router = WeightedRouter(0)
        self._record = TrafficRecord()
        self._started = 0.0
        self._next_at = 0.0
        self.first_canary_at: float | None = None  # time.monotonic() of the first request routed to the canary

    @property
    def running(self) -> bool:
        return bool(self._threads)

    def start(self, weight: int) -> None:
        """Begin a step: ``weight`` percent of requests go to the canary (routed here, or upstream's split)."""
        if self._threads:
            raise RuntimeError("a step is already running; stop() it first")
        self._router = WeightedRouter(weight)
        self._record = TrafficRecord()
        self._stop.clear()
        self._started = self._next_at = time.monotonic()
        self._threads = [
            threading.Thread(target=self._work, name=f"traffic-{n}", daemon=True) for n in range(self._concurrency)
        ]
        for thread in self._threads:
            thread.start()

    def snapshot(self) -> TrafficRecord:
        """A copy of the running step's record."""
        with self._lock:
            record = copy.deepcopy(self._record)
        record.seconds = time.monotonic() - self._started
        return record

    def stop(self) -> TrafficRecord:
        """End the step: no new request is sent; in-flight ones finish (within the request timeout)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self._timeout * 3 + 5)
        self._threads = []
        return self.snapshot()

    # -- the workers ------------------------------------------------------------------------------

    def _pace(self) -> bool:
        """Wait for this worker's next send slot; False when the step is stopping."""
        with self._lock:
            now = time.monotonic()
            at = max(self._next_at, now)
            self._next_at = at + self._interval
        return not self._stop.wait(at - now) if at > now else not self._stop.is_set()

    def _work(self) -> None:
        routes = self._routes
        stable = routes.stable()
        chosen: Endpoint | None = routes.canary() if routes.canary else None
        upstream: Endpoint | None = routes.split_by() if routes.split_by else None
        try:
            while self._pace():
                row = self._rows.next()
                sent = time.monotonic()
                target: Track | None
                if upstream is not None:
                    answer = self._read(upstream.predict(self._bodies[row]))
                    target = routes.versions.get(answer.version) if answer.version else None
                else:
                    assert chosen is not None
                    target = self._router.pick()
                    answer = self._read((stable if target == "stable" else chosen).predict(self._bodies[row]))
                if target == "canary" and self.first_canary_at is None:
                    self.first_canary_at = sent
                if target == "stable":
                    self._record_stable(row, answer)
                elif target == "canary":
                    self._record_canary(row, answer, stable)
                else:
                    self._record_unattributed(row, answer, stable)
        finally:
            for endpoint in (stable, chosen, upstream):
                if endpoint is not None:
                    endpoint.close()

    def _value(self, value: Any) -> Any:
        """An answer or label as the task compares it: text for classes, a float for regression (None: unusable)."""
        if not self._regression:
            return str(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return float(value)

    def _read(self, answer: Answer) -> Answer:
        """The answer with its prediction in the task's form; a 2xx with an unusable one is no answer."""
        if not answer.ok:
            return answer
        value = self._value(answer.prediction)
        return Answer(value, answer.status, answer.seconds, answer.version)

    def _agree(self, canary: Any, stable: Any) -> bool:
        return self._thresholds.agree(canary, stable) if self._regression else bool(canary == stable)

    def _count(self, record: TargetRecord, row: int, answer: Answer) -> None:
        """Count one routed request in its target's record (caller holds the lock)."""
        record.routed += 1
        if answer.ok:
            record.answered += 1
            if self._regression:
                record.squared_error += (answer.prediction - self._labels[row]) ** 2
            else:
                record.correct += answer.prediction == self._labels[row]
            record.latencies.append(answer.seconds)
        elif answer.status is None:
            record.transport_errors += 1
        else:
            record.http_errors += 1

    def _record_stable(self, row: int, answer: Answer) -> None:
        with self._lock:
            self._count(self._record.stable, row, answer)
            if answer.ok:
                assert answer.prediction is not None
                self._stable_answers[row] = answer.prediction
            else:
                self._record.unanswered += 1

    def _record_canary(self, row: int, answer: Answer, stable: Endpoint) -> None:
        if not answer.ok:
            retry = self._retry_on_stable(row, stable)
            with self._lock:
                self._count(self._record.canary, row, answer)
                self._settle(row, retry)
            return
        with self._lock:
            self._count(self._record.canary, row, answer)
            known = self._stable_answers.get(row)
        shadow = False
        if known is None:
            shadow = True
            reference = self._read(stable.predict(self._bodies[row]))
            known = reference.prediction
        with self._lock:
            if shadow:
                self._record.shadow_requests += 1
                if known is not None:
                    self._stable_answers[row] = known
            if known is not None:
                record = self._record
                record.compared += 1
                record.agreed += self._agree(answer.prediction, known)
                if self._regression:
                    label = self._labels[row]
                    record.paired_canary_squared_error += (answer.prediction - label) ** 2
                    record.paired_stable_squared_error += (known - label) ** 2

    def _record_unattributed(self, row: int, answer: Answer, stable: Endpoint) -> None:
        """An answer naming neither version; a failure is charged to the canary and answered by stable."""
        if answer.ok:
            with self._lock:
                self._record.unattributed += 1  # some other version answered (a pod left from before)
            return
        retry = self._retry_on_stable(row, stable)
        with self._lock:
            self._record.unattributed += 1
            self._record.canary.routed += 1
            self._record.canary.transport_errors += 1  # no server of either track counted it
            self._settle(row, retry)

    def _retry_on_stable(self, row: int, stable: Endpoint) -> Answer:
        """The canary failed this request: stable answers it, so the user still gets an answer. The failure is
        counted with its retry, under one lock, so a snapshot taken meanwhile (the early decision reads one while
        requests are in flight) never holds a canary failure without its retry."""
        return self._read(stable.predict(self._bodies[row]))

    def _settle(self, row: int, retry: Answer) -> None:
        """Count a canary failure's retry on stable (caller holds the lock)."""
        if retry.ok:
            assert retry.prediction is not None
            self._record.retried_on_stable += 1
            self._stable_answers[row] = retry.prediction
        else:
            self._record.unanswered += 1
