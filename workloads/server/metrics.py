"""Prometheus metrics for the server, written by hand in the text exposition format (version 0.0.4).

Why not prometheus_client's objects: each ``observe`` there takes a lock and walks the buckets in Python;
here the event loop is the only writer, so a histogram is a list and a ``bisect`` (about 0.3 us), which
matters at tens of thousands of requests a second. The output is checked against prometheus_client's parser
in the tests. Every series carries the ``model`` and ``version`` labels, so a canary analysis can compare
the stable and canary servers from one query.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence

PREFIX = "gpuflow_server"
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    return ",".join(f'{name}="{_escape(value)}"' for name, value in pairs)


def _number(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return repr(float(value)) if isinstance(value, float) else str(value)


class Histogram:
    """Bucket counts (not cumulative until rendered), sum and count."""

    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def lines(self, name: str, labels: str) -> list[str]:
        sep = "," if labels else ""
        out = []
        running = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append(f'{name}_bucket{{{labels}{sep}le="{_number(float(bound))}"}} {running}')
        out.append(f"{name}_sum{{{labels}}} {self.total!r}")
        out.append(f"{name}_count{{{labels}}} {self.count}")
        return out


class Metrics:
    """All series the server exports; ``render`` produces the ``/metrics`` body.

    - ``gpuflow_server_requests_total{model,version,route,code}``: counter of answered requests.
    - ``gpuflow_server_request_duration_seconds{model,version,route}``: histogram, from the complete request
      to its response handed to the socket (queueing, batching and inference included).
    - ``gpuflow_server_batch_size{model,version}``: histogram of rows per inference call.
    - ``gpuflow_server_inference_duration_seconds{model,version}``: histogram of seconds per inference call.
    - ``gpuflow_server_model_load_seconds`` / ``gpuflow_server_model_warmup_seconds``: gauges.
    - ``gpuflow_server_ready``: gauge, 1 once the model is loaded and warmed up, 0 before and while stopping.
    - ``gpuflow_server_open_connections``: gauge.
    - ``gpuflow_server_model_info{model,version,uri,backend}``: gauge, always 1.
    """

    def __init__(self, model: str, version: str) -> None:
        self.requests: dict[tuple[str, int], int] = {}
        self.durations: dict[str, Histogram] = {}
        self.batch_size = Histogram(BATCH_BUCKETS)
        self.inference = Histogram(LATENCY_BUCKETS)
        self.load_seconds = 0.0
        self.warmup_seconds = 0.0
        self.ready = 0
        self.open_connections = 0
        self.uri = ""
        self.backend = ""
        self.set_model(model, version)

    def set_model(self, model: str, version: str) -> None:
        """Name the model in every series (known only once the URI is resolved)."""
        self.model = model
        self.version = version
        self._base = _labels((("model", model), ("version", version)))

    def count(self, route: str, code: int, seconds: float | None) -> None:
        """One answered request; ``seconds`` is None when the request never completed (a parse error)."""
        key = (route, code)
        self.requests[key] = self.requests.get(key, 0) + 1
        if seconds is not None:
            histogram = self.durations.get(route)
            if histogram is None:
                histogram = self.durations[route] = Histogram(LATENCY_BUCKETS)
            histogram.observe(seconds)

    def render(self) -> bytes:
        base = self._base
        name = f"{PREFIX}_requests_total"
        lines = [f"# HELP {name} Requests answered, by route and HTTP status code.", f"# TYPE {name} counter"]
        for (route, code), value in sorted(self.requests.items()):
            lines.append(f'{name}{{{base},route="{_escape(route)}",code="{code}"}} {value}')
        name = f"{PREFIX}_request_duration_seconds"
        lines += [
            f"# HELP {name} Seconds from a complete request to its response written, by route.",
            f"# TYPE {name} histogram",
        ]
        for route, histogram in sorted(self.durations.items()):
            lines += histogram.lines(name, f'{base},route="{_escape(route)}"')
        name = f"{PREFIX}_batch_size"
        lines += [f"# HELP {name} Rows per inference call (dynamic batching).", f"# TYPE {name} histogram"]
        lines += self.batch_size.lines(name, base)
        name = f"{PREFIX}_inference_duration_seconds"
        lines += [f"# HELP {name} Seconds per inference call.", f"# TYPE {name} histogram"]
        lines += self.inference.lines(name, base)
        gauges: tuple[tuple[str, str, float], ...] = (
            ("model_load_seconds", "Seconds to resolve, download and load the model.", self.load_seconds),
            ("model_warmup_seconds", "Seconds of warm-up inference before ready.", self.warmup_seconds),
            ("ready", "1 when the model is loaded and warmed up and the server is not stopping.", self.ready),
            ("open_connections", "Open client connections.", self.open_connections),
        )
        for short, help_text, gauge in gauges:
            name = f"{PREFIX}_{short}"
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name}{{{base}}} {_number(gauge)}"]
        name = f"{PREFIX}_model_info"
        info = _labels((("uri", self.uri), ("backend", self.backend)))
        lines += [
            f"# HELP {name} The model served (always 1).",
            f"# TYPE {name} gauge",
            f"{name}{{{base},{info}}} 1",
        ]
        return ("\n".join(lines) + "\n").encode()
