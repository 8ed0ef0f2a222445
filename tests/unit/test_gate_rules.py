"""The gate as rules: defaults per task, bounds and regressions in both directions, relative regressions, custom
metrics, and the configuration errors a gate raises before any training (tests/unit/test_gate.py keeps the
classification defaults' original table)."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from blocks.quality_gate import CustomMetric, GateRule, QualityGate
from tasks.core.errors import ConfigurationError
from tasks.evaluation.gate import apply_gate, check_gate_for_task, primary_regression, render_markdown, rules_for

FIXTURES = "tests.fixtures.task_models"
RECALL = CustomMetric(name="malignant_recall", function=f"{FIXTURES}:malignant_recall", higher_is_better=True)


def names(decision: object) -> list[str]:
    return [c.name for c in decision.checks]  # type: ignore[attr-defined]


def test_the_regression_default_is_rmse_within_five_percent_of_the_champion_and_r2_at_least_zero() -> None:
    gate = QualityGate()
    first = apply_gate(gate, "regression", metrics={"rmse": 50.0, "mae": 40.0, "r2": 0.4})
    near = apply_gate(
        gate, "regression", metrics={"rmse": 52.0, "r2": 0.38}, champion_metrics={"rmse": 50.0}, champion_version="3"
    )
    far = apply_gate(
        gate, "regression", metrics={"rmse": 53.0, "r2": -0.1}, champion_metrics={"rmse": 50.0}, champion_version="3"
    )

    assert first.passed and names(first) == ["min_r2"]
    assert near.passed and names(near) == ["max_regression", "min_r2"]
    assert near.checks[0].value == pytest.approx(0.04) and near.checks[0].relative
    assert not far.passed
    assert far.reasons == [
        "test RMSE 53.000 is 6.0 % worse than the champion (version 3)'s 50.000; "
        "the largest regression allowed is 5.0 %",
        "test R² -0.100 is below the minimum 0.000",
    ]


def test_a_better_regressor_has_a_negative_regression_and_passes() -> None:
    decision = apply_gate(
        QualityGate(), "regression", metrics={"rmse": 40.0, "r2": 0.5}, champion_metrics={"rmse": 50.0}
    )

    assert decision.passed and decision.checks[0].value == pytest.approx(-0.2)
    assert primary_regression("regression", {"rmse": 40.0}, {"rmse": 50.0}) == pytest.approx(-10.0)
    assert primary_regression("classification", {"accuracy": 0.9}, {"accuracy": 0.95}) == pytest.approx(0.05)
    assert primary_regression("regression", {"rmse": 40.0}, None) is None


def test_rules_replace_the_default_set_and_name_their_checks_by_metric() -> None:
    gate = QualityGate(
        min_accuracy=0.99,  # unused: the rules are the whole gate
        rules=[
            GateRule(metric="roc_auc", at_least=0.95, max_regression=0.01),
            GateRule(metric="log_loss", at_most=0.3, max_regression=0.05),
            GateRule(metric="accuracy", max_regression=0.02),
        ],
    )
    metrics = {"accuracy": 0.9, "roc_auc": 0.96, "log_loss": 0.4}
    champion = {"accuracy": 0.95, "roc_auc": 0.98, "log_loss": 0.3}

    decision = apply_gate(gate, "classification", metrics=metrics, champion_metrics=champion, champion_version="2")

    assert names(decision) == [
        "min_roc_auc",
        "max_roc_auc_regression",
        "max_log_loss",
        "max_log_loss_regression",
        "max_regression",
    ]
    assert [c.passed for c in decision.checks] == [True, False, False, False, False]
    assert decision.reasons == [
        "test ROC-AUC 0.960 is 0.020 below the champion (version 2)'s 0.980; the largest regression allowed is 0.010",
        "test log loss 0.400 is above the maximum 0.300",
        "test log loss 0.400 is 0.100 above the champion (version 2)'s 0.300; the largest regression allowed is 0.050",
        "test accuracy 0.900 is 0.050 below the champion (version 2)'s 0.950; the largest regression allowed is 0.020",
    ]


def test_a_custom_metric_takes_the_direction_it_declares() -> None:
    lower = CustomMetric(name="cost", function=f"{FIXTURES}:overestimate_share", higher_is_better=False)
    gate = QualityGate(custom_metrics=[lower], rules=[GateRule(metric="cost", at_most=100.0, max_regression=5.0)])

    worse = apply_gate(gate, "regression", metrics={"cost": 90.0}, champion_metrics={"cost": 80.0})
    better = apply_gate(gate, "regression", metrics={"cost": 70.0}, champion_metrics={"cost": 80.0})

    assert names(worse) == ["max_cost", "max_cost_regression"] and not worse.passed
    assert worse.reasons == [
        "test cost 90.000 is 10.000 above the champion's 80.000; the largest regression allowed is 5.000"
    ]
    assert better.passed and better.checks[1].value == pytest.approx(-10.0)


def test_tiny_figures_keep_their_digits_in_the_reasons() -> None:
    gate = QualityGate(rules=[GateRule(metric="mae", at_most=0.0002)])

    decision = apply_gate(gate, "regression", metrics={"mae": 0.00035})

    assert decision.reasons == ["test MAE 3.500e-04 is above the maximum 2.000e-04"]


def test_nan_figures_and_a_zero_champion_never_pass_by_accident() -> None:
    gate = QualityGate(rules=[GateRule(metric="rmse", max_regression=0.1, relative=True)])

    nan = apply_gate(gate, "regression", metrics={"rmse": math.nan}, champion_metrics={"rmse": 1.0})
    from_zero = apply_gate(gate, "regression", metrics={"rmse": 0.5}, champion_metrics={"rmse": 0.0})
    equal_zero = apply_gate(gate, "regression", metrics={"rmse": 0.0}, champion_metrics={"rmse": 0.0})

    assert not nan.passed and not from_zero.passed and equal_zero.passed
    assert math.isinf(from_zero.checks[0].value)


def test_the_report_names_the_task_and_shows_relative_checks_in_percent() -> None:
    decision = apply_gate(
        QualityGate(), "regression", metrics={"rmse": 53.0, "r2": 0.3}, champion_metrics={"rmse": 50.0}
    )
    text = render_markdown(
        decision,
        model_name="diabetes",
        model_version="2",
        metrics={"rmse": 53.0, "r2": 0.3},
        champion_metrics={"rmse": 50.0, "r2": 0.35},
        champion_version="1",
        outcome="Version 2 failed the gate.",
        task="regression",
    )

    assert "Task: regression (primary metric `rmse`, lower is better)." in text
    assert "| max_regression | 6.0 % | 5.0 % | **fail** |" in text
    assert "| min_r2 | 0.3000 | 0.0000 | pass |" in text
    assert "| rmse | 53.0000 | 50.0000 |" in text


# --------------------------------------------------------------------------- checked before any training


def test_a_rule_on_a_metric_the_task_does_not_produce_names_it_and_what_is_produced() -> None:
    gate = QualityGate(rules=[GateRule(metric="accuracy", at_least=0.9)])

    with pytest.raises(
        ConfigurationError,
        match=r"rule on 'accuracy': the evaluation of a regression model does not produce it; it produces rmse, mae, "
        r"r2, inference_ms_per_sample, latency_p50_ms \(custom metrics declared on the gate: none\)",
    ):
        check_gate_for_task(gate, "regression")
    check_gate_for_task(gate, "classification")
    with pytest.raises(ConfigurationError, match=r"rule on 'recal': .* \(custom metrics declared on the gate: "):
        check_gate_for_task(
            QualityGate(custom_metrics=[RECALL], rules=[GateRule(metric="recal", at_least=1)]), "regression"
        )


def test_roc_auc_is_for_two_classes() -> None:
    gate = QualityGate(rules=[GateRule(metric="roc_auc", at_least=0.9)])

    check_gate_for_task(gate, "classification")  # class count not known yet
    check_gate_for_task(gate, "classification", n_classes=2)
    with pytest.raises(ConfigurationError, match=r"'roc_auc': it is computed for a binary classification only, and "
                       r"this dataset has 10 classes"):  # fmt: skip
        check_gate_for_task(gate, "classification", n_classes=10)


def test_the_default_gate_fits_both_tasks() -> None:
    check_gate_for_task(QualityGate(), "classification", n_classes=10)
    check_gate_for_task(QualityGate(max_ece=0.05), "regression")
    assert [r.metric for r in rules_for(QualityGate(max_ece=0.05), "classification")] == ["accuracy", "ece"]
    with pytest.raises(ConfigurationError, match=r"has task 'ranking'; gpuflow evaluates classification or regression"):
        check_gate_for_task(QualityGate(), "ranking")


def test_custom_metric_references_are_imported_when_the_gate_is_checked() -> None:
    def gate(function: str, name: str = "recall") -> QualityGate:
        return QualityGate(custom_metrics=[CustomMetric(name=name, function=function, higher_is_better=True)])

    check_gate_for_task(gate(f"{FIXTURES}:malignant_recall"), "classification")
    with pytest.raises(ConfigurationError, match=r"custom metric 'recall': cannot import module 'no_such_package.m' "
                       r"of 'no_such_package.m:f': ModuleNotFoundError"):  # fmt: skip
        check_gate_for_task(gate("no_such_package.m:f"), "classification")
    with pytest.raises(ConfigurationError, match=rf"module '{FIXTURES}' has no 'nope' \({FIXTURES}:nope\)"):
        check_gate_for_task(gate(f"{FIXTURES}:nope"), "classification")
    with pytest.raises(ConfigurationError, match=rf"{FIXTURES}:NOT_A_FUNCTION is a str, not a function"):
        check_gate_for_task(gate(f"{FIXTURES}:NOT_A_FUNCTION"), "classification")
    with pytest.raises(ConfigurationError, match=r"custom metric 'rmse' has the name of a built-in metric"):
        check_gate_for_task(gate(f"{FIXTURES}:malignant_recall", name="rmse"), "regression")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"metric": "rmse"}, "sets none of at_least, at_most and max_regression"),
        ({"metric": "rmse", "at_most": 3.0, "relative": True}, "relative needs max_regression"),
        ({"metric": "r2", "at_least": 0.5, "at_most": 0.2}, "at_least 0.5 is above at_most 0.2"),
        ({"metric": "rmse", "max_regression": -0.1}, "greater than or equal to 0"),
        ({"metric": "Bad Name", "at_least": 0}, "should match pattern"),
    ],
)
def test_a_malformed_rule_is_refused_where_it_is_written(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        GateRule(**fields)  # type: ignore[arg-type]


def test_custom_metric_declarations_are_checked_on_the_block() -> None:
    with pytest.raises(ValidationError, match="should match pattern"):
        CustomMetric(name="recall", function="tests.fixtures.task_models.malignant_recall", higher_is_better=True)
    with pytest.raises(ValidationError, match=r"custom metric name\(s\) declared twice: \['malignant_recall'\]"):
        QualityGate(custom_metrics=[RECALL, RECALL])
    with pytest.raises(ValidationError, match="higher_is_better"):
        CustomMetric(name="recall", function=f"{FIXTURES}:malignant_recall")  # type: ignore[call-arg]
