"""The quality gate's rules, table-driven: which checks run, which fail, and what the reasons say."""

from __future__ import annotations

import math

import pytest

from blocks.quality_gate import QualityGate
from tasks.evaluation.gate import GateDecision, decide, outcome, render_markdown

DEFAULT = QualityGate(min_accuracy=0.9, max_regression=0.02, max_ece=None)
WITH_ECE = QualityGate(min_accuracy=0.9, max_regression=0.02, max_ece=0.05)

ACC, REG, ECE = "min_accuracy", "max_regression", "max_ece"
CASES = [
    # id, gate, accuracy, ece, champion accuracy, passed, failing checks, checks that ran
    ("first model above floor", DEFAULT, 0.95, 0.3, None, True, [], [ACC]),
    ("first model below floor", DEFAULT, 0.5, 0.0, None, False, [ACC], [ACC]),
    ("exactly at floor", DEFAULT, 0.9, 0.0, None, True, [], [ACC]),
    ("better than champion", DEFAULT, 0.97, 0.0, 0.95, True, [], [ACC, REG]),
    ("regression at the limit (float noise)", DEFAULT, 0.93, 0.0, 0.95, True, [], [ACC, REG]),
    ("regression beyond limit", DEFAULT, 0.92, 0.0, 0.95, False, [REG], [ACC, REG]),
    ("below floor and regressed", DEFAULT, 0.5, 0.0, 0.95, False, [ACC, REG], [ACC, REG]),
    ("ece within cap", WITH_ECE, 0.95, 0.04, None, True, [], [ACC, ECE]),
    ("ece above cap", WITH_ECE, 0.95, 0.08, None, False, [ECE], [ACC, ECE]),
    ("everything fails", WITH_ECE, 0.1, 0.6, 0.98, False, [ACC, REG, ECE], [ACC, REG, ECE]),
    ("nan accuracy never passes", DEFAULT, math.nan, 0.0, None, False, [ACC], [ACC]),
    ("nan ece never passes", WITH_ECE, 0.95, math.nan, None, False, [ECE], [ACC, ECE]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("gate", "accuracy", "ece", "champion", "passed", "failing", "ran"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_gate_decision_follows_the_thresholds(
    gate: QualityGate,
    accuracy: float,
    ece: float,
    champion: float | None,
    passed: bool,
    failing: list[str],
    ran: list[str],
) -> None:
    decision = decide(gate, accuracy=accuracy, ece=ece, champion_accuracy=champion)

    assert decision.passed is passed
    assert [c.name for c in decision.checks] == ran
    assert [c.name for c in decision.checks if not c.passed] == failing
    assert len(decision.reasons) == len(failing)


def test_reasons_name_the_figure_and_the_threshold() -> None:
    decision = decide(WITH_ECE, accuracy=0.112, ece=0.31, champion_accuracy=0.975, champion_version="4")

    assert decision.reasons == [
        "test accuracy 0.112 is below the minimum 0.900",
        "test accuracy 0.112 is 0.863 below the champion (version 4)'s 0.975; the largest regression allowed is 0.020",
        "expected calibration error 0.310 is above the maximum 0.050",
    ]


def test_checks_carry_value_and_threshold() -> None:
    decision = decide(DEFAULT, accuracy=0.91, ece=0.0, champion_accuracy=0.96)

    regression = next(c for c in decision.checks if c.name == "max_regression")
    assert regression.value == pytest.approx(0.05)
    assert regression.threshold == 0.02
    assert regression.passed is False


def test_decision_is_frozen() -> None:
    decision = decide(DEFAULT, accuracy=0.95, ece=0.0)

    with pytest.raises(ValueError, match="frozen"):
        decision.passed = False
    assert GateDecision.model_validate(decision.model_dump()) == decision


def test_markdown_report_shows_checks_and_both_models() -> None:
    decision = decide(DEFAULT, accuracy=0.5, ece=0.1, champion_accuracy=0.95, champion_version="1")
    text = render_markdown(
        decision,
        model_name="digits",
        model_version="2",
        metrics={"accuracy": 0.5, "ece": 0.1},
        champion_metrics={"accuracy": 0.95, "ece": 0.02},
        champion_version="1",
        outcome=outcome(decision, version="2", promote_on_pass=True, champion_version="1"),
    )

    assert "# Quality gate FAILED: `digits` version 2" in text
    assert "| min_accuracy | 0.5000 | 0.9000 | **fail** |" in text
    assert "| accuracy | 0.5000 | 0.9500 |" in text
    assert "| metric | challenger (v2) | champion (v1) |" in text
    assert "- test accuracy 0.500 is below the minimum 0.900" in text
    assert "stays `challenger` and `champion` stays version 1" in text


@pytest.mark.parametrize(
    ("accuracy", "promote", "champion", "expected"),
    [
        (0.95, True, None, "Version 3 passed and becomes `champion` (previous champion: none yet)."),
        (0.95, True, "2", "Version 3 passed and becomes `champion` (previous champion: version 2)."),
        (
            0.95,
            False,
            "2",
            "Version 3 passed; promotion is left to rollout, so it is `challenger` (champion: version 2).",
        ),
        (0.10, True, None, "Version 3 failed the gate: it stays `challenger` and no `champion` is set."),
    ],
)
def test_outcome_sentence(accuracy: float, promote: bool, champion: str | None, expected: str) -> None:
    decision = decide(DEFAULT, accuracy=accuracy, ece=0.0)

    assert outcome(decision, version="3", promote_on_pass=promote, champion_version=champion) == expected
