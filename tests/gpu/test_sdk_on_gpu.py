"""On a real NVIDIA GPU, an SDK trainer under the launcher: TorchRun on CUDA with deterministic kernels (cuBLAS's
fixed workspace), its checkpoints carrying the CUDA generator, the launcher's checks and telemetry of the real
device, and its exported model served from the GPU.

Runs only where torch sees CUDA and NVML a device; elsewhere every test is skipped with a plain reason.

    GPUFLOW_TEST_REAL_NVML=1 python -m pytest tests/gpu -m gpu -v
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.fixtures.datasets import write_digits_dataset
from tests.fixtures.flow_env import mlflow_db_template  # noqa: F401
from tests.fixtures.sdk_launch import Setup, history, rank_lines
from tests.gpu.availability import REASON
from tests.gpu.serving import answers_from_the_gpu

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(bool(REASON), reason=REASON or "GPU present")]

HPARAMS = {"epochs": 4, "seed": 7, "learning_rate": 0.01, "batch_size": 32}


@pytest.fixture
def setup(tmp_path: Path, mlflow_db_template: Path) -> Setup:  # noqa: F811
    store = tmp_path / "store"
    return Setup(tmp_path, write_digits_dataset(store), store, mlflow_db_template, device="cuda")


def test_an_sdk_trainer_killed_on_cuda_resumes_to_the_same_figures(setup: Setup) -> None:
    straight = setup.new_run("straight")
    result = setup.launch(straight, HPARAMS, training_id="straight", extra_env={"GPUFLOW_TELEMETRY_INTERVAL": "0.1"})
    assert result.returncode == 0, result.stderr
    assert [(line["steps"], line["device"]) for line in rank_lines(result.stdout)] == [([1, 2, 3, 4], "cuda")]
    run = MlflowClient(straight[0]).get_run(straight[1])
    assert run.data.metrics["val_accuracy"] > 0.8, run.data.metrics
    assert run.data.metrics["gpu.gpuflow_gpu_count"] >= 1 and run.data.metrics["gpu.gpuflow_gpu_seconds"] > 0
    assert "no GPU" not in result.stdout
    # the SDK logs an exported (pt2) module from the CPU: the server must still answer from the GPU
    answers_from_the_gpu(straight[0], run.data.tags["gpuflow.model_uri"], setup.dataset_uri, accuracy=0.8)

    interrupted = setup.new_run("interrupted")
    killed = setup.launch(interrupted, HPARAMS, training_id="again", crash_at=2)
    assert killed.returncode == 1, killed.stderr
    resumed = setup.launch(interrupted, HPARAMS, training_id="again")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from the checkpoint of step 2" in resumed.stdout
    # model, optimizer, scheduler, the CPU and CUDA generators and the step all came back, and the kernels are
    # deterministic: the resumed run's figures are the uninterrupted one's, bit for bit
    for key in ("train_loss", "val_accuracy"):
        assert history(interrupted, key) == history(straight, key), key
