"""GPU telemetry of every stage, as a user finds it in MLflow and Prefect.

With a GPU: the trainer runs as a real subprocess whose real pynvml loads the fake NVML library (one H100 that
always reads 73 % utilisation, 3 GiB used, 180 W), passed through the compute block's env; every epoch's figures
must be the script's. Without one (this machine): every stage says "no GPU" and nothing fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from tasks.core import settings
from tests.conftest import ROOT
from tests.fixtures.datasets import write_digits_dataset
from tests.fixtures.fake_nvml.harness import FakeNvml
from tests.fixtures.fake_nvml.script import Device, Script
from tests.fixtures.flow_env import migrated_home, mlflow_db_template, no_heartbeat_wait, sqlite_run  # noqa: F401
from tests.fixtures.stage_runs import FAKE_MEM_MIB, FAKE_POWER_W, FAKE_UTIL, fake_gpu_compute, run_stages
from workloads.telemetry import TelemetrySummary
from workloads.telemetry import read_series as decode_series

pytest_plugins = ("tests.fixtures.fake_nvml.plugin",)
pytestmark = pytest.mark.usefixtures("prefect_api", "no_heartbeat_wait")


@pytest.fixture
def dataset_uri(migrated_home: Path, monkeypatch: pytest.MonkeyPatch) -> str:  # noqa: F811
    monkeypatch.setenv("GPUFLOW_TORCH_THREADS", "1")
    return write_digits_dataset(settings.store_uri())


def _client() -> MlflowClient:
    return MlflowClient(settings.tracking_uri())


def _history(run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in _client().get_metric_history(run_id, key)}


def _artifact(run_id: str, path: str, tmp: Path) -> Path:
    return Path(_client().download_artifacts(run_id, path, str(tmp)))


def _flow_run_tables(run_id: str) -> dict[str, Any]:
    """Prefect artifacts of the flow run that made an MLflow stage run (its gpuflow.prefect_flow_run_id tag)."""
    flow_run = UUID(_client().get_run(run_id).data.tags["gpuflow.prefect_flow_run_id"])
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run])))
    return {a.key: a for a in found if a.key}


def test_trainer_on_a_gpu_logs_each_epochs_figures_beside_its_loss(
    dataset_uri: str, fake_nvml_lib: Path, tmp_path: Path
) -> None:
    compute = fake_gpu_compute(fake_nvml_lib, tmp_path)

    done = run_stages(dataset_uri, f"gpu-{uuid.uuid4().hex[:6]}", compute=compute, epochs=3)
    run_id = done.trained.run_id

    # The launcher gives an epoch its own GPU figures when it ends at least a sampling interval (1 s) after the last
    # epoch that got some; the digits' epochs take milliseconds, so the first and the last always get them (the
    # last one up to the trainer's exit) and the middle one only on a slow machine.
    epoch_s = _history(run_id, "gpu_seconds")
    attributed = sorted(epoch_s)
    assert attributed[0] == 1 and attributed[-1] == 3 and set(attributed) <= {1, 2, 3}
    for key, expected in (
        ("epoch_gpu.DCGM_FI_DEV_GPU_UTIL_mean", FAKE_UTIL),
        ("epoch_gpu.DCGM_FI_DEV_FB_USED_peak", FAKE_MEM_MIB),
        ("epoch_gpu.DCGM_FI_DEV_POWER_USAGE_mean", FAKE_POWER_W),
        ("epoch_gpu.gpuflow_gpu_count", 1.0),
    ):
        assert _history(run_id, key) == dict.fromkeys(attributed, expected), key
    cumulative = _history(run_id, "cumulative_gpu_seconds")
    energy_mj = _history(run_id, "epoch_gpu.DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION")
    assert sorted(cumulative) == attributed
    assert all(s > 0 for s in epoch_s.values())
    assert [cumulative[step] for step in attributed] == sorted(cumulative.values())
    assert cumulative[3] >= sum(epoch_s.values())  # start-up GPU time counts in the cumulative figure too
    for epoch, seconds in epoch_s.items():  # the fake's energy counter integrates 180 W over real time
        assert energy_mj[epoch] / 1000 == pytest.approx(FAKE_POWER_W * seconds, rel=0.25, abs=0.5)
    # an epoch's figures travel in the same batch as its loss: same step, same timestamp
    loss = {m.step: m.timestamp for m in _client().get_metric_history(run_id, "val_loss")}
    util = {m.step: m.timestamp for m in _client().get_metric_history(run_id, "epoch_gpu.DCGM_FI_DEV_GPU_UTIL_mean")}
    assert sorted(util) == attributed
    # the last epoch's may come later, with the time up to the trainer's exit
    assert all(loss[step] == util[step] for step in attributed[:-1])

    metrics = _client().get_run(run_id).data.metrics
    assert metrics["gpu.DCGM_FI_DEV_GPU_UTIL_mean"] == FAKE_UTIL
    assert metrics["gpu.gpuflow_gpu_seconds"] >= cumulative[3]
    assert 0 < metrics["time_to_data_loaded_seconds"] <= metrics["time_to_first_step_seconds"]
    assert 0 < metrics["data_loading_seconds"] <= metrics["time_to_data_loaded_seconds"]

    telemetry = TelemetrySummary.from_dict(done.trained.telemetry)
    assert telemetry.gpu_count == 1 and telemetry.gpu_names == ("NVIDIA H100 80GB HBM3",)
    assert telemetry.util_mean_pct == FAKE_UTIL
    assert telemetry.gpu_seconds == pytest.approx(metrics["gpu.gpuflow_gpu_seconds"])
    document = json.loads(_artifact(run_id, "telemetry/summary.json", tmp_path).read_text())
    assert {"setup", *(f"step {step}" for step in attributed), "finish"} <= set(document["segments"])
    rows = decode_series(_artifact(run_id, "telemetry/series.csv.gz", tmp_path).read_bytes())
    assert rows and {r["gpu_util_pct"] for r in rows} == {"73"}

    table = _flow_run_tables(run_id)["telemetry-train"]
    assert "1 x NVIDIA H100 80GB HBM3" in str(table.data)


def test_without_a_gpu_every_stage_says_so_and_nothing_fails(dataset_uri: str, tmp_path: Path) -> None:
    done = run_stages(dataset_uri, f"cpu-{uuid.uuid4().hex[:6]}", epochs=2)

    for result, run_id, stage in (
        (done.trained, done.trained.run_id, "train"),
        (done.evaluation, done.evaluation.evaluate_run_id, "evaluate"),
    ):
        summary = TelemetrySummary.from_dict(result.telemetry)
        assert summary.gpu_count == 0 and summary.gpu_seconds == 0.0
        assert any(m.startswith("no GPU") for m in summary.missing), summary.missing
        assert summary.duration_s > 0 and summary.samples >= 2
        run = _client().get_run(run_id)
        assert run.info.status == "FINISHED"
        assert "no GPU" in run.data.tags["gpuflow.telemetry.missing"]
        assert run.data.metrics["gpu.gpuflow_gpu_count"] == 0.0
        assert "gpu.DCGM_FI_DEV_GPU_UTIL_mean" not in run.data.metrics  # unknown is left out, not logged as 0
        rows = decode_series(_artifact(run_id, "telemetry/series.csv.gz", tmp_path).read_bytes())
        assert rows and all(r["gpu"] == "" for r in rows)
        table = _flow_run_tables(run_id)[f"telemetry-{stage}"]
        assert "no GPU" in str(table.data)
    assert set(_history(done.trained.run_id, "gpu_seconds").values()) == {0.0}


def test_the_gpus_a_stage_is_tagged_with_are_the_ones_telemetry_measures(fake_nvml: FakeNvml, tmp_path: Path) -> None:
    script = Script(devices=[Device(name="NVIDIA A100-SXM4-80GB"), Device(name="NVIDIA H100 80GB HBM3")])
    second = "GPU-fa4e0001-0000-4000-8000-000000000001"  # the fake's UUID of device 1
    code = (
        "import json; from workloads.gpu import inventory; from workloads.telemetry import GpuSampler\n"
        "s = GpuSampler(1.0).start(); s.stop()\n"
        "print(json.dumps([inventory().as_tags(), list(s.summary().gpu_names)]))"
    )
    env = fake_nvml.env(script.write(tmp_path / "two-gpus.txt"), {"CUDA_VISIBLE_DEVICES": second})
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    tags, measured = json.loads(done.stdout)
    assert measured == ["NVIDIA H100 80GB HBM3"]
    assert tags == {
        "gpuflow.gpu.count": "1",
        "gpuflow.gpu.names": "NVIDIA H100 80GB HBM3",
        "gpuflow.gpu.summary": "1 x NVIDIA H100 80GB HBM3",
    }


# --------------------------------------------------------------------------------------------- early stopping


@pytest.fixture
def trainer_setup(tmp_path: Path, mlflow_db_template: Path) -> dict[str, str]:  # noqa: F811
    uri = write_digits_dataset(tmp_path / "store")
    tracking_uri, _, run_id = sqlite_run(tmp_path, mlflow_db_template, "stop")
    return {
        "dataset_uri": uri,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "MLFLOW_RUN_ID": run_id,
        "GPUFLOW_STORE_URI": str(tmp_path / "store"),
    }


def _trainer(setup: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GPUFLOW_TORCH_THREADS": "1", **{k: v for k, v in setup.items() if k.isupper()}}
    # A learning rate this small leaves val_accuracy where epoch 1 put it: a plateau from epoch 2 on.
    command = [
        sys.executable, "-m", "workloads.trainer", "--dataset-uri", setup["dataset_uri"], "--training-id", "stop-1",
        "--hidden-size", "16", "--learning-rate", "1e-12", "--device", "cpu", *args,
    ]  # fmt: skip
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_plateau_stops_training_and_says_why(trainer_setup: dict[str, str]) -> None:
    done = _trainer(trainer_setup, "--epochs", "20", "--early-stop", "plateau", "--patience", "2")

    assert done.returncode == 0, done.stderr
    assert "stopped early after epoch 3: plateau: val_accuracy has not improved for 2 epochs" in done.stdout
    client = MlflowClient(trainer_setup["MLFLOW_TRACKING_URI"])
    run = client.get_run(trainer_setup["MLFLOW_RUN_ID"])
    assert run.data.tags["gpuflow.stop_reason"].startswith("plateau: val_accuracy has not improved for 2 epochs")
    assert run.data.params["stop_reason"] == run.data.tags["gpuflow.stop_reason"]
    assert run.data.params["epochs_run"] == "3"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")) == [1, 2, 3]
    assert run.data.tags["gpuflow.model_uri"]


def test_a_resumed_training_stops_where_an_uninterrupted_one_would(trainer_setup: dict[str, str]) -> None:
    assert _trainer(trainer_setup, "--epochs", "2").returncode == 0

    # Resumes after epoch 2: with epochs 1-2 replayed, epoch 3 is the second without improvement.
    done = _trainer(trainer_setup, "--epochs", "20", "--early-stop", "plateau", "--patience", "2")

    assert done.returncode == 0, done.stderr
    assert "resuming after epoch 2" in done.stdout
    assert "stopped early after epoch 3: plateau" in done.stdout
    client = MlflowClient(trainer_setup["MLFLOW_TRACKING_URI"])
    run_id = trainer_setup["MLFLOW_RUN_ID"]
    assert client.get_run(run_id).data.tags["gpuflow.stop_reason"].startswith("plateau:")
    cumulative = {m.step: m.value for m in client.get_metric_history(run_id, "cumulative_gpu_seconds")}
    assert sorted(cumulative) == [1, 2, 3]  # every epoch logged once, across both processes
