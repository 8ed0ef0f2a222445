"""What a model server's ``/metrics`` says, read the way Prometheus would: request counters by status code, the
latency histogram (p95 by ``histogram_quantile``), the model's load and warm-up seconds.

:class:`ServerMetricNames` is the one place the server's metric names are spelled (docs/serving.md); the canary
analysis (canary.py), both serving backends and the cluster's per-pod sums (tasks/kube/cluster_metrics.py) read
through it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from tasks.rollout.traffic import PREDICT_PATH


@dataclass(frozen=True)
class ServerMetricNames:
    """The one place the server's metric names are spelled (docs/serving.md); a rename is a one-line change."""

    requests: str = "gpuflow_server_requests"  # counter, sample name <requests>_total{model,version,route,code}
    latency: str = "gpuflow_server_request_duration_seconds"  # histogram {model,version,route,le}
    route: str = PREDICT_PATH  # the route the traffic driver posts to
    load_seconds: str = "gpuflow_server_model_load_seconds"  # gauge {model,version}
    warmup_seconds: str = "gpuflow_server_model_warmup_seconds"  # gauge {model,version}


METRICS = ServerMetricNames()


@dataclass(frozen=True)
class ServerSample:
    """The prediction route's counters in one scrape (or the difference of two)."""

    requests: Mapping[str, float]  # by HTTP status code
    buckets: tuple[tuple[float, float], ...]  # (upper bound, cumulative count), ascending, +Inf last
    model: str | None = None
    version: str | None = None

    @property
    def total(self) -> float:
        return float(sum(self.requests.values()))

    @property
    def errors(self) -> float:
        return float(sum(count for code, count in self.requests.items() if not code.startswith("2")))

    def since(self, earlier: ServerSample) -> ServerSample:
        """What happened between ``earlier`` and this scrape; a counter that went down means a restart."""
        requests = {code: count - earlier.requests.get(code, 0.0) for code, count in self.requests.items()}
        before = dict(earlier.buckets)
        buckets = tuple((bound, count - before.get(bound, 0.0)) for bound, count in self.buckets)
        if any(v < 0 for v in requests.values()) or any(c < 0 for _, c in buckets):
            return self
        return ServerSample(requests, buckets, self.model, self.version)


EMPTY_SAMPLE = ServerSample(requests={}, buckets=())


def parse_server_metrics(text: str, names: ServerMetricNames = METRICS) -> ServerSample:
    """The prediction route's request counts by code and latency buckets from a /metrics body."""
    requests: dict[str, float] = {}
    buckets: dict[float, float] = {}
    model = version = None
    for family in text_string_to_metric_families(text):
        if family.name not in (names.requests, names.latency):
            continue
        for sample in family.samples:
            labels = sample.labels
            if labels.get("route") != names.route:
                continue
            model, version = labels.get("model", model), labels.get("version", version)
            if sample.name == f"{names.requests}_total":
                code = labels.get("code", "")
                requests[code] = requests.get(code, 0.0) + float(sample.value)
            elif sample.name == f"{names.latency}_bucket":
                bound = float(labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + float(sample.value)
    return ServerSample(requests, tuple(sorted(buckets.items())), model, version)


def startup_seconds(text: str, names: ServerMetricNames = METRICS) -> dict[str, float]:
    """Time to useful work of one server from its /metrics: model load and warm-up seconds."""
    wanted = {names.load_seconds: "model_load_seconds", names.warmup_seconds: "model_warmup_seconds"}
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in wanted:
                found[wanted[sample.name]] = float(sample.value)
    return found


def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """PromQL's estimate: linear interpolation inside the bucket holding the q-th observation.

    The first bucket's lower bound is 0; a quantile in the +Inf bucket is the highest finite bound. None when
    the histogram is empty.
    """
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return lower
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower
