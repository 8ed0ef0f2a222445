"""Test-split metrics against figures worked out by hand on small hand-made arrays."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tasks.core.errors import ConfigurationError, DataValidationError
from tasks.evaluation.scoring import (
    classification_metrics,
    confusion_rows,
    expected_calibration_error,
    label_indices,
    read_test_split,
    score,
    softmax,
)
from tests.fixtures.datasets import write_digits_dataset
from workloads.store import ObjectStore

# Four rows, two classes. Predictions: A right (0.95), B wrong (0.97), C right (0.70), D wrong (0.55).
PROBS = np.array([[0.95, 0.05], [0.97, 0.03], [0.30, 0.70], [0.55, 0.45]])
TRUTH = np.array([0, 1, 1, 1])


def test_ece_by_hand_over_fifteen_bins() -> None:
    # Bins of width 1/15: A and B share (14/15, 1] -> accuracy 0.5, confidence 0.96, weight 2/4;
    # C alone in (10/15, 11/15] -> |1 - 0.70|, weight 1/4; D alone in (8/15, 9/15] -> |0 - 0.55|, weight 1/4.
    expected = 0.5 * abs(0.5 - 0.96) + 0.25 * abs(1 - 0.70) + 0.25 * abs(0 - 0.55)

    assert expected_calibration_error(PROBS, TRUTH) == pytest.approx(expected)
    assert expected == pytest.approx(0.4425)


def test_ece_with_one_bin_is_the_gap_between_accuracy_and_mean_confidence() -> None:
    mean_confidence = (0.95 + 0.97 + 0.70 + 0.55) / 4

    assert expected_calibration_error(PROBS, TRUTH, n_bins=1) == pytest.approx(abs(0.5 - mean_confidence))


def test_ece_is_zero_when_confidence_matches_accuracy() -> None:
    certain = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    # 0.75 confidence, right three times out of four: calibrated within its bin.
    three_quarters = np.array([[0.75, 0.25]] * 4)

    assert expected_calibration_error(certain, np.array([0, 2])) == 0.0
    assert expected_calibration_error(three_quarters, np.array([0, 0, 0, 1])) == pytest.approx(0.0)


def test_ece_of_an_overconfident_model() -> None:
    # 90% sure every time, right half the time: ECE = |0.5 - 0.9| = 0.4.
    probs = np.array([[0.9, 0.1]] * 10)
    truth = np.array([0, 1] * 5)

    assert expected_calibration_error(probs, truth) == pytest.approx(0.4)


def test_ece_rejects_mismatched_or_empty_input() -> None:
    with pytest.raises(ValueError, match="do not match"):
        expected_calibration_error(PROBS, TRUTH[:3])
    with pytest.raises(ValueError, match="zero rows"):
        expected_calibration_error(np.zeros((0, 2)), np.zeros(0))


def test_classification_metrics_by_hand() -> None:
    metrics = classification_metrics(PROBS, TRUTH)

    # predictions [0, 0, 1, 0]: class 0 has P=1/3 R=1 -> F1 0.5; class 1 has P=1 R=1/3 -> F1 0.5.
    assert metrics["accuracy"] == pytest.approx(0.5)
    assert metrics["macro_f1"] == pytest.approx(0.5)
    # log loss: mean of -ln(probability given to the true class).
    assert metrics["log_loss"] == pytest.approx(
        -(math.log(0.95) + math.log(0.03) + math.log(0.70) + math.log(0.45)) / 4
    )
    assert metrics["ece"] == pytest.approx(0.4425)


def test_log_loss_keeps_columns_for_classes_absent_from_the_split() -> None:
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1]])  # class 2 never appears in the truth

    metrics = classification_metrics(probs, np.array([0, 1]))

    assert metrics["log_loss"] == pytest.approx(-(math.log(0.8) + math.log(0.7)) / 2)


def test_softmax_rows_sum_to_one_and_survive_large_logits() -> None:
    probs = softmax(np.array([[0.0, math.log(3.0)], [1000.0, 1000.0]]))

    assert probs == pytest.approx(np.array([[0.25, 0.75], [0.5, 0.5]]))


def test_label_values_map_onto_the_model_logit_order() -> None:
    assert label_indices(np.array([7, 3, 7]), ["3", "7"]).tolist() == [1, 0, 1]
    assert label_indices(["b", "a"], ["a", "b"]).tolist() == [1, 0]
    with pytest.raises(DataValidationError, match=r"label\(s\) \['9'\] that the model does not know"):
        label_indices(np.array([3, 9]), ["3", "7"])


def _fixed_model() -> nn.Module:
    """Logits are the two features themselves: class 0 wins when feature 0 is larger."""
    layer = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(2))
    return layer


def test_score_of_a_fixed_model() -> None:
    features = np.array([[3.0, 0.0], [0.0, 3.0], [3.0, 0.0], [0.0, 3.0], [3.0, 0.0]], dtype=np.float32)
    labels = np.array([10, 20, 20, 20, 10])  # row 2 is wrong

    result = score(_fixed_model(), features, labels, model_labels=["10", "20"])

    assert result.rows == 5
    assert result.labels == ["10", "20"]
    assert result.confusion == [[2, 0], [1, 2]]
    assert result.metrics["accuracy"] == pytest.approx(0.8)
    p = math.exp(3) / (math.exp(3) + 1)  # softmax of (3, 0)
    assert result.metrics["log_loss"] == pytest.approx(-(4 * math.log(p) + math.log(1 - p)) / 5)
    assert result.metrics["inference_ms_per_sample"] > 0
    assert result.metrics["latency_p50_ms"] > 0
    assert confusion_rows(result) == [
        {"true \\ predicted": "10", "10": 2, "20": 0},
        {"true \\ predicted": "20", "10": 1, "20": 2},
    ]


def test_score_rejects_a_model_whose_outputs_do_not_match_its_labels() -> None:
    features = np.zeros((3, 2), dtype=np.float32)

    with pytest.raises(ConfigurationError, match=r"logits of shape \(3, 2\); expected \(3, 3\)"):
        score(_fixed_model(), features, np.array([1, 2, 3]), model_labels=["1", "2", "3"])


def test_reads_the_test_split_of_a_published_dataset(tmp_path: Path) -> None:
    uri = write_digits_dataset(tmp_path.as_uri(), limit=200)

    split = read_test_split(ObjectStore(), uri)

    assert split.rows == 30
    assert split.features.shape == (30, 64)
    assert split.features.dtype == np.float32
    assert split.version == uri.rsplit("/", 1)[-1]


def test_a_folder_without_manifest_is_not_a_dataset(tmp_path: Path) -> None:
    missing = (tmp_path / "datasets" / "digits" / "nope").as_uri()

    with pytest.raises(ConfigurationError, match=r"no prepared dataset at .*nope"):
        read_test_split(ObjectStore(), missing)
