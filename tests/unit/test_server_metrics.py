"""The hand-written Prometheus exposition: parseable by prometheus_client, cumulative buckets, model labels."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from workloads.server.metrics import Metrics


def families(metrics: Metrics) -> dict:
    return {family.name: family for family in text_string_to_metric_families(metrics.render().decode())}


def value(found: dict, name: str, sample: str, **labels: str) -> float:
    return next(s.value for s in found[name].samples if s.name == sample and labels.items() <= s.labels.items())


def test_counters_histograms_and_gauges_parse_with_model_labels() -> None:
    metrics = Metrics("digits", "3")
    for seconds in (0.00005, 0.0003, 0.002):
        metrics.count("/v1/predict", 200, seconds)
    metrics.count("/v1/predict", 422, 0.0001)
    metrics.count("other", 400, None)
    for rows in (1, 3, 64):
        metrics.batch_size.observe(rows)
    metrics.load_seconds, metrics.warmup_seconds, metrics.ready = 1.5, 0.25, 1
    metrics.uri, metrics.backend = 'models:/digits@"champion"', "numpy"
    found = families(metrics)

    requests = found["gpuflow_server_requests"]
    assert requests.type == "counter"
    ok = value(found, "gpuflow_server_requests", "gpuflow_server_requests_total", route="/v1/predict", code="200")
    assert ok == 3
    assert value(found, "gpuflow_server_requests", "gpuflow_server_requests_total", code="400", route="other") == 1
    assert all(s.labels["model"] == "digits" and s.labels["version"] == "3" for s in requests.samples)

    name = "gpuflow_server_request_duration_seconds"
    assert found[name].type == "histogram"
    assert value(found, name, name + "_bucket", route="/v1/predict", le="0.0001") == 2  # 50 us and the 422's 100 us
    assert value(found, name, name + "_bucket", route="/v1/predict", le="0.0005") == 3
    assert value(found, name, name + "_bucket", route="/v1/predict", le="+Inf") == 4
    assert value(found, name, name + "_count", route="/v1/predict") == 4
    assert "other" not in {s.labels.get("route") for s in found[name].samples}, "parse errors have no duration"

    batch = "gpuflow_server_batch_size"
    assert value(found, batch, batch + "_bucket", le="1.0") == 1
    assert value(found, batch, batch + "_bucket", le="4.0") == 2
    assert value(found, batch, batch + "_sum") == 68
    assert value(found, "gpuflow_server_model_load_seconds", "gpuflow_server_model_load_seconds") == 1.5
    assert value(found, "gpuflow_server_model_warmup_seconds", "gpuflow_server_model_warmup_seconds") == 0.25
    assert value(found, "gpuflow_server_ready", "gpuflow_server_ready") == 1
    info = found["gpuflow_server_model_info"].samples[0]
    assert info.labels["uri"] == 'models:/digits@"champion"' and info.value == 1


def test_renaming_the_model_relabels_every_series() -> None:
    metrics = Metrics("models:/digits@champion", "")
    metrics.count("/healthz", 200, 0.001)
    metrics.set_model("digits", "7")
    found = families(metrics)
    assert {s.labels["version"] for f in found.values() for s in f.samples} == {"7"}
