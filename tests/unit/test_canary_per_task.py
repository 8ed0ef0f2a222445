"""The canary per task: a regressor's agreement within a tolerance and its RMSE against stable's on the same rows,
the traffic driver's record of both, and a policy threshold meant for the other task refused.

The driver runs its real threads against in-process endpoints (the ``Routes`` seam the cluster backend uses
too), each answering like a server would, so the test controls what every version answers for every row.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from blocks.canary_policy import CanaryPolicy
from tasks.core.errors import ConfigurationError
from tasks.rollout.canary import RolloutResult, analyse_step
from tasks.rollout.canary_report import render_markdown
from tasks.rollout.server_metrics import ServerSample, parse_server_metrics
from tasks.rollout.traffic import Answer, Routes, TargetRecord, TrafficDriver, TrafficRecord
from workloads.server.metrics import Metrics

TARGETS = np.linspace(50.0, 300.0, 40)  # the labels: each row's true value
ROWS = np.arange(40, dtype=np.float32)[:, None]  # row i is [i]


class Model:
    """An endpoint answering ``TARGETS[i] * scale + shift`` for row i, as JSON, like the server."""

    def __init__(self, scale: float = 1.0, shift: float = 0.0, noise: float = 0.0) -> None:
        self.scale, self.shift, self.noise = scale, shift, noise

    def predict(self, body: bytes) -> Answer:
        row = int(json.loads(body)["rows"][0][0])
        wobble = self.noise * (1 if row % 2 else -1)
        value = TARGETS[row] * self.scale + self.shift + wobble
        return Answer(value, 200, 0.001, None)

    def close(self) -> None:
        pass


def drive(stable: Model, canary: Model, policy: CanaryPolicy, weight: int = 50) -> TrafficRecord:
    driver = TrafficDriver(
        Routes(stable=lambda: stable, canary=lambda: canary),
        ROWS,
        TARGETS.tolist(),
        requests_per_second=2000,
        concurrency=2,
        timeout_seconds=1.0,
        thresholds=policy.for_task("regression"),
    )
    driver.start(weight)
    deadline = time.monotonic() + 5
    while driver.snapshot().canary.answered < 200 and time.monotonic() < deadline:
        time.sleep(0.01)
    return driver.stop()


def served(count: int) -> ServerSample:
    metrics = Metrics("diabetes", "1")
    for _ in range(count):
        metrics.count("/v1/predict", 200, 0.0002)
    return parse_server_metrics(metrics.render().decode())


def judge(record: TrafficRecord, policy: CanaryPolicy):
    sample = served(record.canary.routed)
    return analyse_step(
        policy,
        step=1,
        weight=50,
        stable_version="1",
        canary_version="2",
        stable=sample,
        stable_so_far=sample,
        canary=sample,
        record=record,
        final=True,
        last_step=True,
        task="regression",
    )


POLICY = CanaryPolicy(min_requests=50, min_agreement=0.9)


def test_an_equal_regressor_agrees_on_every_row_and_is_promoted() -> None:
    record = drive(Model(), Model(), POLICY)
    assert record.compared >= 100 and record.agreed == record.compared
    assert record.rmse_ratio == 1.0  # both exact: no error on either side
    figures = judge(record, POLICY)
    assert figures.decision == "promote" and figures.failed_check is None
    assert [c.name for c in figures.checks] == [
        "min_requests",
        "error_rate",
        "p95_latency_ratio",
        "rmse_ratio",
        "agreement",
    ]
    assert figures.canary.accuracy is None and figures.canary.rmse == 0.0


def test_answers_within_the_tolerance_agree_and_the_rmse_ratio_compares_the_same_rows() -> None:
    stable, canary = Model(noise=2.0), Model(scale=1.05, noise=2.0)  # canary 5 % off: inside rtol 0.1
    record = drive(stable, canary, POLICY)
    assert record.agreed == record.compared
    figures = judge(record, POLICY)
    # canary error 5 % of the target (12.5 on average) +-2 vs stable's 2: far worse, though it agrees
    assert figures.failed_check == "rmse_ratio" and figures.rmse_ratio is not None and figures.rmse_ratio > 3
    failed = figures.failure
    assert failed is not None and "canary RMSE" in failed.detail and "stable RMSE 2.000" in failed.detail
    assert "is above the maximum 1.100" in failed.detail
    loose = CanaryPolicy(min_requests=50, min_agreement=0.9, max_rmse_ratio=10.0)
    assert judge(record, loose).decision == "promote"


def test_a_canary_outside_the_tolerance_disagrees() -> None:
    policy = CanaryPolicy(min_requests=50, min_agreement=0.9, max_rmse_ratio=100.0, agreement_rtol=0.01)
    record = drive(Model(noise=2.0), Model(shift=5.0, noise=2.0), policy)  # 5 units off; 1 % of 50..300 is 0.5..3
    assert record.compared > 0 and record.agreed == 0
    figures = judge(record, policy)
    assert figures.failed_check == "agreement" and figures.agreement == 0.0
    assert "within 1e-06 + 0.01 x |stable|" in figures.checks[-1].detail
    absolute = CanaryPolicy(min_requests=50, max_rmse_ratio=100.0, agreement_atol=5.0, agreement_rtol=0.0)
    assert judge(drive(Model(), Model(shift=5.0), absolute), absolute).agreement == 1.0
    perfect_stable = judge(drive(Model(), Model(shift=5.0), absolute), absolute)
    assert perfect_stable.failed_check == "rmse_ratio" and perfect_stable.rmse_ratio is not None
    assert 1e100 < perfect_stable.rmse_ratio < float("inf")  # stable is exact: any canary error fails, finitely


def test_the_report_shows_the_regression_figures() -> None:
    figures = judge(drive(Model(), Model(scale=1.05), POLICY), POLICY)
    result = RolloutResult(
        model_name="diabetes",
        candidate_version="2",
        previous_champion_version="1",
        champion_version="1",
        decision="rolled_back",
        failed_check=figures.failed_check,
        reason="rolled back",
        steps=[figures],
        seconds=1.0,
        time_to_decision_seconds=0.5,
        rollout_run_id="run",
    )
    markdown = render_markdown(result, POLICY)
    assert "| RMSE ratio on the same rows |" in markdown and "≤ 1.100 | **FAIL** |" in markdown
    assert "accuracy" not in markdown
    assert figures.summary()["rmse_ratio"] == figures.rmse_ratio


@pytest.mark.parametrize(
    ("fields", "task", "named"),
    [
        ({"min_accuracy": 0.9}, "regression", "min_accuracy=0.9"),
        ({"max_rmse_ratio": 1.2}, "classification", "max_rmse_ratio=1.2"),
        ({"agreement_rtol": 0.2, "agreement_atol": 1.0}, "classification", "agreement_atol=1.0, agreement_rtol=0.2"),
    ],
)
def test_a_threshold_of_the_other_task_is_a_configuration_error(fields: dict, task: str, named: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        CanaryPolicy(**fields).for_task(task)
    message = str(refused.value)
    assert named in message and f"this model is a {task} model" in message and "leave it empty" in message


def test_empty_thresholds_take_each_task_default() -> None:
    policy = CanaryPolicy()
    assert policy.for_task("classification").min_accuracy == 0.9
    regression = policy.for_task("regression")
    assert (regression.max_rmse_ratio, regression.agreement_atol, regression.agreement_rtol) == (1.1, 1e-6, 0.1)
    assert regression.agree(110.0, 100.0) and not regression.agree(111.0, 100.0)
    with pytest.raises(ConfigurationError, match="unknown model task 'ranking'"):
        policy.for_task("ranking")


def test_a_regression_answer_that_is_not_a_number_counts_as_an_error() -> None:
    class Broken(Model):
        def predict(self, body: bytes) -> Answer:
            return Answer("seven", 200, 0.001, None)

    record = drive(Model(), Broken(), CanaryPolicy(min_requests=1))
    assert record.canary.answered == 0 and record.canary.http_errors == record.canary.routed > 0
    assert record.retried_on_stable == record.canary.routed  # the user still got stable's answer
    assert isinstance(record.canary, TargetRecord)
