"""The launcher on a dataset in S3 (moto's server over HTTP), as a training pod on a cluster sees it: the splits
come down verified into the launch's work folder, which is gone when the launcher ends; a split changed after
publishing is a data error (exit 3) naming the object, and nothing is logged as a model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import ROOT, S3Server
from tests.fixtures.datasets import write_digits_dataset
from tests.fixtures.flow_env import mlflow_db_template, sqlite_run  # noqa: F401
from tests.fixtures.s3_store import new_bucket
from workloads.store import ObjectStore, S3Options, join, split_s3

ENTRY = (sys.executable, "-m", "workloads.launcher.entrypoint", "tests.fixtures.trainers.sdk_trainers:train_torch")


@pytest.fixture
def on_s3(s3_server: S3Server) -> tuple[ObjectStore, str]:
    """A digits dataset published under ``s3://<new bucket>/store``; the store that wrote it and its URI."""
    bucket = new_bucket(s3_server, "launch")
    store = ObjectStore(
        S3Options(s3_server.endpoint_url, s3_server.region, s3_server.access_key_id, s3_server.secret_access_key)
    )
    return store, write_digits_dataset(f"s3://{bucket}/store", store=store)


@dataclass(frozen=True)
class Launched:
    """One launch into a fresh MLflow run: what it printed, its run, and the TMPDIR it was given."""

    result: subprocess.CompletedProcess[str]
    client: MlflowClient
    run_id: str
    tmp: Path

    def tags(self) -> dict[str, str]:
        return self.client.get_run(self.run_id).data.tags

    def left_behind(self) -> list[Path]:
        """gpuflow's work folders still in TMPDIR (torch keeps its own compile cache there)."""
        return list(self.tmp.glob("gpuflow-*"))


def launch(s3_server: S3Server, dataset_uri: str, folder: Path, template: Path) -> Launched:
    """The launcher with the pod's S3 settings (boto3's standard variables, nothing else), into a new run."""
    tracking_uri, _, run_id = sqlite_run(folder, template, folder.name)
    tmp = folder / "tmp"
    tmp.mkdir()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "MLFLOW_RUN_ID": run_id,
        "GPUFLOW_STORE_URI": dataset_uri.split("/datasets/")[0],
        "AWS_ENDPOINT_URL_S3": s3_server.endpoint_url,
        "AWS_ACCESS_KEY_ID": s3_server.access_key_id,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_access_key,
        "AWS_DEFAULT_REGION": s3_server.region,
        "TMPDIR": str(tmp),  # where the launch's work folder goes
        "OMP_NUM_THREADS": "1",
    }
    command = [
        sys.executable, "-m", "workloads.launcher", "--dataset-uri", dataset_uri, "--training-id", "s3-1",
        "--hparams", json.dumps({"epochs": 2}), "--telemetry-interval", "0.1", "--", *ENTRY,
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    return Launched(result, MlflowClient(tracking_uri), run_id, tmp)


def test_an_sdk_trainer_trains_on_a_dataset_in_s3_and_leaves_no_copy(
    s3_server: S3Server,
    on_s3: tuple[ObjectStore, str],
    tmp_path: Path,
    mlflow_db_template: Path,  # noqa: F811
) -> None:
    launched = launch(s3_server, on_s3[1], tmp_path, mlflow_db_template)
    assert launched.result.returncode == 0, launched.result.stderr
    assert sorted(m.step for m in launched.client.get_metric_history(launched.run_id, "val_accuracy")) == [1, 2]
    assert launched.tags()["gpuflow.model_uri"]
    assert not launched.left_behind()  # the downloaded splits went with the work folder


def test_a_split_changed_in_s3_after_publishing_is_a_data_error_naming_the_object(
    s3_server: S3Server,
    on_s3: tuple[ObjectStore, str],
    tmp_path: Path,
    mlflow_db_template: Path,  # noqa: F811
) -> None:
    store, dataset_uri = on_s3
    train = join(dataset_uri, "train.parquet")
    original = store.read_bytes(train)
    bucket, key = split_s3(train)
    s3_server.client().put_object(Bucket=bucket, Key=key, Body=original[: len(original) // 2])
    launched = launch(s3_server, dataset_uri, tmp_path, mlflow_db_template)
    result = launched.result
    assert result.returncode == 3, result.stderr  # permanent: a retry reads the same object
    last = result.stderr.strip().splitlines()[-1]
    assert f"{train} does not match the sha256 its manifest records" in last, result.stderr
    assert "Traceback" not in result.stderr
    assert "gpuflow.model_uri" not in launched.tags()
    assert not launched.left_behind()
