"""The trainer as a real process: killed mid-run and restarted, it resumes and logs every epoch once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import mlflow.pytorch
import pytest
import torch
from mlflow import MlflowClient

from tests.conftest import ROOT, S3Server
from tests.fixtures.datasets import write_digits_dataset
from tests.fixtures.flow_env import mlflow_db_template, sqlite_run  # noqa: F401
from workloads.dataset import read_split
from workloads.store import ObjectStore, S3Options

EPOCHS = 6
METRICS = ("train_loss", "val_loss", "val_accuracy", "epoch_seconds", "samples_per_second")


@dataclass(frozen=True)
class Setup:
    dataset_uri: str
    store: Path
    tracking_uri: str
    run_id: str
    scratch: Path  # the trainer's TMPDIR: what the killed one leaves stays in the test's folder

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "TMPDIR": str(self.scratch),
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            "MLFLOW_RUN_ID": self.run_id,
            "GPUFLOW_STORE_URI": str(self.store),
            "GPUFLOW_TORCH_THREADS": "1",
        }

    def command(self, *extra: str) -> list[str]:
        return [
            sys.executable, "-m", "workloads.trainer", "--dataset-uri", self.dataset_uri, "--training-id", "resume-1",
            "--device", "cpu", "--seed", "3", *extra,
        ]  # fmt: skip

    def checkpoints(self) -> Path:
        return self.store / "checkpoints" / "resume-1"


@pytest.fixture
def setup(tmp_path: Path, mlflow_db_template: Path) -> Setup:  # noqa: F811
    store = tmp_path / "store"
    uri = write_digits_dataset(store)
    tracking_uri, _, run_id = sqlite_run(tmp_path, mlflow_db_template, "resume")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    return Setup(dataset_uri=uri, store=store, tracking_uri=tracking_uri, run_id=run_id, scratch=scratch)


def history_steps(setup: Setup, key: str) -> list[int]:
    return sorted(m.step for m in MlflowClient(setup.tracking_uri).get_metric_history(setup.run_id, key))


def test_killed_trainer_resumes_from_its_checkpoint_without_repeating_an_epoch(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Wide and small-batched so an epoch takes long enough to kill the trainer inside the next one.
    args = ("--epochs", str(EPOCHS), "--hidden-size", "512", "--batch-size", "8")
    first = subprocess.Popen(
        setup.command(*args), cwd=ROOT, env=setup.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert first.stdout is not None
    seen: list[str] = []
    for line in first.stdout:
        seen.append(line.rstrip())
        if line.startswith(f"epoch 2/{EPOCHS} "):
            first.send_signal(signal.SIGKILL)
            break
    first.wait(timeout=30)
    assert first.returncode == -signal.SIGKILL, seen
    saved = sorted(p.name for p in setup.checkpoints().iterdir() if not p.name.startswith("."))
    done = int(saved[-1][len("epoch-") : -len(".pt")])
    assert 2 <= done < EPOCHS, saved

    second = subprocess.run(
        setup.command(*args), cwd=ROOT, env=setup.env(), capture_output=True, text=True, timeout=120
    )

    assert second.returncode == 0, second.stderr
    assert second.stderr == ""  # a normal run is quiet
    progress = [line for line in second.stdout.splitlines() if line.startswith("epoch ")]
    assert f"resuming after epoch {done}" in second.stdout
    assert [line.split()[1] for line in progress] == [f"{e}/{EPOCHS}" for e in range(done + 1, EPOCHS + 1)]
    for key in METRICS:
        assert history_steps(setup, key) == list(range(1, EPOCHS + 1)), key
    run = MlflowClient(setup.tracking_uri).get_run(setup.run_id)
    assert run.data.tags["gpuflow.resumed_from_epoch"] == str(done)
    kept = sorted(p.name for p in setup.checkpoints().iterdir() if not p.name.startswith("."))
    assert kept == [f"epoch-000{e}.pt" for e in (4, 5, 6)]

    monkeypatch.setenv("MLFLOW_TRACKING_URI", setup.tracking_uri)
    model = mlflow.pytorch.load_model(run.data.tags["gpuflow.model_uri"], dst_path=str(setup.scratch))
    x, y = read_split(setup.dataset_uri, "val")
    with torch.no_grad():
        accuracy = (model(torch.tensor(x)).argmax(dim=1) == torch.tensor(y)).float().mean().item()
    assert accuracy == pytest.approx(run.data.metrics["val_accuracy"])


def test_broken_newest_checkpoint_is_skipped_and_its_epoch_not_logged_twice(setup: Setup) -> None:
    args = ("--epochs", "3", "--hidden-size", "16")
    assert subprocess.run(setup.command(*args), cwd=ROOT, env=setup.env(), capture_output=True).returncode == 0
    newest = setup.checkpoints() / "epoch-0003.pt"
    newest.write_bytes(newest.read_bytes()[:100])

    again = subprocess.run(setup.command(*args), cwd=ROOT, env=setup.env(), capture_output=True, text=True, timeout=120)

    assert again.returncode == 0, again.stderr
    assert "warning: skipping checkpoint" in again.stderr and "epoch-0003.pt" in again.stderr
    assert "resuming after epoch 2" in again.stdout
    assert history_steps(setup, "val_loss") == [1, 2, 3]


def test_checkpoints_from_other_settings_are_refused(setup: Setup) -> None:
    assert (
        subprocess.run(setup.command("--epochs", "1", "--hidden-size", "16"), cwd=ROOT, env=setup.env()).returncode == 0
    )

    other = subprocess.run(
        setup.command("--epochs", "2", "--hidden-size", "32"), cwd=ROOT, env=setup.env(), capture_output=True, text=True
    )

    assert other.returncode == 2
    assert "hidden_size=16 (now 32)" in other.stderr


def test_trainer_reads_and_checkpoints_on_s3(
    tmp_path: Path,
    s3_server: S3Server,
    mlflow_db_template: Path,  # noqa: F811
) -> None:
    s3_server.client().create_bucket(Bucket="trainer-s3")
    options = S3Options(
        endpoint_url=s3_server.endpoint_url,
        region=s3_server.region,
        access_key_id=s3_server.access_key_id,
        secret_access_key=s3_server.secret_access_key,
    )
    store = ObjectStore(options)
    uri = write_digits_dataset("s3://trainer-s3/gpuflow", store=store, limit=600)
    tracking_uri, _, run_id = sqlite_run(tmp_path, mlflow_db_template, "s3")
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "MLFLOW_RUN_ID": run_id,
        "GPUFLOW_STORE_URI": "s3://trainer-s3/gpuflow",
        "GPUFLOW_TORCH_THREADS": "1",
        "AWS_ENDPOINT_URL_S3": s3_server.endpoint_url,
        "AWS_ACCESS_KEY_ID": s3_server.access_key_id,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_access_key,
        "AWS_DEFAULT_REGION": s3_server.region,
    }
    command = [
        sys.executable, "-m", "workloads.trainer", "--dataset-uri", uri, "--training-id", "on-s3",
        "--epochs", "3", "--hidden-size", "16", "--keep-checkpoints", "2",
    ]  # fmt: skip

    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert store.list("s3://trainer-s3/gpuflow/checkpoints/on-s3") == ["epoch-0002.pt", "epoch-0003.pt"]
