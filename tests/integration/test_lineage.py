"""``gpuflow lineage`` over real registered versions: data, training run, code version, figures and cost.

Two pipeline runs register two versions of one model (tests/fixtures/stage_runs.py): version 1 trained on a
fake H100 (the real pynvml over the fake NVML library), version 2 on this machine without a GPU. Both pass the
gate, so ``champion`` ends on version 2.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from flows.cli.lineage_command import add_lineage_parser, lineage_command
from tasks.core import settings
from tests.conftest import ROOT
from tests.fixtures.datasets import write_digits_dataset
from tests.fixtures.flow_env import mlflow_db_template  # noqa: F401
from tests.fixtures.stage_runs import StageRuns, fake_gpu_compute, module_home, run_stages

pytest_plugins = ("tests.fixtures.fake_nvml.plugin",)
pytestmark = pytest.mark.usefixtures("prefect_api")


@dataclass(frozen=True)
class Registered:
    name: str
    dataset_uri: str
    v1: StageRuns
    v2: StageRuns


@pytest.fixture(scope="module")
def registered(
    prefect_api: None,
    tmp_path_factory: pytest.TempPathFactory,
    mlflow_db_template: Path,  # noqa: F811
    fake_nvml_lib: Path,
) -> Iterator[Registered]:
    with module_home(tmp_path_factory, mlflow_db_template, "lineage-home") as home:
        dataset = write_digits_dataset(settings.store_uri())
        name = f"lineage-{uuid.uuid4().hex[:6]}"
        v1 = run_stages(dataset, name, compute=fake_gpu_compute(fake_nvml_lib, home), early_stop="plateau")
        v2 = run_stages(dataset, name)
        assert (v1.evaluation.model_version, v2.evaluation.model_version) == ("1", "2")
        assert v2.evaluation.champion_version == "2"
        yield Registered(name=name, dataset_uri=dataset, v1=v1, v2=v2)


def lineage(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="gpuflow")
    add_lineage_parser(parser.add_subparsers(dest="command"))
    return lineage_command(parser.parse_args(["lineage", *argv]))


def lineage_json(spec: str, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert lineage(spec, "--json") == 0
    return dict(json.loads(capsys.readouterr().out))


def test_a_version_names_its_dataset_training_run_code_and_cost(
    registered: Registered, capsys: pytest.CaptureFixture[str]
) -> None:
    out = lineage_json(f"{registered.name}/1", capsys)

    trained, evaluation = registered.v1.trained, registered.v1.evaluation
    train_run = MlflowClient(settings.tracking_uri()).get_run(trained.run_id)
    assert out["model_version"] == "1" and out["model_uri"] == f"models:/{registered.name}/1"
    assert out["dataset"] == {"name": "digits", "version": trained.dataset_version, "uri": registered.dataset_uri}
    assert out["training_run"]["run_id"] == trained.run_id
    assert out["training_run"]["training_id"] == trained.training_id
    assert out["training_run"]["stop_reason"] == trained.stop_reason == "completed: ran all 4 epochs"
    assert out["pipeline_run_id"] == registered.v1.pipeline_run_id
    assert out["evaluate_run_id"] == evaluation.evaluate_run_id
    assert out["code_version"] == train_run.data.tags["gpuflow.pipeline_version"]
    # The environment is the digest of the checked-in lock this checkout was installed from.
    lock_digest = hashlib.sha256((ROOT / "requirements.lock").read_bytes()).hexdigest()[:16]
    assert out["environment"] == train_run.data.tags["gpuflow.environment"] == f"lock-{lock_digest}"
    assert out["hyperparameters"] == {
        "epochs": "4", "batch_size": "64", "learning_rate": "0.003", "hidden_size": "32", "dropout": "0.0",
        "seed": "42", "optimizer": "adam", "early_stop": "plateau", "patience": "5", "device": "cpu",
    }  # fmt: skip
    assert out["test_metrics"]["accuracy"] == pytest.approx(evaluation.metrics["accuracy"])
    assert out["gate_passed"] is True
    gpu = out["gpu"]
    assert gpu["stages"]["train"]["gpu_names"] == ["NVIDIA H100 80GB HBM3"]
    assert gpu["stages"]["train"]["util_mean_pct"] == 73.0
    assert gpu["run"]["gpu_seconds"] == pytest.approx(trained.telemetry["gpu_seconds"])
    assert out["cost"]["stages"]["train"]["basis"] == "gpu-hours"
    assert out["cost"]["stages"]["evaluate"]["basis"] == "node-hours (no GPU)"
    assert out["cost"]["run"]["total"] == pytest.approx(
        out["cost"]["stages"]["train"]["total"] + out["cost"]["stages"]["evaluate"]["total"]
    )


def test_alias_and_bare_name_follow_the_champion(registered: Registered, capsys: pytest.CaptureFixture[str]) -> None:
    champion = lineage_json(f"{registered.name}@champion", capsys)
    assert champion["model_version"] == "2" and champion["aliases"] == ["challenger", "champion"]
    assert champion["training_run"]["run_id"] == registered.v2.trained.run_id
    assert champion["gpu"]["run"]["has_gpu"] is False
    assert champion["cost"]["basis"] == "node-hours (no GPU)"
    assert lineage_json(registered.name, capsys)["model_version"] == "2"


def test_the_table_shows_what_is_behind_the_version(registered: Registered, capsys: pytest.CaptureFixture[str]) -> None:
    assert lineage(f"{registered.name}/1") == 0
    table = capsys.readouterr().out
    trained = registered.v1.trained
    assert f"{registered.name} version 1" in table
    assert f"digits version {trained.dataset_version}" in table
    assert trained.run_id in table and registered.v1.pipeline_run_id in table
    assert "1 x NVIDIA H100 80GB HBM3" in table
    assert "USD (mixed)" in table


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no-such-model", "model 'no-such-model' is not registered in MLflow"),
        ("{name}@staging", "model '{name}' has no alias 'staging' (aliases: challenger, champion)"),
        ("{name}/9", "model '{name}' has no version 9 (versions: 1, 2)"),
    ],
)
def test_what_does_not_exist_is_an_error_saying_what_does(
    registered: Registered, capsys: pytest.CaptureFixture[str], spec: str, message: str
) -> None:
    assert lineage(spec.format(name=registered.name)) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert message.format(name=registered.name) in captured.err
