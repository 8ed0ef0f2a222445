"""Datasets on an S3 store in bounded memory (moto's server, over HTTP): prepare spools each split to a local file
and uploads it (multipart when large), evaluation downloads the test split once per evaluation.

What is checked is what a user notices: the dataset prepared on S3 is byte for byte the one prepared locally, a
failed ingest leaves nothing in the bucket nor on local disk, and moto's own request log (its recorder, server
side) shows one GET of the test split per evaluation, champion comparison included.
"""

from __future__ import annotations

import json
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import requests

from flows.evaluate import evaluate
from flows.prepare import prepare
from tasks.core import settings
from tasks.core.errors import DataValidationError
from tasks.data.demo import digits_csv_bytes
from tests.conftest import S3Server
from tests.fixtures.datasets import write_digits_dataset
from tests.fixtures.flow_env import migrated_home, mlflow_db_template, no_heartbeat_wait  # noqa: F401 (fixtures used by name)
from tests.fixtures.models import log_training_run, train_digits_model
from tests.fixtures.s3_store import new_bucket, save_store_block
from workloads.dataset import load_manifest, read_split
from workloads.store import ObjectStore, S3Options

pytestmark = pytest.mark.usefixtures("prefect_api", "no_heartbeat_wait", "migrated_home")


@pytest.fixture
def bucket(s3_server: S3Server) -> str:
    return new_bucket(s3_server, "stream")


@pytest.fixture
def s3_store(s3_server: S3Server, bucket: str, gpuflow_home: Path) -> str:
    return save_store_block(s3_server, bucket, s3_server.access_key_id, s3_server.secret_access_key)


@pytest.fixture
def reader(s3_server: S3Server) -> ObjectStore:
    return ObjectStore(
        S3Options(s3_server.endpoint_url, s3_server.region, s3_server.access_key_id, s3_server.secret_access_key)
    )


@pytest.fixture
def temp_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The folder Python's tempfile hands out, so a test can see what gpuflow leaves there."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def keys(s3: S3Server, bucket: str, prefix: str) -> list[str]:
    listing = s3.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(obj["Key"] for obj in listing.get("Contents", []))


def digits_parts(count: int) -> list[bytes]:
    """The demo CSV cut into ``count`` CSV parts, each with the header."""
    header, *lines = digits_csv_bytes().decode().splitlines(keepends=True)
    size = -(-len(lines) // count)
    return [(header + "".join(lines[i : i + size])).encode() for i in range(0, len(lines), size)]


@pytest.mark.parametrize("layout", ["one file", "parts"])
def test_a_dataset_prepared_on_s3_is_the_one_prepared_locally(
    s3_server: S3Server, bucket: str, s3_store: str, reader: ObjectStore, temp_folder: Path, tmp_path: Path, layout: str
) -> None:
    bodies = [digits_csv_bytes()] if layout == "one file" else digits_parts(3)
    local = tmp_path / "raw"
    local.mkdir()
    for i, body in enumerate(bodies):
        s3_server.client().put_object(Bucket=bucket, Key=f"raw/part-{i}.csv", Body=body)
        (local / f"part-{i}.csv").write_bytes(body)
    sources = (
        (f"s3://{bucket}/raw/part-0.csv", str(local / "part-0.csv"))
        if layout == "one file"
        else (f"s3://{bucket}/raw/", str(local / "*.csv"))
    )

    on_s3 = prepare(sources[0], data_store=s3_store)
    on_disk = prepare(sources[1])

    assert on_s3.dataset_version == on_disk.dataset_version
    s3_manifest = load_manifest(on_s3.dataset_uri, reader)
    disk_manifest = load_manifest(on_disk.dataset_uri, ObjectStore())
    assert s3_manifest.splits == disk_manifest.splits  # same files: rows, bytes and sha256
    for split in ("train", "val", "test"):
        x_s3, y_s3 = read_split(on_s3.dataset_uri, split, reader, manifest=s3_manifest)
        x_disk, y_disk = read_split(on_disk.dataset_uri, split, ObjectStore(), manifest=disk_manifest)
        assert np.array_equal(x_s3, x_disk) and np.array_equal(y_s3, y_disk)
    assert list(temp_folder.iterdir()) == []  # the local spool files are gone


def test_a_large_split_file_is_uploaded_in_parts_and_reads_back_whole(
    s3_server: S3Server, bucket: str, reader: ObjectStore, tmp_path: Path
) -> None:
    data = np.random.default_rng(0).bytes(9 << 20)  # above boto3's 8 MB multipart threshold
    (tmp_path / "big.parquet").write_bytes(data)

    reader.upload(tmp_path / "big.parquet", f"s3://{bucket}/store/big.parquet")

    head = s3_server.client().head_object(Bucket=bucket, Key="store/big.parquet")
    assert head["ETag"].strip('"').endswith("-2")  # a multipart upload of two parts
    assert reader.read_bytes(f"s3://{bucket}/store/big.parquet") == data


def test_a_failed_ingest_on_s3_leaves_nothing_in_the_bucket_or_on_disk(
    s3_server: S3Server, bucket: str, s3_store: str, temp_folder: Path
) -> None:
    parts = digits_parts(3)
    lines = parts[-1].decode().splitlines(keepends=True)
    lines[-1] = "oops," + lines[-1].split(",", 1)[1]  # the last row of the last part: splits are half written
    parts[-1] = "".join(lines).encode()
    for i, body in enumerate(parts):
        s3_server.client().put_object(Bucket=bucket, Key=f"raw/part-{i}.csv", Body=body)

    with pytest.raises(DataValidationError, match=r"pixel_0"):
        prepare(f"s3://{bucket}/raw/", data_store=s3_store)

    assert keys(s3_server, bucket, "store/") == []
    assert s3_server.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert list(temp_folder.iterdir()) == []


@pytest.fixture
def recorder(s3_server: S3Server) -> Iterator[str]:
    """moto's server-side request log, recording for the test's duration; yields the recorder's base URL."""
    base = f"{s3_server.endpoint_url}/moto-api/recorder"
    requests.post(f"{base}/reset-recording", timeout=10).raise_for_status()
    requests.post(f"{base}/start-recording", timeout=10).raise_for_status()
    try:
        yield base
    finally:
        requests.post(f"{base}/stop-recording", timeout=10).raise_for_status()
        requests.post(f"{base}/reset-recording", timeout=10).raise_for_status()


def gets_since_reset(recorder: str, key_suffix: str) -> list[str]:
    """The GET requests the server received for objects whose path ends with ``key_suffix``, then a reset."""
    recording = requests.get(f"{recorder}/download-recording", timeout=10)
    recording.raise_for_status()
    entries = [json.loads(line) for line in recording.text.splitlines() if line.strip()]
    requests.post(f"{recorder}/reset-recording", timeout=10).raise_for_status()
    return [e["url"] for e in entries if e["method"] == "GET" and urlparse(e["url"]).path.endswith(key_suffix)]


def test_evaluation_on_s3_downloads_the_test_split_once_even_with_a_champion(
    s3_server: S3Server, bucket: str, s3_store: str, reader: ObjectStore, temp_folder: Path, recorder: str
) -> None:
    s3_uri = write_digits_dataset(f"s3://{bucket}/store", store=reader)
    local_uri = write_digits_dataset(settings.store_uri())  # the same rows, for the test's own training
    assert load_manifest(s3_uri, reader).version == load_manifest(local_uri, ObjectStore()).version
    model_name = f"digits-{uuid.uuid4().hex[:8]}"
    good = log_training_run(settings.tracking_uri(), train_digits_model(local_uri))
    shuffled = log_training_run(settings.tracking_uri(), train_digits_model(local_uri, "shuffled-labels"))
    gets_since_reset(recorder, "")  # training and logging above are not evaluation

    first = evaluate(train_run_id=good, dataset_uri=s3_uri, model_name=model_name, data_store=s3_store)
    first_gets = gets_since_reset(recorder, "/test.parquet")
    second = evaluate(train_run_id=shuffled, dataset_uri=s3_uri, model_name=model_name, data_store=s3_store)
    second_gets = gets_since_reset(recorder, "/test.parquet")

    assert first.promoted and first.champion_version == "1"
    assert second.champion_metrics is not None  # two models scored: challenger and champion
    assert second.champion_metrics["accuracy"] == pytest.approx(first.metrics["accuracy"])
    assert not second.gate.passed
    assert len(first_gets) == 1, first_gets
    assert len(second_gets) == 1, second_gets
    assert [p.name for p in temp_folder.iterdir() if p.name.startswith("gpuflow")] == []  # the local copy is removed
