"""The storage sensor's rules: announce each complete new data file once, never a partial upload."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from blocks.data_store import DataStore
from tasks.core.errors import ConfigurationError
from tasks.data import sensor
from tasks.data.sensor import ObjectInfo, SensorState

NOW = 1_000_000.0


def obj(name: str, size: int = 100, version: str = "v1", age: float = 600.0) -> ObjectInfo:
    return ObjectInfo(uri=f"/in/{name}", name=name, size=size, version=version, mtime=NOW - age)


def run_poll(
    listing: list[ObjectInfo], state: SensorState | None = None, settle: float = 30.0
) -> tuple[sensor.PollResult, SensorState]:
    return sensor.poll(
        listing,
        state or SensorState(),
        settle_seconds=settle,
        dataset_name="digits",
        now=NOW,
        digest=lambda o: f"digest-of-{o.version}",
    )


def announced_uris(result: sensor.PollResult) -> list[str]:
    return [a.uri for a in result.arrivals]


def test_a_settled_csv_or_parquet_file_is_announced_with_its_payload() -> None:
    result, _ = run_poll([obj("a.csv", size=42, version="v7"), obj("b.PARQUET")])
    assert announced_uris(result) == ["/in/a.csv", "/in/b.PARQUET"]
    assert result.arrivals[0].payload() == {
        "data_uri": "/in/a.csv",
        "size": 42,
        "etag_or_mtime": "v7",
        "dataset_name": "digits",
        "dataset_spec": "",
    }


@pytest.mark.parametrize(
    "name", [".a.csv", "~a.csv", "a.csv.tmp", "a.csv.part", "a.csv.crdownload", "a.csv~", "sub/.hidden.csv"]
)
def test_temporary_upload_names_are_ignored(name: str) -> None:
    result, _ = run_poll([obj(name)])
    assert result.arrivals == ()
    assert result.ignored == (f"/in/{name}",)


@pytest.mark.parametrize("name", ["a.json", "a.txt", "a.csv.gz", "README"])
def test_files_that_are_not_csv_or_parquet_are_ignored(name: str) -> None:
    result, _ = run_poll([obj(name)])
    assert result.arrivals == () and result.ignored == (f"/in/{name}",)


def test_an_empty_file_is_ignored() -> None:
    result, _ = run_poll([obj("a.csv", size=0)])
    assert result.arrivals == () and result.ignored == ("/in/a.csv",)


def test_a_file_younger_than_the_settle_time_waits_then_is_announced() -> None:
    result, state = run_poll([obj("a.csv", age=5)], settle=30)
    assert result.arrivals == () and result.waiting == ("/in/a.csv",)
    result, _ = run_poll([obj("a.csv", age=35)], state, settle=30)
    assert announced_uris(result) == ["/in/a.csv"]


def test_a_file_that_grew_since_the_previous_poll_waits_one_more_poll() -> None:
    _, state = run_poll([obj("a.csv", size=10, version="v1", age=0)], settle=0.5)
    result, state = run_poll([obj("a.csv", size=20, version="v2")], state, settle=0.5)
    assert result.arrivals == () and result.waiting == ("/in/a.csv",)
    result, _ = run_poll([obj("a.csv", size=20, version="v2")], state, settle=0.5)
    assert announced_uris(result) == ["/in/a.csv"]


def test_an_announced_version_is_not_announced_again() -> None:
    _, state = run_poll([obj("a.csv")])
    result, _ = run_poll([obj("a.csv")], state)
    assert result.arrivals == () and result.already_seen == ("/in/a.csv",)


def test_a_new_version_of_an_announced_file_is_announced() -> None:
    _, state = run_poll([obj("a.csv", version="v1")])
    result, _ = run_poll([obj("a.csv", version="v2", size=200)], state)
    assert [(a.uri, a.version) for a in result.arrivals] == [("/in/a.csv", "v2")]


def test_the_same_bytes_copied_in_again_are_remembered_but_not_announced() -> None:
    state = SensorState(announced={"/in/a.csv": {"version": "v1", "digest": "one-content"}})
    result, after = sensor.poll(
        [obj("a.csv", version="v2")],
        state,
        settle_seconds=30,
        dataset_name="d",
        now=NOW,
        digest=lambda o: "one-content",
    )
    assert result.arrivals == () and result.same_content == ("/in/a.csv",)
    assert after.announced["/in/a.csv"] == {"version": "v2", "digest": "one-content"}


def test_poll_does_not_change_the_state_it_was_given() -> None:
    state = SensorState()
    run_poll([obj("a.csv")], state)
    assert state.announced == {} and state.last_poll == {}


def test_resource_id_is_a_slug_of_the_prefix() -> None:
    assert (
        sensor.data_resource("s3://Raw-Bucket/incoming/")["prefect.resource.id"]
        == "gpuflow.data.s3-raw-bucket-incoming"
    )


# -- against a real folder -------------------------------------------------------------------------


def test_local_listing_reports_size_mtime_version_and_nested_files(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.csv").write_bytes(b"x,y\n1,2\n")
    listing = sensor.list_objects(str(tmp_path), DataStore(root_uri=str(tmp_path / "store")))
    assert [(o.name, o.size) for o in listing] == [("sub/a.csv", 8)]
    stat = (tmp_path / "sub" / "a.csv").stat()
    assert listing[0].version == f"{stat.st_mtime_ns}-8"
    assert listing[0].mtime == pytest.approx(stat.st_mtime)


def test_a_missing_watched_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="not a folder"):
        sensor.list_objects(str(tmp_path / "nope"), DataStore(root_uri=str(tmp_path)))


def test_state_survives_a_round_trip_through_the_store_and_leaves_no_temp_file(tmp_path: Path) -> None:
    store = DataStore(root_uri=str(tmp_path / "store"))
    assert sensor.load_state(store, "s1") == SensorState()
    state = SensorState(announced={"/in/a.csv": {"version": "v1", "digest": "d"}}, last_poll={"/in/b.csv": [3, "v"]})
    sensor.save_state(store, "s1", state)
    assert sensor.load_state(store, "s1") == state
    assert [p.name for p in (tmp_path / "store" / "sensors").iterdir()] == ["s1.json"]


def test_a_corrupt_state_file_names_the_file_and_the_fix(tmp_path: Path) -> None:
    store = DataStore(root_uri=str(tmp_path))
    (tmp_path / "sensors").mkdir()
    (tmp_path / "sensors" / "s1.json").write_text("{not json")
    with pytest.raises(ConfigurationError, match=r"s1\.json.*delete it"):
        sensor.load_state(store, "s1")


def test_local_digest_is_the_md5_of_the_bytes_so_a_copy_matches(tmp_path: Path) -> None:
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_bytes(b"1,2\n")
    b.write_bytes(b"1,2\n")
    os.utime(b, (time.time() - 100, time.time() - 100))
    listing = sensor.list_objects(str(tmp_path), DataStore(root_uri=str(tmp_path / "store")))
    assert listing[0].version != listing[1].version
    assert [sensor.content_digest(o) for o in listing] == [hashlib.md5(b"1,2\n").hexdigest()] * 2
