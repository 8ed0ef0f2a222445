"""Prepare reading raw data from S3 and publishing the dataset to S3 (moto's server, over HTTP)."""

from __future__ import annotations

import time
from pathlib import Path
from uuid import UUID

import numpy as np
import pytest
from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

from flows.prepare import prepare
from tasks.core import settings
from tasks.core.errors import DataNotFoundError, DataValidationError
from tasks.data.demo import digits_csv_bytes
from tests.conftest import S3Server
from tests.fixtures.flow_env import migrated_home, mlflow_db_template, no_heartbeat_wait  # noqa: F401 (fixtures used by name)
from tests.fixtures.raw_files import csv_bytes, digits_rows, set_field
from tests.fixtures.s3_store import new_bucket, save_store_block
from workloads.dataset import load_manifest, open_split, read_split
from workloads.store import ObjectStore, S3Options

pytestmark = pytest.mark.usefixtures("prefect_api", "no_heartbeat_wait", "migrated_home")

ACCESS_KEY = "AKIAGPUFLOWPREPARE7Q"
SECRET_KEY = "gpuflow-prepare-secret-9f3Kq2xZ"


@pytest.fixture
def bucket(s3_server: S3Server) -> str:
    return new_bucket(s3_server, "prepare")


@pytest.fixture
def s3_store(s3_server: S3Server, bucket: str, gpuflow_home: Path) -> str:
    """A saved DataStore block rooted in the bucket, with credentials only the block knows."""
    return save_store_block(s3_server, bucket, ACCESS_KEY, SECRET_KEY)


def keys(s3_server: S3Server, bucket: str, prefix: str) -> list[str]:
    listing = s3_server.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(obj["Key"] for obj in listing.get("Contents", []))


def logs_of(flow_run_id: UUID, expected: int = 1, timeout: float = 15.0) -> str:
    """Every log line of a flow run and its tasks, once at least ``expected`` lines arrived."""
    deadline = time.monotonic() + timeout
    while True:
        with get_client(sync_client=True) as client:
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        if len(logs) >= expected or time.monotonic() > deadline:
            return "\n".join(log.message for log in logs)
        time.sleep(0.25)


def test_dataset_round_trips_through_s3_and_secrets_stay_secret(
    s3_server: S3Server, bucket: str, s3_store: str
) -> None:
    s3_server.client().put_object(Bucket=bucket, Key="raw/digits.csv", Body=digits_csv_bytes())
    source = f"s3://{bucket}/raw/digits.csv"

    state = prepare(source, data_store=s3_store, return_state=True)
    first = state.result()

    assert not first.cache_hit
    assert first.dataset_uri == f"s3://{bucket}/store/datasets/digits/{first.dataset_version}"
    prefix = f"store/datasets/digits/{first.dataset_version}/"
    assert keys(s3_server, bucket, prefix) == [
        f"{prefix}{name}" for name in ("manifest.json", "test.parquet", "train.parquet", "val.parquet")
    ]
    reader = ObjectStore(
        S3Options(s3_server.endpoint_url, s3_server.region, s3_server.access_key_id, s3_server.secret_access_key)
    )
    manifest = load_manifest(first.dataset_uri, reader)
    assert manifest.source_uri == source
    for split in ("train", "val", "test"):
        x, y = read_split(first.dataset_uri, split, reader, manifest=manifest)
        assert x.shape == (first.rows[split], 64) and len(y) == first.rows[split]
        with open_split(first.dataset_uri, split, reader, manifest=manifest) as groups:  # streamed: the same rows
            assert np.array_equal(np.concatenate([gx for gx, _ in groups]), x)
            assert np.concatenate([gy for _, gy in groups]).tolist() == y.tolist()

    second = prepare(source, data_store=s3_store)
    assert second.cache_hit and second.dataset_version == first.dataset_version

    client = MlflowClient(settings.tracking_uri())
    for run_id in (first.mlflow_run_id, second.mlflow_run_id):
        run = client.get_run(run_id)
        recorded = " ".join([*run.data.params.values(), *run.data.tags.values()])
        assert source in recorded
        assert SECRET_KEY not in recorded and ACCESS_KEY not in recorded
    assert state.state_details.flow_run_id is not None
    logs = logs_of(state.state_details.flow_run_id, expected=5)
    assert "published dataset digits" in logs
    assert SECRET_KEY not in logs and ACCESS_KEY not in logs
    assert SECRET_KEY not in manifest.to_json().decode()


def test_missing_s3_object_is_data_not_found(bucket: str, s3_store: str) -> None:
    with pytest.raises(DataNotFoundError, match=f"no object at s3://{bucket}/raw/nothing.csv"):
        prepare(f"s3://{bucket}/raw/nothing.csv", data_store=s3_store)


def test_bad_file_on_s3_leaves_no_dataset_objects(s3_server: S3Server, bucket: str, s3_store: str) -> None:
    body = csv_bytes(set_field(digits_rows(), 12, "pixel_9", "oops"))
    s3_server.client().put_object(Bucket=bucket, Key="raw/bad.csv", Body=body)
    with pytest.raises(DataValidationError, match=r"column 'pixel_9'.*data row 12"):
        prepare(f"s3://{bucket}/raw/bad.csv", data_store=s3_store)
    assert keys(s3_server, bucket, "store/") == []


def test_demo_data_is_written_into_an_s3_store_only_when_absent(
    s3_server: S3Server, bucket: str, s3_store: str
) -> None:
    first = prepare("demo", data_store=s3_store)
    assert first.source_uri == f"s3://{bucket}/store/raw/digits.csv"
    assert sum(first.rows.values()) == 1797
    assert keys(s3_server, bucket, "store/raw/") == ["store/raw/digits.csv"]
    mine = csv_bytes(digits_rows(300))
    s3_server.client().put_object(Bucket=bucket, Key="store/raw/digits.csv", Body=mine)

    second = prepare("demo", data_store=s3_store)

    assert sum(second.rows.values()) == 300  # the file already there was used, not rewritten
    assert s3_server.client().get_object(Bucket=bucket, Key="store/raw/digits.csv")["Body"].read() == mine
