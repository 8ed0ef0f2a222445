"""The prepare flow on raw data in parts: an S3 prefix (moto's server, over HTTP) and a local glob from the CLI."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flows.prepare import prepare
from tasks.core.errors import DataNotFoundError, DataValidationError
from tasks.data.demo import digits_csv_bytes
from tests.conftest import S3Server
from tests.fixtures.flow_env import migrated_home, mlflow_db_template, no_heartbeat_wait  # noqa: F401 (fixtures used by name)
from tests.fixtures.s3_store import new_bucket, save_store_block
from tests.integration.test_spec_cli import gpuflow
from workloads.dataset import load_manifest, read_split
from workloads.store import ObjectStore, S3Options

pytestmark = pytest.mark.usefixtures("prefect_api", "no_heartbeat_wait", "migrated_home")


@pytest.fixture
def bucket(s3_server: S3Server) -> str:
    return new_bucket(s3_server, "parts")


@pytest.fixture
def s3_store(s3_server: S3Server, bucket: str, gpuflow_home: Path) -> str:
    return save_store_block(s3_server, bucket, "AKIAGPUFLOWPARTS0001", "gpuflow-parts-secret-1")


def digits_frame() -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(digits_csv_bytes()))


def put_parts(s3: S3Server, bucket: str, prefix: str, frame: pd.DataFrame, parts: int, fmt: str = "csv") -> None:
    for i, rows in enumerate(np.array_split(np.arange(len(frame)), parts)):
        piece = frame.iloc[rows]
        if fmt == "csv":
            body = piece.to_csv(index=False).encode()
        else:
            sink = io.BytesIO()
            pq.write_table(pa.Table.from_pandas(piece, preserve_index=False), sink)
            body = sink.getvalue()
        s3.client().put_object(Bucket=bucket, Key=f"{prefix}part-{i:02d}.{fmt}", Body=body)


def keys(s3: S3Server, bucket: str, prefix: str) -> list[str]:
    listing = s3.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(obj["Key"] for obj in listing.get("Contents", []))


def test_an_s3_prefix_of_csv_parts_is_prepared_once_and_then_found(
    s3_server: S3Server, bucket: str, s3_store: str
) -> None:
    put_parts(s3_server, bucket, "raw/digits/", digits_frame(), 4)
    s3_server.client().put_object(Bucket=bucket, Key="raw/digits/", Body=b"")  # a console's folder marker
    source = f"s3://{bucket}/raw/digits/"

    first = prepare(source, data_store=s3_store)

    assert not first.cache_hit and sum(first.rows.values()) == 1797
    reader = ObjectStore(
        S3Options(s3_server.endpoint_url, s3_server.region, s3_server.access_key_id, s3_server.secret_access_key)
    )
    manifest = load_manifest(first.dataset_uri, reader)
    assert manifest.source_uri == source
    assert [p["key"] for p in manifest.extra["parts"]] == [f"part-{i:02d}.csv" for i in range(4)]
    for split in ("train", "val", "test"):
        x, y = read_split(first.dataset_uri, split, reader, manifest=manifest)
        assert x.shape == (first.rows[split], 64) and len(y) == first.rows[split]
    second = prepare(source, data_store=s3_store)
    assert second.cache_hit and second.dataset_version == first.dataset_version


def test_an_s3_key_pattern_selects_parquet_parts(s3_server: S3Server, bucket: str, s3_store: str) -> None:
    put_parts(s3_server, bucket, "raw/", digits_frame(), 3, "parquet")
    s3_server.client().put_object(Bucket=bucket, Key="raw/README.txt", Body=b"not data")
    result = prepare(f"s3://{bucket}/raw/*.parquet", data_store=s3_store)
    assert sum(result.rows.values()) == 1797


def test_an_empty_s3_prefix_is_an_error_and_publishes_nothing(s3_server: S3Server, bucket: str, s3_store: str) -> None:
    with pytest.raises(DataNotFoundError, match=f"no object is under the prefix s3://{bucket}/raw/none/"):
        prepare(f"s3://{bucket}/raw/none/", data_store=s3_store)
    assert keys(s3_server, bucket, "store/") == []


def test_s3_parts_with_different_columns_publish_nothing(s3_server: S3Server, bucket: str, s3_store: str) -> None:
    frame = digits_frame()
    put_parts(s3_server, bucket, "raw/", frame, 2)
    renamed = frame.iloc[:50].rename(columns={"label": "digit"}).to_csv(index=False).encode()
    s3_server.client().put_object(Bucket=bucket, Key="raw/part-02.csv", Body=renamed)
    with pytest.raises(DataValidationError, match=r"part 'part-02\.csv' lacks 'label' and adds 'digit'"):
        prepare(f"s3://{bucket}/raw/", data_store=s3_store)
    assert keys(s3_server, bucket, "store/") == []


def test_the_cli_refuses_an_empty_glob_and_checks_parts(tmp_path: Path) -> None:
    refused = gpuflow("run", "--data", str(tmp_path / "raw" / "*.csv"), cwd=tmp_path)
    assert refused.returncode != 0
    assert f"no file matches the pattern {tmp_path}/raw/*.csv" in refused.stderr
    assert "Traceback" not in refused.stderr
    folder = tmp_path / "raw"
    folder.mkdir()
    frame = digits_frame()
    for i, rows in enumerate(np.array_split(np.arange(len(frame)), 3)):
        frame.iloc[rows].to_csv(folder / f"part-{i}.csv", index=False)
    spec = tmp_path / "digits.yaml"
    spec.write_text(
        "columns: [{name: image, type: tensor, shape: [1, 8, 8], prefix: pixel_, min: 0, max: 16}]\n"
        "target: {name: label, type: class, classes: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]}\n"
    )
    checked = gpuflow("spec", "check", str(spec), str(folder / "*.csv"), cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert "matches the spec" in checked.stdout
