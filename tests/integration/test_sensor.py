"""The storage sensor against real services: S3 over HTTP (moto) and events read back from a Prefect API."""

from __future__ import annotations

import os
import time
from pathlib import Path

from blocks.data_store import DataStore
from flows.sensors import storage_sensor
from tasks.data import sensor
from tasks.tracking import events
from tests.conftest import S3Server
from tests.fixtures.prefect_events import read_events, wait_for_event


def s3_store(s3: S3Server, root: str) -> DataStore:
    from pydantic import SecretStr

    return DataStore(
        root_uri=root,
        s3_endpoint_url=s3.endpoint_url,
        s3_region=s3.region,
        aws_access_key_id=SecretStr(s3.access_key_id),
        aws_secret_access_key=SecretStr(s3.secret_access_key),
    )


def test_s3_listing_reports_etag_size_and_nested_keys_and_state_lives_in_the_bucket(s3_server: S3Server) -> None:
    client = s3_server.client()
    client.create_bucket(Bucket="sensor-raw")
    client.put_object(Bucket="sensor-raw", Key="incoming/day1/a.csv", Body=b"x,y\n1,2\n")
    client.put_object(Bucket="sensor-raw", Key="incoming/b.csv.part", Body=b"x")
    client.put_object(Bucket="sensor-raw", Key="other/c.csv", Body=b"x")
    store = s3_store(s3_server, "s3://sensor-raw/store")

    listing = sensor.list_objects("s3://sensor-raw/incoming", store)
    assert [(o.uri, o.size) for o in listing] == [
        ("s3://sensor-raw/incoming/b.csv.part", 1),
        ("s3://sensor-raw/incoming/day1/a.csv", 8),
    ]
    etag = client.head_object(Bucket="sensor-raw", Key="incoming/day1/a.csv")["ETag"].strip('"')
    assert listing[1].version == etag and sensor.content_digest(listing[1]) == etag

    result, state = sensor.poll(listing, sensor.SensorState(), settle_seconds=0, dataset_name="digits")
    assert [a.uri for a in result.arrivals] == ["s3://sensor-raw/incoming/day1/a.csv"]
    sensor.save_state(store, "s3-test", state)
    assert sensor.load_state(store, "s3-test") == state
    assert client.head_object(Bucket="sensor-raw", Key="store/sensors/s3-test.json")["ContentLength"] > 0


def test_sensor_flow_emits_one_arrival_per_new_file_across_runs(
    prefect_api: None, gpuflow_home: Path, tmp_path: Path
) -> None:
    watched = tmp_path / "drop"
    watched.mkdir()
    (watched / "a.csv").write_bytes(b"x,y\n1,2\n")
    (watched / "b.csv.crdownload").write_bytes(b"x,y\n")
    old = time.time() - 60
    os.utime(watched / "a.csv", (old, old))
    resource_id = sensor.data_resource(str(watched))["prefect.resource.id"]

    first = storage_sensor(prefix_uri=str(watched), sensor_name="flow-test", settle_seconds=10)
    assert [p["data_uri"] for p in first.announced] == [str(watched / "a.csv")]
    assert first.ignored == [str(watched / "b.csv.crdownload")]
    event = wait_for_event(events.DATA_ARRIVED, resource_id=resource_id)
    assert event["payload"] == first.announced[0]

    second = storage_sensor(prefix_uri=str(watched), sensor_name="flow-test", settle_seconds=10)
    assert second.announced == [] and second.already_seen == [str(watched / "a.csv")]
    time.sleep(1)
    assert len(read_events(events.DATA_ARRIVED, resource_id=resource_id)) == 1
    assert (gpuflow_home / "store" / "sensors" / "flow-test.json").is_file()
