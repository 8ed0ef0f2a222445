"""The canary policy's validation and the traffic driver's deterministic routing and row order."""

from __future__ import annotations

from itertools import pairwise

import pytest
from pydantic import ValidationError

from blocks.canary_policy import CanaryPolicy, resolve_policy, rollout_policy
from tasks.core.errors import ConfigurationError
from tasks.rollout.traffic import RowCycle, WeightedRouter


def test_default_policy_walks_10_25_50_100() -> None:
    policy = resolve_policy(None)
    assert policy.step_weights == [10, 25, 50, 100]
    assert policy.min_requests > 0 and 0 < policy.max_error_rate < 1


def test_a_window_too_short_for_min_requests_is_refused_with_the_arithmetic() -> None:
    with pytest.raises(ConfigurationError) as refused:
        rollout_policy(None, analysis_seconds=4)
    message = str(refused.value)
    assert "200 req/s x 4 s x 10 % = 80 canary requests, fewer than min_requests 100" in message
    assert "at least 5 s" in message
    assert rollout_policy(None, analysis_seconds=5).analysis_seconds == 5.0  # exactly enough
    assert rollout_policy(None).analysis_seconds == 60.0
    with pytest.raises(ConfigurationError, match="= 20 canary requests"):
        CanaryPolicy(step_weights=[50, 100], analysis_seconds=1, local_requests_per_second=40).check_reachable()
    with pytest.raises(ConfigurationError, match="above 0"):
        rollout_policy(None, analysis_seconds=0)


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ([], "at least one step"),
        ([10, 10, 50], "strictly increasing"),
        ([50, 25], "strictly increasing"),
        ([0, 50], "between 1 and 100"),
        ([10, 150], "between 1 and 100"),
    ],
)
def test_bad_step_weights_are_refused_with_the_reason(weights: list[int], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        CanaryPolicy(step_weights=weights)


def test_a_server_command_override_must_name_a_module_and_a_known_role() -> None:
    with pytest.raises(ValidationError, match="must start with a module"):
        CanaryPolicy(local_server_commands={"canary": []})
    with pytest.raises(ValidationError):
        CanaryPolicy(local_server_commands={"shadow": ["tests.fixtures.bad_servers"]})  # type: ignore[dict-item]


@pytest.mark.parametrize("weight", [1, 10, 25, 50, 99, 100])
def test_every_100_requests_hold_exactly_the_canary_weight(weight: int) -> None:
    router = WeightedRouter(weight)
    picks = [router.pick() for _ in range(1000)]
    for start in range(0, 1000, 100):
        assert picks[start : start + 100].count("canary") == weight


def test_canary_requests_are_spread_out_not_bunched() -> None:
    router = WeightedRouter(10)
    picks = [router.pick() for _ in range(200)]
    positions = [i for i, pick in enumerate(picks) if pick == "canary"]
    assert {b - a for a, b in pairwise(positions)} == {10}


def test_weight_zero_never_routes_to_the_canary() -> None:
    router = WeightedRouter(0)
    assert {router.pick() for _ in range(100)} == {"stable"}


def test_every_pass_over_the_rows_is_a_new_permutation() -> None:
    rows = RowCycle(50, seed=3)
    first = [rows.next() for _ in range(50)]
    second = [rows.next() for _ in range(50)]
    assert sorted(first) == sorted(second) == list(range(50))
    assert first != second
