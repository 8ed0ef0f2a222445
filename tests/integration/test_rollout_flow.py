"""The rollout flow with real model servers (``python -m workloads.server``) over loopback HTTP.

MLflow is a SQLite store under one GPUFLOW_HOME for the module; every test registers its own model name, so
registry state is never shared. Prefect is the session's real test server (events, artifacts, concurrency
limits). Faulty canaries are real: a model trained on shuffled labels, and the real server with faults
injected in-process (tests/fixtures/bad_servers.py) through the documented seam
``CanaryPolicy.local_server_commands``. After every test, no server process may be left running.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from blocks.canary_policy import CanaryPolicy
from flows.evaluate import evaluate
from flows.rollout import RolloutLocked, RolloutResult, rollout, rollout_lock
from tasks.core import settings
from tasks.core.errors import GateFailed
from tasks.rollout.canary_report import artifact_key
from tasks.tracking.events import MODEL_PROMOTED, MODEL_ROLLED_BACK
from tests.fixtures.flow_env import mlflow_db_template  # noqa: F401
from tests.fixtures.model_server import assert_no_server_left, live_servers
from tests.fixtures.models import (
    RolloutHome,
    aliases,
    champion_and_challenger,
    log_training_run,
    register_version,
    registry_client,
    rollout_home,
    train_digits_model,
)
from tests.fixtures.prefect_events import wait_for_event

pytestmark = pytest.mark.usefixtures("prefect_api")

WINDOW = 1.5  # seconds per step: at 300 requests/s a 10% canary gets ~45 requests per window
FAST = {
    "analysis_seconds": WINDOW,
    "check_interval_seconds": 0.25,
    "min_requests": 20,
    "local_requests_per_second": 300,
    "local_concurrency": 4,
    "min_accuracy": 0.8,
    "min_agreement": 0.8,
    "max_error_rate": 0.05,
    "max_p95_latency_ratio": 3.0,
    "latency_tolerance_seconds": 0.005,  # two identical servers on 2 busy cores differ by a ms or two at p95
}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, mlflow_db_template: Path) -> Iterator[RolloutHome]:  # noqa: F811
    """One GPUFLOW_HOME for the module: the digits dataset and two logged models (good, shuffled labels)."""
    with rollout_home(tmp_path_factory.mktemp("rollout-home"), mlflow_db_template) as made:
        yield made


@pytest.fixture(autouse=True)
def no_server_outlives_the_test() -> Iterator[None]:
    yield
    assert_no_server_left()


@pytest.fixture
def model_name() -> str:
    return f"digits-{uuid.uuid4().hex[:8]}"


def _policy(**fields: Any) -> str:
    name = f"rollout-test-{uuid.uuid4().hex[:8]}"
    CanaryPolicy(**{**FAST, **fields}).save(name)
    return name


def _rollout(**kwargs: Any) -> tuple[RolloutResult, UUID]:
    state = rollout(**kwargs, return_state=True)
    flow_run_id = state.state_details.flow_run_id
    assert flow_run_id is not None
    return state.result(), flow_run_id


def _artifact(flow_run_id: UUID, key: str) -> str:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    by_key = {artifact.key: artifact for artifact in found}
    assert key in by_key, f"no artifact {key!r}; found {sorted(k for k in by_key if k)}"
    return str(by_key[key].data)


def test_a_good_challenger_from_evaluate_is_promoted_step_by_step(home: RolloutHome, model_name: str) -> None:
    second_good = log_training_run(settings.tracking_uri(), train_digits_model(home.dataset_uri, "good"))
    first = evaluate(train_run_id=home.good_run, dataset_uri=home.dataset_uri, model_name=model_name)
    second = evaluate(
        train_run_id=second_good, dataset_uri=home.dataset_uri, model_name=model_name, promote_on_pass=False
    )
    assert (first.champion_version, second.model_version) == ("1", "2")
    since = datetime.now(UTC)

    # No dataset_uri: the rollout replays the test split of the dataset the candidate was evaluated on.
    result, flow_run_id = _rollout(model_name=model_name, policy=_policy(step_weights=[10, 25, 50, 100]))

    assert (result.decision, result.failed_check) == ("promoted", None)
    assert (result.candidate_version, result.previous_champion_version, result.champion_version) == ("2", "1", "2")
    assert aliases(model_name) == {"champion": "2", "challenger": "2"}
    assert [(s.weight, s.decision) for s in result.steps] == [
        (10, "continue"),
        (25, "continue"),
        (50, "continue"),
        (100, "promote"),
    ]
    for step in result.steps:
        assert all(check.passed for check in step.checks)
        assert step.canary.requests >= 20 and step.canary.accuracy is not None and step.canary.accuracy > 0.9
        assert step.agreement == 1.0  # the same weights as the champion: it answers every row alike
        assert step.unanswered == 0 and step.stable.errors == 0
    assert result.steps[-1].stable_p95_scope == "rollout"  # stable gets no traffic at 100%
    assert set(result.server_startup) == {
        f"{role}_model_{what}_seconds" for role in ("stable", "canary") for what in ("load", "warmup")
    }
    assert all(seconds > 0 for seconds in result.server_startup.values())

    event = wait_for_event(MODEL_PROMOTED, resource_id=f"gpuflow.model.{model_name}", since=since)
    payload = event["payload"]
    assert (payload["version"], payload["previous_version"], payload["decision"]) == ("2", "1", "promoted")
    assert [s["weight"] for s in payload["steps"]] == [10, 25, 50, 100]

    markdown = _artifact(flow_run_id, artifact_key(model_name))
    assert "promoted" in markdown and markdown.count("## Step") == 4
    assert "| figure | stable v1 | canary v2 |" in markdown

    client = registry_client()
    run = client.get_run(result.rollout_run_id)
    assert run.data.tags["gpuflow.rollout.decision"] == "promoted"
    assert run.data.tags["gpuflow.stage"] == "rollout"
    history = client.get_metric_history(result.rollout_run_id, "canary_error_rate")
    assert sorted(m.step for m in history) == [1, 2, 3, 4]
    assert [
        m.value for m in sorted(client.get_metric_history(result.rollout_run_id, "weight"), key=lambda m: m.step)
    ] == [
        10,
        25,
        50,
        100,
    ]
    assert client.get_model_version(model_name, "2").tags["gpuflow.rollout.decision"] == "promoted"


BAD_CANARIES = {
    "fails half its requests": ("good", ["tests.fixtures.bad_servers", "--error-rate", "0.5"], "error_rate"),
    "answers over 5x slower": ("good", ["tests.fixtures.bad_servers", "--delay-ms", "20"], "p95_latency_ratio"),
    "lost its accuracy": ("shuffled", None, "accuracy"),
}


@pytest.mark.parametrize("case", list(BAD_CANARIES))
def test_a_bad_canary_is_rolled_back_at_the_first_step_and_stable_answers_everything(
    home: RolloutHome, model_name: str, case: str
) -> None:
    kind, command, failing = BAD_CANARIES[case]
    champion, challenger = champion_and_challenger(
        model_name, home.good_run, home.good_run if kind == "good" else home.shuffled_run
    )
    policy = _policy(step_weights=[10, 50, 100], local_server_commands={"canary": command} if command else {})
    since = datetime.now(UTC)

    result, flow_run_id = _rollout(model_name=model_name, dataset_uri=home.dataset_uri, policy=policy)

    assert (result.decision, result.failed_check) == ("rolled_back", failing), result.reason
    assert len(result.steps) == 1, "rolled back at the first step"
    step = result.steps[0]
    assert step.weight == 10 and step.decision == "roll_back"
    # Decided at the end of the first window: the scrape after it may be slow on a loaded machine, not a second window.
    assert result.time_to_decision_seconds is not None and result.time_to_decision_seconds < 2 * WINDOW
    assert aliases(model_name) == {"champion": champion}, "champion untouched, challenger removed"
    assert result.champion_version == champion
    # Every request routed to stable was answered, and canary failures were answered by stable.
    assert step.stable.routed > 0 and step.stable.answered == step.stable.routed
    assert step.stable.errors == 0 and step.unanswered == 0
    assert step.retried_on_stable == step.canary.routed - step.canary.answered
    assert step.canary.routed <= 0.1 * (step.canary.routed + step.stable.routed) + 1
    if failing == "error_rate":
        assert step.retried_on_stable > 0

    event = wait_for_event(MODEL_ROLLED_BACK, resource_id=f"gpuflow.model.{model_name}", since=since)
    payload = event["payload"]
    assert (payload["version"], payload["failed_check"], payload["champion_version"]) == (
        challenger,
        failing,
        champion,
    )
    assert payload["figures"]["step"] == 1 and payload["figures"]["value"] is not None
    markdown = _artifact(flow_run_id, artifact_key(model_name))
    assert "ROLLED BACK" in markdown and f"**{failing}**" in markdown


def test_a_canary_that_crashes_mid_step_is_a_failed_check_not_a_stuck_flow(home: RolloutHome, model_name: str) -> None:
    champion, _ = champion_and_challenger(model_name, home.good_run, home.good_run)
    # The canary SIGKILLs itself on its 10th inference call, before a check has enough requests to judge it.
    policy = _policy(
        step_weights=[10, 100],
        analysis_seconds=5.0,
        local_server_commands={"canary": ["tests.fixtures.bad_servers", "--crash-after", "10"]},
    )
    started = time.monotonic()

    result, _ = _rollout(model_name=model_name, dataset_uri=home.dataset_uri, policy=policy)

    assert (result.decision, result.failed_check) == ("rolled_back", "canary_up")
    assert "exited with code -9" in result.reason
    assert result.steps[0].seconds < 5.0, "the crash was judged at once, not at the window's end"
    assert time.monotonic() - started < 60
    step = result.steps[0]
    assert step.unanswered == 0 and step.stable.errors == 0
    assert step.retried_on_stable >= 1, "the request the canary died on was answered by stable"
    assert aliases(model_name) == {"champion": champion}


def test_the_first_model_is_promoted_without_a_canary(home: RolloutHome, model_name: str) -> None:
    version = register_version(model_name, home.good_run)
    registry_client().set_registered_model_alias(model_name, "challenger", version)
    since = datetime.now(UTC)

    result, _ = _rollout(model_name=model_name, dataset_uri=home.dataset_uri)

    assert result.decision == "promoted_without_canary"
    assert "without a canary" in result.reason
    assert (result.champion_version, result.previous_champion_version, result.steps) == (version, None, [])
    assert aliases(model_name)["champion"] == version
    event = wait_for_event(MODEL_PROMOTED, resource_id=f"gpuflow.model.{model_name}", since=since)
    assert event["payload"]["decision"] == "promoted_without_canary"


def test_a_version_that_failed_the_gate_is_refused_and_nothing_moves(home: RolloutHome, model_name: str) -> None:
    champion = register_version(model_name, home.good_run)
    registry_client().set_registered_model_alias(model_name, "champion", champion)
    rejected = register_version(model_name, home.shuffled_run, gate=False)

    with pytest.raises(GateFailed, match="below the minimum"):
        rollout(model_name=model_name, candidate_version=rejected, dataset_uri=home.dataset_uri)
    assert aliases(model_name) == {"champion": champion}


def test_a_rollout_waiting_longer_than_its_lock_timeout_fails_saying_why(home: RolloutHome, model_name: str) -> None:
    champion, _ = champion_and_challenger(model_name, home.good_run, home.good_run)
    with rollout_lock(model_name, timeout_seconds=10), pytest.raises(RolloutLocked, match="another rollout"):
        rollout(model_name=model_name, dataset_uri=home.dataset_uri, lock_timeout_seconds=1)
    assert aliases(model_name)["champion"] == champion


def test_two_rollouts_of_one_model_run_one_after_the_other(home: RolloutHome, model_name: str) -> None:
    champion = register_version(model_name, home.good_run)
    registry_client().set_registered_model_alias(model_name, "champion", champion)
    candidates = [register_version(model_name, home.good_run), register_version(model_name, home.good_run)]
    policy = _policy(step_weights=[50], analysis_seconds=1.0)
    results: list[RolloutResult] = []
    errors: list[BaseException] = []

    def run(version: str) -> None:
        try:
            results.append(
                rollout(model_name=model_name, candidate_version=version, dataset_uri=home.dataset_uri, policy=policy)
            )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(version,)) for version in candidates]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    assert errors == [] and len(results) == 2
    assert {r.decision for r in results} == {"promoted"}

    runs = [registry_client().get_run(r.rollout_run_id).info for r in results]
    (first, second) = sorted(runs, key=lambda info: info.start_time)
    assert first.end_time is not None and first.end_time <= second.start_time, "the two rollouts overlapped"
    later = next(r for r in results if r.rollout_run_id == second.run_id)
    earlier = next(r for r in results if r.rollout_run_id == first.run_id)
    assert later.previous_champion_version == earlier.candidate_version, "the second saw the first's promotion"


def test_a_rollout_that_times_out_leaves_no_server_running(home: RolloutHome, model_name: str) -> None:
    champion, _ = champion_and_challenger(model_name, home.good_run, home.good_run)
    policy = _policy(step_weights=[10, 100], analysis_seconds=120.0)  # far longer than the flow may run
    seen: list[int] = []  # how many servers ran at once, sampled while the flow ran
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.2):
            seen.append(len(live_servers()))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    started = time.monotonic()
    try:
        state = rollout.with_options(timeout_seconds=30)(
            model_name=model_name, dataset_uri=home.dataset_uri, policy=policy, return_state=True
        )
    finally:
        done.set()
        watcher.join()

    assert state.name == "TimedOut", state.message
    # The timeout must have struck while both servers ran, or there was nothing for it to clean up.
    assert max(seen, default=0) >= 2, f"the flow timed out before stable and canary both started: {seen}"
    assert time.monotonic() - started < 90
    assert aliases(model_name)["champion"] == champion
    # The autouse fixture then checks that neither server process is left.
