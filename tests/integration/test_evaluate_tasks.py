"""The evaluate flow per task and flavor, on datasets published by the real prepare flow from dataset specs.

A torch regressor on diabetes (RMSE, MAE, R², residual plot, the regression default gate against a champion), a
scikit-learn classifier with string classes through pyfunc (ROC-AUC, a custom metric in the gate's rules), a torch
CNN whose signature takes [1, 8, 8] images, and the bad inputs: each refused with a message naming the problem and
nothing registered. Real MLflow store (SQLite), real Prefect API; the figures are cross-checked by loading each
registered model with MLflow and computing the metric here.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import numpy as np
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import BlockDocumentUpdate
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from blocks.quality_gate import CustomMetric, GateRule, QualityGate
from flows.evaluate import Evaluation, evaluate
from flows.prepare import prepare
from tasks.core import settings
from tasks.core.errors import ConfigurationError
from tasks.evaluation.custom_metrics import CustomMetricFailed
from tasks.tracking.events import MODEL_EVALUATED
from tests.fixtures.flow_env import mlflow_db_template  # noqa: F401 (fixture used by name)
from tests.fixtures.models import aliases, registry_client
from tests.fixtures.prefect_events import wait_for_event
from tests.fixtures.spec_data import (
    breast_cancer_csv,
    breast_cancer_spec,
    diabetes_csv,
    diabetes_spec,
    digits_tensor_spec,
    write_spec,
)
from tests.fixtures.stage_runs import module_home
from tests.fixtures.task_models import log_breast_cancer_classifier, log_diabetes_regressor, log_digits_cnn
from workloads.dataset import load_manifest, read_split

pytestmark = pytest.mark.usefixtures("prefect_api")
FIXTURES = "tests.fixtures.task_models"


@dataclass(frozen=True)
class TaskHome:
    diabetes: str
    cancer: str
    digits: str
    regressor: str  # training run ids
    weak_regressor: str
    classifier: str
    cnn: str


@pytest.fixture(scope="module")
def home(
    prefect_api: None,
    tmp_path_factory: pytest.TempPathFactory,
    mlflow_db_template: Path,  # noqa: F811
) -> Iterator[TaskHome]:
    with module_home(tmp_path_factory, mlflow_db_template, "evaluate-tasks") as folder:
        raw = folder / "raw"
        raw.mkdir()

        def prepared(csv: Path | str, name: str, spec: dict[str, Any]) -> str:
            return prepare(str(csv), dataset_name=name, dataset_spec=str(write_spec(raw, spec, f"{name}.yaml")))\
                .dataset_uri  # fmt: skip

        diabetes = prepared(diabetes_csv(raw), "diabetes", diabetes_spec())
        cancer = prepared(breast_cancer_csv(raw), "breast-cancer", breast_cancer_spec())
        digits = prepared("demo", "digits-image", digits_tensor_spec())
        uri = settings.tracking_uri()
        yield TaskHome(
            diabetes=diabetes,
            cancer=cancer,
            digits=digits,
            regressor=log_diabetes_regressor(uri, diabetes),
            weak_regressor=log_diabetes_regressor(uri, diabetes, steps=5),
            classifier=log_breast_cancer_classifier(uri, cancer),
            cnn=log_digits_cnn(uri, digits),
        )


def model_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def run_evaluate(**kwargs: Any) -> tuple[Evaluation, UUID]:
    state = evaluate(**kwargs, return_state=True)
    flow_run_id = state.state_details.flow_run_id
    assert flow_run_id is not None
    return state.result(), flow_run_id


def artifacts(flow_run_id: UUID) -> dict[str, Any]:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {artifact.key: artifact for artifact in found if artifact.key}


def save_gate(**fields: Any) -> str:
    name = f"gate-{uuid.uuid4().hex[:8]}"
    QualityGate(**fields).save(name)
    return name


def predict(model_uri: str, features: np.ndarray, folder: Path) -> np.ndarray:
    """The registered model's answers, loaded by MLflow itself (an independent path from evaluate's) from a copy in
    ``folder`` (MLflow's default is a new /tmp folder nobody removes)."""
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(model_uri, dst_path=str(folder))
    return np.asarray(model.predict(features), dtype=np.float64)


def test_a_torch_regressor_gets_rmse_mae_r2_a_residual_plot_and_the_regression_gate(
    home: TaskHome, tmp_path: Path
) -> None:
    import mlflow

    name = model_name("diabetes")
    since = datetime.now(UTC)

    first, flow_run_id = run_evaluate(train_run_id=home.regressor, dataset_uri=home.diabetes, model_name=name)

    assert (first.task, first.primary_metric) == ("regression", "rmse")
    assert {"rmse", "mae", "r2", "inference_ms_per_sample", "latency_p50_ms"} == set(first.metrics)
    assert first.gate.passed and first.promoted and [c.name for c in first.gate.checks] == ["min_r2"]
    assert first.metrics["r2"] > 0.3 and 0 < first.metrics["mae"] < first.metrics["rmse"] < 70
    # the same figure, computed here from MLflow's own loading of the registered version
    x_test, y_test = read_split(home.diabetes, "test")
    mlflow.set_tracking_uri(settings.tracking_uri())
    try:
        predicted = predict(f"models:/{name}/1", x_test, tmp_path).reshape(-1)
    finally:
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]
    assert first.metrics["rmse"] == pytest.approx(math.sqrt(np.mean((predicted - y_test) ** 2)), rel=1e-5)

    client = registry_client()
    run = client.get_run(first.evaluate_run_id)
    assert {"test_rmse", "test_mae", "test_r2"} <= set(run.data.metrics)
    assert run.data.tags["gpuflow.task"] == "regression"
    png = Path(client.download_artifacts(first.evaluate_run_id, "evaluation/residuals.png", str(tmp_path)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    version = client.get_model_version(name, "1")
    assert version.tags["gpuflow.task"] == "regression" and "gpuflow.labels" not in version.tags
    assert float(version.tags["gpuflow.test_rmse"]) == pytest.approx(first.metrics["rmse"], abs=1e-6)
    found = artifacts(flow_run_id)
    assert "confusion-matrix" not in found
    quantiles = found["residuals"].data
    rows = json.loads(quantiles) if isinstance(quantiles, str) else quantiles
    assert [row["quantile"] for row in rows] == [0.05, 0.25, 0.5, 0.75, 0.95]
    assert "Task: regression (primary metric `rmse`, lower is better)." in found["quality-gate"].data
    payload = wait_for_event(MODEL_EVALUATED, resource_id=f"gpuflow.model.{name}", since=since)["payload"]
    assert (payload["task"], payload["primary_metric"]) == ("regression", "rmse")
    assert set(payload["metrics"]) == {"rmse", "mae", "r2"}

    weak, flow_run_id = run_evaluate(train_run_id=home.weak_regressor, dataset_uri=home.diabetes, model_name=name)

    assert weak.metrics["rmse"] > first.metrics["rmse"] * 1.05
    assert weak.regression == pytest.approx(weak.metrics["rmse"] - first.metrics["rmse"])
    assert weak.champion_metrics is not None and weak.champion_metrics["rmse"] == pytest.approx(first.metrics["rmse"])
    assert not weak.gate.passed and next(c.name for c in weak.gate.checks if not c.passed) == "max_regression"
    worse = (weak.metrics["rmse"] - first.metrics["rmse"]) / first.metrics["rmse"] * 100
    assert weak.gate.reasons[0] == (
        f"test RMSE {weak.metrics['rmse']:.3f} is {worse:.1f} % worse than the champion (version 1)'s "
        f"{first.metrics['rmse']:.3f}; the largest regression allowed is 5.0 %"
    )
    assert aliases(name) == {"champion": "1", "challenger": "2"}
    assert "| max_regression |" in artifacts(flow_run_id)["quality-gate"].data


def test_a_scikit_learn_classifier_with_string_classes_is_scored_through_pyfunc(home: TaskHome, tmp_path: Path) -> None:
    import mlflow

    name = model_name("cancer")
    gate = save_gate(
        custom_metrics=[
            CustomMetric(name="malignant_recall", function=f"{FIXTURES}:malignant_recall", higher_is_better=True)
        ],
        rules=[GateRule(metric="roc_auc", at_least=0.95), GateRule(metric="malignant_recall", at_least=0.85)],
    )
    since = datetime.now(UTC)

    result, flow_run_id = run_evaluate(
        train_run_id=home.classifier, dataset_uri=home.cancer, model_name=name, gate=gate
    )

    assert result.task == "classification" and result.primary_metric == "accuracy"
    assert result.metrics["roc_auc"] > 0.95 and result.metrics["accuracy"] > 0.9
    assert 0.85 <= result.metrics["malignant_recall"] <= 1.0
    assert [c.name for c in result.gate.checks] == ["min_roc_auc", "min_malignant_recall"]
    assert result.gate.passed and result.promoted
    # cross-check against MLflow's own pyfunc and the manifest's class names
    manifest = load_manifest(home.cancer)
    x_test, stored = read_split(home.cancer, "test")
    truth = np.asarray([manifest.class_names[i] for i in stored])
    mlflow.set_tracking_uri(settings.tracking_uri())
    try:
        probabilities = predict(f"models:/{name}/1", x_test, tmp_path)
    finally:
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]
    labels = np.asarray(["benign", "malignant"])  # the classifier's classes_, alphabetical
    predicted = labels[probabilities.argmax(axis=1)]
    assert result.metrics["accuracy"] == pytest.approx(float(np.mean(predicted == truth)))
    assert result.metrics["malignant_recall"] == pytest.approx(
        float(np.mean(predicted[truth == "malignant"] == "malignant"))
    )
    table = artifacts(flow_run_id)["confusion-matrix"].data
    rows = json.loads(table) if isinstance(table, str) else table
    assert [row["true \\ predicted"] for row in rows] == ["benign", "malignant"]
    run = registry_client().get_run(result.evaluate_run_id)
    assert {"test_roc_auc", "test_malignant_recall"} <= set(run.data.metrics)
    payload = wait_for_event(MODEL_EVALUATED, resource_id=f"gpuflow.model.{name}", since=since)["payload"]
    assert set(payload["metrics"]) == {"accuracy", "macro_f1", "log_loss", "ece", "roc_auc", "malignant_recall"}


def test_a_cnn_takes_the_image_tensor_its_signature_declares(home: TaskHome) -> None:
    result, _ = run_evaluate(train_run_id=home.cnn, dataset_uri=home.digits, model_name=model_name("digits-cnn"))

    assert result.metrics["accuracy"] > 0.9
    assert "roc_auc" not in result.metrics  # ten classes
    assert result.gate.passed and [c.name for c in result.gate.checks] == ["min_accuracy"]


def _nothing_registered(name: str) -> None:
    assert registry_client().search_registered_models(f"name = '{name}'") == []


def test_bad_inputs_are_refused_naming_the_problem_and_register_nothing(home: TaskHome) -> None:
    name = model_name("bad")

    with pytest.raises(ConfigurationError, match=r"is a regression model .* is a classification dataset"):
        evaluate(train_run_id=home.regressor, dataset_uri=home.cancer, model_name=name)

    with pytest.raises(
        ConfigurationError,
        match=r"signature takes inputs of shape \(-1, 1, 8, 8\) \(64 values per row\), but the test split has 30 "
        r"feature values per row, shape \(-1, 30\)",
    ):
        evaluate(train_run_id=home.cnn, dataset_uri=home.cancer, model_name=name)

    on_auc = save_gate(rules=[GateRule(metric="roc_auc", at_least=0.9)])
    with pytest.raises(ConfigurationError, match=r"rule on 'roc_auc': the evaluation of a regression model does not "
                       r"produce it; it produces rmse, mae, r2, inference_ms_per_sample, latency_p50_ms"):  # fmt: skip
        evaluate(train_run_id=home.regressor, dataset_uri=home.diabetes, model_name=name, gate=on_auc)

    missing = save_gate(
        custom_metrics=[
            CustomMetric(name="recall", function="tests.fixtures.no_such_module:recall", higher_is_better=True)
        ]
    )
    with pytest.raises(ConfigurationError, match=r"custom metric 'recall': cannot import module "
                       r"'tests.fixtures.no_such_module' of 'tests.fixtures.no_such_module:recall'"):  # fmt: skip
        evaluate(train_run_id=home.classifier, dataset_uri=home.cancer, model_name=name, gate=missing)

    broken = save_gate(
        custom_metrics=[CustomMetric(name="broken", function=f"{FIXTURES}:broken_metric", higher_is_better=True)]
    )
    with pytest.raises(CustomMetricFailed, match=rf"custom metric 'broken' \({FIXTURES}:broken_metric\) raised "
                       r"ZeroDivisionError: division by zero in the team's metric"):  # fmt: skip
        evaluate(train_run_id=home.classifier, dataset_uri=home.cancer, model_name=name, gate=broken)

    # a rule without a bound, as the UI's form lets one be saved (the form's schema cannot say "one of three")
    unbounded = save_gate()
    with get_client(sync_client=True) as client:
        saved = client.read_block_document_by_name(unbounded, "gpuflow-quality-gate")
        client.update_block_document(saved.id, BlockDocumentUpdate(data={**saved.data, "rules": [{"metric": "rmse"}]}))
    expected = (
        rf"gpuflow-quality-gate block '{unbounded}' is not valid: rules.0: Value "
        r"error, gate rule on 'rmse' sets none of at_least, at_most and max_regression"
    )
    with pytest.raises(ConfigurationError, match=expected):
        evaluate(train_run_id=home.regressor, dataset_uri=home.diabetes, model_name=name, gate=unbounded)

    _nothing_registered(name)


def test_the_task_tag_is_read_from_the_training_run_and_checked(home: TaskHome) -> None:
    from blocks.mlflow_tracking import MLflowTracking
    from tasks.tracking.model_registry import read_trained_model
    from tasks.tracking.runs import start_run

    client = registry_client()

    def run_with(tags: dict[str, str]) -> str:
        run_id = start_run(MLflowTracking.embedded(), "train", stage="train")
        for key, value in {"gpuflow.model_uri": "models:/m-0123", **tags}.items():
            client.set_tag(run_id, key, value)
        return run_id

    regressor = read_trained_model(client, run_with({"gpuflow.task": "regression"}))
    assert (regressor.task, regressor.labels) == ("regression", [])
    old = read_trained_model(client, run_with({"gpuflow.labels": '["a", "b"]'}))  # no task tag: a classifier
    assert (old.task, old.labels) == ("classification", ["a", "b"])
    ranking = run_with({"gpuflow.task": "ranking"})
    with pytest.raises(ConfigurationError, match=rf"run '{ranking}' has a gpuflow.task tag 'ranking'; expected one "
                       r"of classification, regression"):  # fmt: skip
        read_trained_model(client, ranking)
    unlabelled = run_with({"gpuflow.task": "classification"})
    with pytest.raises(ConfigurationError, match=rf"run '{unlabelled}' has no gpuflow.labels tag"):
        read_trained_model(client, unlabelled)
