"""The canary on a regression model, with real model servers over loopback HTTP (as tests/integration/
test_rollout_flow.py does for classifiers): the diabetes data prepared by its spec, a torch regressor trained on
its train split (tests/fixtures/task_models.py), and the test split replayed as labelled traffic.

An equal challenger (the same weights) agrees with stable on every row and is promoted; one trained for 5 steps
(near the mean) answers far worse than stable on the same rows and is rolled back at the first step; a policy
holding a classification threshold is refused before any server starts.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from blocks.canary_policy import CanaryPolicy
from flows.evaluate import evaluate
from flows.rollout import rollout
from tasks.core import settings
from tasks.core.errors import ConfigurationError
from tests.fixtures.model_server import assert_no_server_left, live_servers
from tests.fixtures.models import aliases, champion_and_challenger
from tests.fixtures.spec_data import diabetes_csv, diabetes_spec, publish_by_spec
from tests.fixtures.task_models import log_diabetes_regressor

pytestmark = pytest.mark.usefixtures("prefect_api")

WINDOW = 1.5
FAST = {  # no min_accuracy: that is a classification threshold
    "analysis_seconds": WINDOW,
    "check_interval_seconds": 0.25,
    "min_requests": 20,
    "local_requests_per_second": 300,
    "local_concurrency": 4,
    "min_agreement": 0.8,
    "max_error_rate": 0.05,
    "max_p95_latency_ratio": 3.0,
    "latency_tolerance_seconds": 0.005,
}


@dataclass(frozen=True)
class RegressionHome:
    dataset_uri: str
    good_run: str
    worse_run: str


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegressionHome]:
    """GPUFLOW_HOME with the diabetes data prepared by its spec and two logged regressors (good, 5 steps only)."""
    folder = tmp_path_factory.mktemp("regression-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GPUFLOW_HOME", str(folder))
        for var in ("MLFLOW_TRACKING_URI", "GPUFLOW_STORE_URI", "MLFLOW_RUN_ID"):
            patch.delenv(var, raising=False)
        store = folder / "store"  # the home's own store: settings.store_uri()
        dataset = publish_by_spec(store, diabetes_csv(folder), diabetes_spec(), "diabetes")
        uri = settings.tracking_uri()
        good = log_diabetes_regressor(uri, dataset)
        worse = log_diabetes_regressor(uri, dataset, steps=5)
        yield RegressionHome(dataset, good, worse)


@pytest.fixture(autouse=True)
def no_server_outlives_the_test() -> Iterator[None]:
    yield
    assert_no_server_left()


@pytest.fixture
def model_name() -> str:
    return f"diabetes-{uuid.uuid4().hex[:8]}"


def _policy(**fields: Any) -> str:
    name = f"regression-test-{uuid.uuid4().hex[:8]}"
    CanaryPolicy(**{**FAST, **fields}).save(name)
    return name


def test_an_equal_regressor_is_promoted_step_by_step(home: RegressionHome, model_name: str) -> None:
    champion_and_challenger(model_name, home.good_run, home.good_run)

    result = rollout(model_name=model_name, dataset_uri=home.dataset_uri, policy=_policy(step_weights=[25, 100]))

    assert (result.decision, result.failed_check) == ("promoted", None), result.reason
    assert aliases(model_name) == {"champion": "2", "challenger": "2"}
    for step in result.steps:
        assert step.task == "regression" and all(check.passed for check in step.checks)
        assert [c.name for c in step.checks][-2:] == ["rmse_ratio", "agreement"]
        assert step.agreement == 1.0 and step.rmse_ratio == pytest.approx(1.0)
        assert step.canary.accuracy is None and step.canary.rmse is not None and 30 < step.canary.rmse < 80


def test_a_clearly_worse_regressor_is_rolled_back_at_the_first_step(home: RegressionHome, model_name: str) -> None:
    champion, _ = champion_and_challenger(model_name, home.good_run, home.worse_run)

    result = rollout(model_name=model_name, dataset_uri=home.dataset_uri, policy=_policy(step_weights=[10, 50, 100]))

    assert (result.decision, result.failed_check) == ("rolled_back", "rmse_ratio"), result.reason
    assert len(result.steps) == 1
    step = result.steps[0]
    assert step.rmse_ratio is not None and step.rmse_ratio > 1.1
    assert step.canary.rmse is not None and step.stable.rmse is not None and step.canary.rmse > step.stable.rmse
    assert "canary RMSE" in result.reason and "is above the maximum 1.100" in result.reason
    assert aliases(model_name) == {"champion": champion}
    assert step.unanswered == 0 and step.stable.errors == 0


def test_a_classification_threshold_on_a_regression_model_is_refused_before_any_server(
    home: RegressionHome, model_name: str
) -> None:
    champion, _ = champion_and_challenger(model_name, home.good_run, home.worse_run)
    policy = _policy(min_accuracy=0.8)
    started = time.monotonic()

    with pytest.raises(ConfigurationError, match=r"sets min_accuracy=0\.8, which only applies to classification"):
        rollout(model_name=model_name, dataset_uri=home.dataset_uri, policy=policy)

    assert time.monotonic() - started < 30 and live_servers() == []
    assert aliases(model_name) == {"champion": champion, "challenger": "2"}


def test_without_dataset_uri_the_canary_replays_the_dataset_the_candidate_was_evaluated_on(
    home: RegressionHome, model_name: str
) -> None:
    """Not <store>/datasets/digits/<version>: the evaluate stage tags each version with the dataset it scored."""
    second = log_diabetes_regressor(settings.tracking_uri(), home.dataset_uri)
    first = evaluate(train_run_id=home.good_run, dataset_uri=home.dataset_uri, model_name=model_name)
    candidate = evaluate(
        train_run_id=second, dataset_uri=home.dataset_uri, model_name=model_name, promote_on_pass=False
    )
    assert first.promoted and candidate.gate.passed, candidate.gate

    result = rollout(model_name=model_name, policy=_policy(step_weights=[100]))

    assert (result.decision, result.failed_check) == ("promoted", None), result.reason
    assert result.steps[0].canary.rmse is not None and 30 < result.steps[0].canary.rmse < 80
