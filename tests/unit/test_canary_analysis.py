"""Canary analysis rules on figures built from the server's own /metrics exposition (no processes).

/metrics bodies are rendered by the server's ``Metrics`` class, so a renamed series breaks these tests
instead of silently reading zeros.
"""

from __future__ import annotations

import math

import pytest

from blocks.canary_policy import CanaryPolicy
from tasks.rollout.canary import RolloutResult, analyse_step
from tasks.rollout.canary_report import artifact_key, render_markdown
from tasks.rollout.server_metrics import EMPTY_SAMPLE, ServerSample, histogram_quantile, parse_server_metrics
from tasks.rollout.traffic import TargetRecord, TrafficRecord
from workloads.server.metrics import Metrics

POLICY = CanaryPolicy(
    min_requests=50,
    max_error_rate=0.05,
    max_p95_latency_ratio=2.0,
    latency_tolerance_seconds=0.001,
    min_accuracy=0.8,
    min_agreement=0.8,
)


def served(requests: dict[int, int], latency: float, version: str = "1", other_routes: bool = True) -> ServerSample:
    """A scrape of a server that answered ``requests`` (by status) on /v1/predict, each in ``latency`` s."""
    metrics = Metrics("digits", version)
    for code, count in requests.items():
        for _ in range(count):
            metrics.count("/v1/predict", code, latency)
    if other_routes:  # readiness probes and scrapes must not count as predictions
        for _ in range(7):
            metrics.count("/readyz", 503, 0.5)
            metrics.count("/metrics", 200, 0.5)
    return parse_server_metrics(metrics.render().decode())


def record(routed: int, correct: int, *, agreed: int | None = None, transport_errors: int = 0) -> TrafficRecord:
    answered = routed - transport_errors
    target = TargetRecord(
        routed=routed,
        transport_errors=transport_errors,
        answered=answered,
        correct=correct,
        latencies=[0.001] * answered,
    )
    return TrafficRecord(
        stable=TargetRecord(routed=900, answered=900, correct=870, latencies=[0.001] * 900),
        canary=target,
        compared=answered,
        agreed=answered if agreed is None else agreed,
        seconds=1.0,
    )


def judge(
    canary: ServerSample | None,
    traffic: TrafficRecord,
    *,
    stable: ServerSample | None = None,
    final: bool = True,
    last_step: bool = False,
    canary_down: str | None = None,
):
    stable = stable or served({200: 900}, 0.0002)
    return analyse_step(
        POLICY,
        step=1,
        weight=10,
        stable_version="1",
        canary_version="2",
        stable=stable,
        stable_so_far=stable,
        canary=canary,
        record=traffic,
        canary_down=canary_down,
        final=final,
        last_step=last_step,
    )


def test_parse_reads_only_prediction_requests_and_their_latency_buckets() -> None:
    sample = served({200: 90, 500: 10}, 0.0002, version="7")
    assert (sample.total, sample.errors) == (100, 10)
    assert (sample.model, sample.version) == ("digits", "7")
    assert sample.buckets[-1] == (math.inf, 100)


def test_a_delta_between_scrapes_counts_only_what_happened_in_between() -> None:
    before = served({200: 100}, 0.0002)
    after = served({200: 150, 500: 5}, 0.0002)
    delta = after.since(before)
    assert (delta.total, delta.errors) == (55, 5)
    assert delta.buckets[-1][1] == 55


def test_a_restarted_server_counters_are_read_from_zero() -> None:
    before = served({200: 1000}, 0.0002)
    restarted = served({200: 30}, 0.0002)
    assert restarted.since(before).total == 30


def test_histogram_quantile_interpolates_inside_the_bucket_like_promql() -> None:
    buckets = [(0.001, 50.0), (0.002, 90.0), (0.004, 100.0), (math.inf, 100.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.001)
    assert histogram_quantile(0.95, buckets) == pytest.approx(0.002 + 0.002 * 0.5)
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.0005)  # first bucket starts at 0


def test_histogram_quantile_in_the_inf_bucket_is_the_highest_finite_bound_and_empty_is_none() -> None:
    assert histogram_quantile(0.95, [(1.0, 10.0), (math.inf, 100.0)]) == 1.0
    assert histogram_quantile(0.95, [(1.0, 0.0), (math.inf, 0.0)]) is None
    assert histogram_quantile(0.95, []) is None


def test_a_healthy_canary_continues_and_is_promoted_after_the_last_step() -> None:
    canary = served({200: 100}, 0.0002, version="2")
    assert judge(canary, record(100, 95)).decision == "continue"
    promoted = judge(canary, record(100, 95), last_step=True)
    assert promoted.decision == "promote" and promoted.failed_check is None
    assert all(check.passed for check in promoted.checks)
    assert promoted.p95_ratio == pytest.approx(1.0)


def test_an_erroring_canary_fails_the_error_rate_check_with_its_figures() -> None:
    figures = judge(served({200: 90, 500: 10}, 0.0002, version="2"), record(100, 85))
    assert (figures.decision, figures.failed_check) == ("roll_back", "error_rate")
    check = figures.failure
    assert check is not None and check.value == pytest.approx(0.1) and check.threshold == 0.05
    assert "0.100 (10 of 100 requests)" in check.detail


def test_connection_errors_the_server_never_counted_are_canary_errors() -> None:
    figures = judge(served({200: 60}, 0.0002, version="2"), record(100, 57, transport_errors=40))
    assert figures.canary.requests == 100 and figures.canary.errors == 40
    assert figures.failed_check == "error_rate"


