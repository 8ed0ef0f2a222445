"""A track's /metrics on a cluster: every pod's counters summed the way Prometheus's ``increase()`` would.

A track (stable or canary) is several pods; pods come and go while the rollout scales them, and a container
that restarts starts its counters again from zero. :class:`TrackCounters` keeps each pod's last sample, so a
pod that is gone still counts what it served, and adds a restarted pod's earlier figures to its new ones, so
the track's total never goes down and a step's delta is what the track really served in the step.

Samples come from each pod's ``/metrics`` through the API server's pod proxy, or from a Prometheus server's
HTTP API (:func:`prometheus_samples`), whose series carry ``namespace`` and ``pod`` labels as the usual
Kubernetes scrape configurations and the Prometheus Operator's PodMonitors give them.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from tasks.core.errors import ServiceUnavailable
from tasks.rollout.server_metrics import EMPTY_SAMPLE, METRICS, ServerMetricNames, ServerSample

PROMETHEUS_TIMEOUT_SECONDS = 10.0


def plus(a: ServerSample, b: ServerSample) -> ServerSample:
    """Two samples added code by code and bucket by bucket."""
    requests = dict(a.requests)
    for code, count in b.requests.items():
        requests[code] = requests.get(code, 0.0) + count
    buckets = dict(a.buckets)
    for bound, count in b.buckets:
        buckets[bound] = buckets.get(bound, 0.0) + count
    return ServerSample(requests, tuple(sorted(buckets.items())), a.model or b.model, a.version or b.version)


def went_down(new: ServerSample, old: ServerSample) -> bool:
    """A counter below its last value: the pod's container restarted and counts from zero again."""
    buckets = dict(new.buckets)
    return any(new.requests.get(code, 0.0) < count for code, count in old.requests.items()) or any(
        buckets.get(bound, 0.0) < count for bound, count in old.buckets
    )


@dataclass
class TrackCounters:
    """One track's counters, summed over every pod seen since the rollout began."""

    last: dict[str, ServerSample] = field(default_factory=dict)
    carried: dict[str, ServerSample] = field(default_factory=dict)

    def update(self, pod: str, sample: ServerSample) -> None:
        previous = self.last.get(pod)
        if previous is not None and went_down(sample, previous):
            self.carried[pod] = plus(self.carried.get(pod, EMPTY_SAMPLE), previous)
        self.last[pod] = sample

    def total(self) -> ServerSample:
        result = EMPTY_SAMPLE
        for pod in sorted(set(self.last) | set(self.carried)):
            result = plus(result, plus(self.carried.get(pod, EMPTY_SAMPLE), self.last.get(pod, EMPTY_SAMPLE)))
        return result


def _query(base_url: str, promql: str) -> list[dict[str, object]]:
    """An instant query; the vector's samples, or :class:`ServiceUnavailable` naming the server and the query."""
    url = base_url.rstrip("/") + "/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(url, timeout=PROMETHEUS_TIMEOUT_SECONDS) as response:
            body = json.loads(response.read())
    except (OSError, ValueError) as exc:
        raise ServiceUnavailable(f"Prometheus at {base_url} did not answer the query {promql!r}: {exc}") from exc
    if body.get("status") != "success" or body.get("data", {}).get("resultType") != "vector":
        raise ServiceUnavailable(f"Prometheus at {base_url} refused the query {promql!r}: {body.get('error', body)}")
    return list(body["data"]["result"])


def _selector(namespace: str, pods: Iterable[str], names: Iterable[str], route: str | None) -> str:
    """``{__name__=~"a|b", namespace="ns", pod=~"p1|p2"[, route="/v1/predict"]}`` (pod names need no escaping)."""
    parts = [f'__name__=~"{"|".join(names)}"', f'namespace="{namespace}"', f'pod=~"{"|".join(pods)}"']
    if route is not None:
        parts.append(f'route="{route}"')
    return "{" + ", ".join(parts) + "}"


def prometheus_samples(
    base_url: str, namespace: str, pods: Iterable[str], names: ServerMetricNames = METRICS
) -> dict[str, ServerSample]:
    """Each pod's prediction counters as Prometheus last scraped them (pods it has no series for are left out)."""
    pods = sorted(pods)
    if not pods:
        return {}
    requests_name, bucket_name = f"{names.requests}_total", f"{names.latency}_bucket"
    found = _query(base_url, _selector(namespace, pods, (requests_name, bucket_name), names.route))
    requests: dict[str, dict[str, float]] = {}
    buckets: dict[str, dict[float, float]] = {}
    versions: dict[str, tuple[str | None, str | None]] = {}
    for series in found:
        labels: Mapping[str, str] = series["metric"]  # type: ignore[assignment]
        value = float(series["value"][1])  # type: ignore[index]
        pod = labels.get("pod", "")
        versions[pod] = (labels.get("model"), labels.get("version"))
        if labels.get("__name__") == requests_name:
            by_code = requests.setdefault(pod, {})
            by_code[labels.get("code", "")] = by_code.get(labels.get("code", ""), 0.0) + value
        elif labels.get("__name__") == bucket_name:
            by_bound = buckets.setdefault(pod, {})
            bound = float(labels["le"])
            by_bound[bound] = by_bound.get(bound, 0.0) + value
    return {
        pod: ServerSample(
            requests.get(pod, {}), tuple(sorted(buckets.get(pod, {}).items())), versions[pod][0], versions[pod][1]
        )
        for pod in versions
    }


def prometheus_startup(
    base_url: str, namespace: str, pods: Iterable[str], names: ServerMetricNames = METRICS
) -> dict[str, float]:
    """The slowest pod's model load and warm-up seconds, as Prometheus last scraped them."""
    pods = sorted(pods)
    if not pods:
        return {}
    wanted = {names.load_seconds: "model_load_seconds", names.warmup_seconds: "model_warmup_seconds"}
    found: dict[str, float] = {}
    for series in _query(base_url, _selector(namespace, pods, wanted, None)):
        labels: Mapping[str, str] = series["metric"]  # type: ignore[assignment]
        key = wanted.get(labels.get("__name__", ""))
        if key is not None:
            found[key] = max(found.get(key, 0.0), float(series["value"][1]))  # type: ignore[index]
    return found
