"""On a real NVIDIA GPU, gpuflow itself: the trainer on CUDA (with torchrun over two GPUs where there are two), the
telemetry it records of the real device, and the model server answering from the GPU.

This is the check to run where a GPU is lent; elsewhere every test is skipped with a plain reason.

    GPUFLOW_TEST_REAL_NVML=1 python -m pytest tests/gpu -m gpu -v -s
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from tests.conftest import ROOT
from tests.fixtures.datasets import write_digits_dataset
from tests.fixtures.flow_env import mlflow_db_template, sqlite_run  # noqa: F401
from tests.gpu.availability import REASON
from tests.gpu.serving import answers_from_the_gpu
from workloads.tags import TAG_MODEL_URI

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(bool(REASON), reason=REASON or "GPU present")]

# Wide enough that the GPU does real work per step; 40 epochs of digits take seconds on any data-centre GPU.
TRAIN = ("--epochs", "40", "--hidden-size", "2048", "--batch-size", "64", "--seed", "42", "--telemetry-interval", "0.2")
# What the telemetry of a real device must show (docs/telemetry.md): busy SMs, memory of this process, power, energy.
REAL_DEVICE = (
    "gpu.DCGM_FI_DEV_GPU_UTIL_mean",
    "gpu.DCGM_FI_DEV_FB_USED_peak",
    "gpu.gpuflow_process_fb_used_peak",
    "gpu.DCGM_FI_DEV_POWER_USAGE_mean",
    "gpu.DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
    "gpu.gpuflow_gpu_seconds",
)


@dataclass(frozen=True)
class Trained:
    """One trainer run: where it logged, what it printed."""

    tracking_uri: str
    run_id: str
    dataset_uri: str
    result: subprocess.CompletedProcess[str]

    @property
    def metrics(self) -> dict[str, float]:
        return MlflowClient(self.tracking_uri).get_run(self.run_id).data.metrics

    @property
    def model_uri(self) -> str:
        return MlflowClient(self.tracking_uri).get_run(self.run_id).data.tags[TAG_MODEL_URI]


def train(folder: Path, template: Path, launcher: Sequence[str] = ()) -> Trained:
    """``python -m [launcher -m] workloads.trainer --device cuda`` on the digits, into a fresh MLflow run."""
    store = folder / "store"
    dataset_uri = write_digits_dataset(store)
    tracking_uri, _, run_id = sqlite_run(folder, template, "gpu")
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_RUN_ID": run_id, "GPUFLOW_STORE_URI": str(store)}
    head = [sys.executable, "-m", *launcher, *(("-m",) if launcher else ()), "workloads.trainer"]
    command = [*head, "--dataset-uri", dataset_uri, "--training-id", folder.name, "--device", "cuda", *TRAIN]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    print(result.stdout[-2000:])
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return Trained(tracking_uri, run_id, dataset_uri, result)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, mlflow_db_template: Path) -> Trained:  # noqa: F811
    return train(tmp_path_factory.mktemp("cuda-1"), mlflow_db_template)


def test_the_trainer_learns_on_cuda_and_records_the_real_device(trained: Trained) -> None:
    metrics = trained.metrics
    assert metrics["val_accuracy"] > 0.9, metrics
    missing = {key: metrics.get(key) for key in REAL_DEVICE if not metrics.get(key, 0) > 0}
    assert not missing, f"telemetry of a real GPU must be non-zero, got {missing}"
    assert metrics["gpu.gpuflow_gpu_count"] >= 1
    assert "telemetry:" in trained.result.stdout and "no GPU" not in trained.result.stdout


def test_the_server_answers_from_the_gpu_like_the_trained_model(trained: Trained) -> None:
    answers_from_the_gpu(trained.tracking_uri, trained.model_uri, trained.dataset_uri, accuracy=0.9)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="torchrun over two GPUs needs two visible GPUs")
def test_torchrun_over_two_gpus_trains_one_model(
    tmp_path: Path,
    mlflow_db_template: Path,  # noqa: F811
) -> None:
    launcher = ("workloads.trainer.launch", "--standalone", "--nnodes=1", "--nproc-per-node=2")
    two = train(tmp_path, mlflow_db_template, launcher)
    metrics = two.metrics
    assert metrics["val_accuracy"] > 0.9, metrics
    assert metrics["all_ranks_gpu_seconds"] > 0 and metrics["gpu.gpuflow_gpu_seconds"] > 0, metrics
