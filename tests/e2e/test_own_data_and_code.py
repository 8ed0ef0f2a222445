"""Bring your own data and code, end to end (issues 14 and 15): prepare -> train -> evaluate -> rollout with a
canary against a first champion, for a regression with the built-in MLP and for the breast-cancer example's own
scikit-learn trainer (the command contract, served through the pyfunc path), each through ml_pipeline as a
Python caller runs it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from flows.pipeline import PipelineResult, ml_pipeline
from tasks.core import settings
from tasks.core.errors import ConfigurationError
from tests.fixtures.flow_env import migrated_home, mlflow_db_template, no_heartbeat_wait  # noqa: F401
from tests.fixtures.spec_data import diabetes_csv, diabetes_spec, write_spec

pytestmark = pytest.mark.usefixtures("prefect_api", "no_heartbeat_wait", "migrated_home")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "breast_cancer_sklearn"
CANARY_SECONDS = 6.0  # the default policy's smallest window that can collect min_requests at 10 %


def test_a_regression_dataset_is_trained_gated_and_rolled_out_by_its_own_figures(tmp_path: Path) -> None:
    spec, data = write_spec(tmp_path, diabetes_spec()), diabetes_csv(tmp_path)
    common: dict[str, Any] = {
        "data_uri": str(data), "dataset_name": "diabetes", "model_name": "diabetes", "dataset_spec": str(spec),
        "device": "cpu", "batch_size": 32, "hidden_size": 32, "canary_analysis_seconds": CANARY_SECONDS,
    }  # fmt: skip
    first = ml_pipeline(**common, epochs=12, learning_rate=1e-3)
    assert isinstance(first, PipelineResult)
    assert set(first.metrics) >= {"rmse", "mae", "r2"} and "accuracy" not in first.metrics
    assert first.metrics["r2"] > 0.2 and first.gate["passed"] and first.champion_version == "1"

    second = ml_pipeline(**common, epochs=12, learning_rate=1e-3)  # the same model again: it must agree
    assert isinstance(second, PipelineResult), second
    assert second.canary is not None and second.canary["decision"] == "promoted", second.canary
    assert second.champion_version == "2" and second.previous_champion_version == "1"
    version = MlflowClient(settings.tracking_uri()).get_model_version("diabetes", "2")
    assert version.tags["gpuflow.task"] == "regression"

    gate = tmp_path / "gate.yaml"
    gate.write_text("rules:\n  - {metric: accuracy, at_least: 0.9}\n")
    with pytest.raises(ConfigurationError, match=r"rule on 'accuracy'.*rmse"):  # refused before any training
        ml_pipeline(**common, epochs=1, gate=str(gate))


def test_the_breast_cancer_example_trains_its_own_code_and_earns_traffic_through_a_canary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "breast_cancer_sklearn"
    shutil.copytree(EXAMPLE, project)  # a user's own project folder, outside gpuflow's packages
    monkeypatch.chdir(project)  # the README runs gpuflow from the project folder (gate.yaml's metric imports here)
    data = project / "breast_cancer.csv"
    subprocess.run([sys.executable, "make_data.py"], cwd=project, check=True, capture_output=True)
    common: dict[str, Any] = {
        "data_uri": str(data), "dataset_name": "breast-cancer", "model_name": "breast-cancer",
        "dataset_spec": "dataset.yaml", "trainer": "trainer.yaml", "gate": "gate.yaml",
        "canary_analysis_seconds": CANARY_SECONDS,
    }  # fmt: skip
    first = ml_pipeline(**common)
    assert isinstance(first, PipelineResult), first
    assert first.metrics["roc_auc"] > 0.97 and first.metrics["malignant_recall"] > 0.85
    assert first.champion_version == "1" and first.gpu and "node-hours" in first.cost["basis"]
    run = MlflowClient(settings.tracking_uri()).get_run(first.train_run_id)
    assert run.data.tags["gpuflow.trainer"] == "command python train.py"
    assert run.data.tags["gpuflow.labels"] == '["malignant", "benign"]'

    # another seed: without subsampling HistGradientBoosting grows the same trees, so the canary must agree
    second = ml_pipeline(**common, hyperparameters={"seed": 1})
    assert isinstance(second, PipelineResult), second
    assert second.canary is not None and second.canary["decision"] == "promoted", second.canary
    assert second.champion_version == "2"
    run = MlflowClient(settings.tracking_uri()).get_run(second.train_run_id)
    assert '"seed": 1' in run.data.params["hyperparameters"]
    from blocks.mlflow_tracking import MLflowTracking
    from tasks.reporting.lineage import model_lineage

    lineage = model_lineage(MLflowTracking.embedded(), "breast-cancer@champion")  # what code trained it
    assert lineage.model_version == "2" and lineage.trainer == "command python train.py"
    assert lineage.hyperparameters["seed"] == "1" and lineage.hyperparameters["max_iter"] == "200"
