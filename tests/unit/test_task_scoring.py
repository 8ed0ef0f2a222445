"""Scoring per task on small hand-made arrays: regression figures, ROC-AUC, custom metric calls, the checks on what a
model returns, and the reshape a tensor signature asks for."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from blocks.quality_gate import CustomMetric, QualityGate
from tasks.core.errors import ConfigurationError
from tasks.evaluation import custom_metrics
from tasks.evaluation.custom_metrics import CustomMetricFailed
from tasks.evaluation.gate import apply_gate
from tasks.evaluation.labelled_split import LabelledSplit
from tasks.evaluation.metrics import classification_metrics, headline_metrics, regression_metrics, task_metrics
from tasks.evaluation.model_loading import LoadedModel, ModelInput
from tasks.evaluation.result import Evaluation
from tasks.evaluation.scoring import score_loaded


def test_regression_metrics_by_hand() -> None:
    metrics = regression_metrics(np.array([1.0, 2.0, 3.0, 6.0]), np.array([1.0, 2.0, 3.0, 4.0]))

    # errors 0, 0, 0, 2: RMSE sqrt(4/4), MAE 2/4; R² = 1 - 4 / sum((y - 2.5)²) = 1 - 4/5.
    assert metrics == pytest.approx({"rmse": 1.0, "mae": 0.5, "r2": 0.2})
    assert math.isnan(regression_metrics(np.array([1.0, 2.0]), np.array([3.0, 3.0]))["r2"])


def test_roc_auc_is_added_for_two_classes_only() -> None:
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.65, 0.35], [0.2, 0.8]])

    binary = classification_metrics(probs, np.array([0, 0, 1, 1]))
    three = classification_metrics(np.array([[0.5, 0.3, 0.2], [0.1, 0.8, 0.1]]), np.array([0, 1]))
    one_class = classification_metrics(probs, np.array([1, 1, 1, 1]))

    # positive-class scores 0.1, 0.4 (negatives) vs 0.35, 0.8 (positives): 3 of 4 pairs ordered right.
    assert binary["roc_auc"] == pytest.approx(0.75)
    assert "roc_auc" not in three
    assert math.isnan(one_class["roc_auc"])
    assert headline_metrics("classification", 10) == ("accuracy", "macro_f1", "log_loss", "ece")
    assert "roc_auc" in task_metrics("classification", 2) and "roc_auc" in task_metrics("classification")


# --------------------------------------------------------------------------- models returning things


def _split(features: np.ndarray, labels: np.ndarray) -> LabelledSplit:
    return LabelledSplit(
        "file:///d", "v1", features.astype(np.float32), labels, [f"f{j}" for j in range(features.shape[1])]
    )


def _pyfunc(predict: Any, signature: ModelInput | None = None) -> LoadedModel:
    return LoadedModel(
        "models:/m/1", "mlflow.sklearn", signature or ModelInput(), pyfunc=SimpleNamespace(predict=predict)
    )


def test_a_pyfunc_classifier_and_its_custom_metric_see_class_names_and_probabilities() -> None:
    features = np.array([[0.9], [0.2], [0.7], [0.1]])
    seen: dict[str, Any] = {}

    def recall(y_true: np.ndarray, y_pred: np.ndarray, *, probabilities: np.ndarray, labels: list[str]) -> float:
        seen.update(y_true=list(y_true), y_pred=list(y_pred), labels=labels, shape=probabilities.shape)
        return float(np.mean(y_pred[y_true == "yes"] == "yes"))

    model = _pyfunc(lambda x: np.hstack([1 - x, x]))  # P(yes) is the feature
    metric = CustomMetric(name="yes_recall", function="x.y:recall", higher_is_better=True)

    result = score_loaded(model, _split(features, np.array(["yes", "no", "no", "yes"])), ["no", "yes"],
                          "classification", [(metric, recall)])  # fmt: skip

    assert seen == {
        "y_true": ["yes", "no", "no", "yes"],
        "y_pred": ["yes", "no", "yes", "no"],
        "labels": ["no", "yes"],
        "shape": (4, 2),
    }
    assert result.metrics["yes_recall"] == 0.5 and result.metrics["accuracy"] == 0.5
    assert result.confusion == [[1, 1], [1, 1]] and "roc_auc" in result.metrics


def test_a_pyfunc_classifier_that_answers_labels_is_told_to_answer_probabilities() -> None:
    model = _pyfunc(lambda x: np.zeros(len(x)))

    with pytest.raises(ConfigurationError, match=r"returned shape \(3,\); a classifier must return class probabilities "
                       r"\(3, 2\) .*pyfunc_predict_fn=\"predict_proba\""):  # fmt: skip
        score_loaded(model, _split(np.zeros((3, 1)), np.array([0, 1, 0])), ["0", "1"], "classification")
    scores = _pyfunc(lambda x: np.hstack([x + 2, x]))
    with pytest.raises(ConfigurationError, match=r"not class probabilities .* row sums range 2.000..2.000"):
        score_loaded(scores, _split(np.zeros((3, 1)), np.array([0, 1, 0])), ["0", "1"], "classification")


def test_regressors_may_answer_n_or_n_by_1_and_nothing_else() -> None:
    features = np.array([[1.0], [2.0], [3.0]])
    truth = np.array([1.0, 2.0, 4.0])
    layer = nn.Linear(1, 1)
    with torch.no_grad():
        layer.weight.fill_(1.0)
        layer.bias.fill_(0.0)
    torch_model = LoadedModel("models:/r/1", "pytorch", ModelInput(), module=layer)

    by_torch = score_loaded(torch_model, _split(features, truth), [], "regression")
    by_pyfunc = score_loaded(_pyfunc(lambda x: x[:, 0]), _split(features, truth), [], "regression")

    assert by_torch.task == "regression" and by_torch.confusion == []
    assert by_torch.metrics["rmse"] == pytest.approx(math.sqrt(1 / 3)) == by_pyfunc.metrics["rmse"]
    assert by_torch.actual == [1.0, 2.0, 4.0] and by_torch.predicted == [1.0, 2.0, 3.0]
    with pytest.raises(
        ConfigurationError, match=r"returned shape \(3, 2\); a regressor must return \(3,\) or \(3, 1\)"
    ):
        score_loaded(_pyfunc(lambda x: np.hstack([x, x])), _split(features, truth), [], "regression")


def test_a_tensor_signature_reshapes_the_flat_features_row_major() -> None:
    model = _pyfunc(lambda x: x, ModelInput(shape=(1, 2, 3), dtype=np.dtype("float64")))
    flat = np.arange(12, dtype=np.float32).reshape(2, 6)

    shaped = model.inputs(flat, [f"p{j}" for j in range(6)], {"image": [1, 2, 3]})

    assert shaped.shape == (2, 1, 2, 3) and shaped.dtype == np.float64
    assert shaped[1, 0, 1, 0] == 9.0  # row 1, element (0, 1, 0) = flat index 3
    expected = (
        r"signature takes inputs of shape \(-1, 1, 2, 3\) \(6 values per row\), but the test split has 4 feature "
        r"values per row, shape \(-1, 4\); the dataset declares tensor 'image' of shape \[2, 2\]"
    )
    with pytest.raises(ConfigurationError, match=expected):
        model.inputs(np.zeros((2, 4)), ["a", "b", "c", "d"], {"image": [2, 2]})


def test_a_column_signature_gets_a_table_with_the_manifests_feature_names() -> None:
    model = _pyfunc(lambda x: x, ModelInput(columns=("b", "a"), column_types=("double", None)))

    table = model.inputs(np.array([[1.0, 2.0]]), ["a", "b"], {})

    assert list(table.columns) == ["b", "a"] and table.iloc[0].tolist() == [2.0, 1.0]
    assert str(table.dtypes["b"]) == "float64" and str(table.dtypes["a"]) == "float32"
    with pytest.raises(ConfigurationError, match=r"asks for column\(s\) \['b'\] that the dataset does not have"):
        model.inputs(np.array([[1.0]]), ["a"], {})


# --------------------------------------------------------------------------- custom metric calls


def test_a_custom_metric_that_raises_or_returns_no_number_is_named() -> None:
    def raises(y_true: Any, y_pred: Any) -> float:
        raise KeyError("label")

    with pytest.raises(
        CustomMetricFailed, match=r"custom metric 'bias' \(team.metrics:bias\) raised KeyError: 'label'"
    ):
        custom_metrics.call("bias", "team.metrics:bias", raises, [1.0], [1.0])
    with pytest.raises(CustomMetricFailed, match=r"returned 'high'; expected one number"):
        custom_metrics.call("bias", "team.metrics:bias", lambda t, p: "high", [1.0], [1.0])
    with pytest.raises(CustomMetricFailed, match=r"returned \[1, 2\]; expected one number|returned '\[1, 2\]'"):
        custom_metrics.call("bias", "team.metrics:bias", lambda t, p: [1, 2], [1.0], [1.0])
    with pytest.raises(CustomMetricFailed, match=r"returned inf; expected a finite number"):
        custom_metrics.call("bias", "team.metrics:bias", lambda t, p: math.inf, [1.0], [1.0])
    assert custom_metrics.call("bias", "team.metrics:bias", lambda t, p: np.float32(0.5), [1.0], [1.0]) == 0.5
    with pytest.raises(
        ConfigurationError, match=r"'team.metrics' is not a reference of the form package.module:function"
    ):
        custom_metrics.resolve("team.metrics", "bias")


def test_the_event_payload_carries_the_task_and_its_headline_metrics() -> None:
    decision = apply_gate(QualityGate(), "regression", metrics={"rmse": 50.0, "r2": 0.4})
    evaluation = Evaluation(
        model_name="diabetes",
        model_version="1",
        model_uri="models:/diabetes/1",
        train_run_id="t",
        evaluate_run_id="e",
        dataset_uri="file:///d",
        dataset_version="v",
        task="regression",
        primary_metric="rmse",
        metrics={"rmse": 50.0, "mae": 40.0, "r2": 0.4, "latency_p50_ms": 0.1, "bias": 0.2},
        champion_metrics=None,
        regression=None,
        gate=decision,
        previous_champion_version=None,
        champion_version="1",
        promoted=True,
        seconds=1.0,
        custom_metrics=["bias"],
    )

    payload = evaluation.event_payload()

    assert (payload["task"], payload["primary_metric"], payload["regression"]) == ("regression", "rmse", None)
    assert payload["metrics"] == {"rmse": 50.0, "mae": 40.0, "r2": 0.4, "bias": 0.2}