def test_a_slow_canary_fails_the_latency_ratio() -> None:
    figures = judge(served({200: 100}, 0.02, version="2"), record(100, 95))
    assert figures.failed_check == "p95_latency_ratio"
    assert figures.p95_ratio is not None and figures.p95_ratio > 5


def test_a_ratio_above_the_limit_within_the_absolute_tolerance_passes() -> None:
    # 0.2 ms vs 0.6 ms is a ratio of ~2.4 but 0.4 ms apart: bucket noise, not a slower model.
    figures = judge(served({200: 100}, 0.0006, version="2"), record(100, 95))
    check = next(c for c in figures.checks if c.name == "p95_latency_ratio")
    assert check.passed and check.value is not None and check.value > POLICY.max_p95_latency_ratio
    assert "tolerance" in check.detail


def test_low_accuracy_and_low_agreement_fail_in_that_order() -> None:
    figures = judge(served({200: 100}, 0.0002, version="2"), record(100, 10, agreed=12))
    failed = [c.name for c in figures.checks if not c.passed]
    assert failed == ["accuracy", "agreement"]
    assert figures.failed_check == "accuracy"


def test_disagreeing_with_stable_alone_rolls_back() -> None:
    figures = judge(served({200: 100}, 0.0002, version="2"), record(100, 90, agreed=50))
    assert figures.failed_check == "agreement" and figures.agreement == pytest.approx(0.5)


def test_too_few_requests_waits_mid_window_and_rolls_back_at_its_end() -> None:
    canary = served({500: 20}, 0.0002, version="2")  # all errors, but only 20 < 50 requests
    interim = judge(canary, record(20, 0), final=False)
    assert interim.decision == "continue"
    assert [c.name for c in interim.checks] == ["min_requests"]
    final = judge(canary, record(20, 0), final=True)
    assert (final.decision, final.failed_check) == ("roll_back", "min_requests")


def test_a_failing_check_mid_window_rolls_back_at_once() -> None:
    figures = judge(served({200: 50, 500: 50}, 0.0002, version="2"), record(100, 50), final=False)
    assert (figures.decision, figures.failed_check) == ("roll_back", "error_rate")


def test_a_canary_that_is_down_fails_canary_up_whatever_else() -> None:
    figures = judge(None, record(10, 10), canary_down="canary server exited with code -9", final=False)
    assert (figures.decision, figures.failed_check) == ("roll_back", "canary_up")
    assert "code -9" in figures.checks[0].detail


def test_at_full_weight_the_stable_p95_comes_from_the_whole_rollout() -> None:
    so_far = served({200: 500}, 0.0002)
    figures = analyse_step(
        POLICY,
        step=4,
        weight=100,
        stable_version="1",
        canary_version="2",
        stable=EMPTY_SAMPLE,
        stable_so_far=so_far,
        canary=served({200: 100}, 0.0002, version="2"),
        record=record(100, 95),
        final=True,
        last_step=True,
    )
    assert figures.stable_p95_scope == "rollout"
    assert figures.p95_ratio == pytest.approx(1.0)
    assert figures.decision == "promote"


def _result(decision: str, steps: list) -> RolloutResult:
    return RolloutResult(
        model_name="Digits Model",
        candidate_version="2",
        previous_champion_version="1",
        champion_version="1" if decision == "rolled_back" else "2",
        decision=decision,  # type: ignore[arg-type]
        failed_check=steps[-1].failed_check if steps else None,
        reason="because",
        steps=steps,
        seconds=3.0,
        time_to_decision_seconds=1.0,
        rollout_run_id="run",
    )


def test_the_rolled_back_event_names_the_failing_check_and_its_figures() -> None:
    step = judge(served({200: 90, 500: 10}, 0.0002, version="2"), record(100, 85))
    payload = _result("rolled_back", [step]).event_payload()
    assert payload["failed_check"] == "error_rate"
    assert payload["figures"] == {"value": pytest.approx(0.1), "threshold": 0.05, "step": 1, "weight": 10}
    assert payload["steps"][0]["error_rate"]["canary"] == pytest.approx(0.1)
    assert (payload["version"], payload["previous_version"]) == ("2", "1")


def test_the_report_shows_both_versions_per_step_and_marks_the_failure() -> None:
    ok = judge(served({200: 100}, 0.0002, version="2"), record(100, 95))
    bad = judge(served({200: 90, 500: 10}, 0.0002, version="2"), record(100, 85))
    markdown = render_markdown(_result("rolled_back", [ok, bad]), POLICY)
    assert "| figure | stable v1 | canary v2 |" in markdown
    assert markdown.count("## Step") == 2
    assert "**FAIL**" in markdown and "**error_rate**" in markdown
    assert "ROLLED BACK" in markdown


def test_artifact_keys_are_slugs() -> None:
    assert artifact_key("Digits Model_v2") == "canary-digits-model-v2"


def test_server_startup_seconds_are_read_from_its_metrics() -> None:
    from tasks.rollout.server_metrics import startup_seconds

    text = (
        "# TYPE gpuflow_server_model_load_seconds gauge\n"
        'gpuflow_server_model_load_seconds{model="m",version="2"} 1.25\n'
        "# TYPE gpuflow_server_model_warmup_seconds gauge\n"
        'gpuflow_server_model_warmup_seconds{model="m",version="2"} 0.5\n'
    )
    assert startup_seconds(text) == {"model_load_seconds": 1.25, "model_warmup_seconds": 0.5}
