"""The storage sensor's logic: which objects under a prefix are new, complete data, and what it has already seen.

A Prefect schedule polls; this module decides. An object is announced (``gpuflow.data.arrived``) once per
version (S3 ETag, or mtime + size locally) and only when it looks complete: a data suffix (.csv, .parquet),
not a temporary name, not empty, not younger than the settle time and unchanged since the previous poll.
What the sensor has announced lives in the data store (``<store>/sensors/<sensor>.json``, written atomically),
so a sensor run on another worker, or after a restart, does not announce the same file twice.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from blocks.data_store import DataStore
from tasks.core.errors import ConfigurationError
from tasks.tracking import events
from workloads.store import ObjectNotFound, ObjectStore, StoreError, is_s3, join, local_path, split_s3

DATA_SUFFIXES = (".csv", ".parquet")
TEMP_SUFFIXES = (".tmp", ".part", ".crdownload", ".partial", ".swp", "~")
TEMP_PREFIXES = (".", "~")
STATE_VERSION = 1


@dataclass(frozen=True)
class ObjectInfo:
    """One object under the watched prefix as the store lists it."""

    uri: str
    name: str
    size: int
    version: str = field(metadata={"doc": "S3 ETag, or '<mtime_ns>-<size>' for a local file."})
    mtime: float = field(metadata={"doc": "Last modification, seconds since the epoch."})


@dataclass(frozen=True)
class Arrival:
    """A complete, new object version the sensor announces."""

    uri: str
    size: int
    version: str
    dataset_name: str
    dataset_spec: str = ""

    def payload(self) -> dict[str, Any]:
        """The ``gpuflow.data.arrived`` payload: what the prepare trigger passes on."""
        return {
            "data_uri": self.uri,
            "size": self.size,
            "etag_or_mtime": self.version,
            "dataset_name": self.dataset_name,
            "dataset_spec": self.dataset_spec,
        }


@dataclass
class SensorState:
    """What the sensor announced (uri -> {version, digest}) and what it saw last poll (uri -> [size, version])."""

    announced: dict[str, dict[str, str]] = field(default_factory=dict)
    last_poll: dict[str, list[Any]] = field(default_factory=dict)

    def to_json(self) -> bytes:
        body = {"version": STATE_VERSION, "announced": self.announced, "last_poll": self.last_poll}
        return json.dumps(body, indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> SensorState:
        try:
            body = json.loads(data)
            announced = {
                uri: {"version": str(v["version"]), "digest": str(v["digest"])} for uri, v in body["announced"].items()
            }
            return cls(announced=announced, last_poll={k: list(v) for k, v in body["last_poll"].items()})
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigurationError(
                f"sensor state {where} is not a gpuflow sensor state ({exc}); expected JSON with 'announced' and "
                "'last_poll': delete it to start over (every present file is then announced again)"
            ) from exc


@dataclass(frozen=True)
class PollResult:
    """One poll's outcome, for logs and tests."""

    arrivals: tuple[Arrival, ...]
    waiting: tuple[str, ...]
    ignored: tuple[str, ...]
    already_seen: tuple[str, ...]
    same_content: tuple[str, ...] = ()


# -- naming rules ------------------------------------------------------------------------------------


def is_temporary(name: str) -> bool:
    """Names uploaders and editors use while a file is being written: .x, ~x, x.tmp, x.part, x.crdownload, x~."""
    base = PurePosixPath(name).name
    lower = base.lower()
    return base.startswith(TEMP_PREFIXES) or lower.endswith(TEMP_SUFFIXES)


def is_data_file(name: str) -> bool:
    """Only CSV and Parquet are raw data prepare can read."""
    return PurePosixPath(name).name.lower().endswith(DATA_SUFFIXES) and not is_temporary(name)


def slug(text: str) -> str:
    """A resource-id-safe form of a prefix: lower case, runs of other characters become one dash."""
    out = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return out or "root"


def data_resource(prefix_uri: str) -> dict[str, str]:
    """``gpuflow.data.<prefix slug>``: one resource per watched prefix, so triggers can pick a prefix."""
    return {"prefect.resource.id": f"gpuflow.data.{slug(prefix_uri)}", "prefect.resource.name": prefix_uri}


def state_uri(store: DataStore, sensor_name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", sensor_name):
        raise ConfigurationError(f"sensor name {sensor_name!r} must be letters, digits, '.', '_' or '-'")
    return join(store.root, "sensors", f"{sensor_name}.json")


# -- listing -----------------------------------------------------------------------------------------


def list_objects(prefix_uri: str, store: DataStore) -> list[ObjectInfo]:
    """Every object under the prefix (recursively) with size, version and mtime, sorted by URI."""
    if is_s3(prefix_uri):
        return _list_s3(prefix_uri, store.object_store())
    root = local_path(prefix_uri)
    if not root.is_dir():
        raise ConfigurationError(f"watched prefix {prefix_uri!r} is not a folder; expected an existing folder or s3://")
    found: list[ObjectInfo] = []
    for path in sorted(root.rglob("*")):
        try:
            stat = path.stat()
        except FileNotFoundError:  # removed or renamed while listing (an uploader's temp file)
            continue
        if not path.is_file():
            continue
        found.append(
            ObjectInfo(
                uri=str(path),
                name=str(path.relative_to(root)),
                size=stat.st_size,
                version=f"{stat.st_mtime_ns}-{stat.st_size}",
                mtime=stat.st_mtime,
            )
        )
    return found


def _list_s3(prefix_uri: str, objects: ObjectStore) -> list[ObjectInfo]:
    bucket, key = split_s3(prefix_uri.rstrip("/") + "/")
    found: list[ObjectInfo] = []
    try:
        for page in objects.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
            for obj in page.get("Contents", []):
                found.append(
                    ObjectInfo(
                        uri=f"s3://{bucket}/{obj['Key']}",
                        name=obj["Key"][len(key) :],
                        size=int(obj["Size"]),
                        version=str(obj["ETag"]).strip('"'),
                        mtime=obj["LastModified"].timestamp(),
                    )
                )
    except Exception as exc:
        raise StoreError(f"could not list {prefix_uri}: {exc}") from exc
    return sorted(found, key=lambda o: o.uri)


# -- state -------------------------------------------------------------------------------------------


def load_state(store: DataStore, sensor_name: str) -> SensorState:
    uri = state_uri(store, sensor_name)
    try:
        return SensorState.from_json(store.object_store().read_bytes(uri), uri)
    except ObjectNotFound:
        return SensorState()


def save_state(store: DataStore, sensor_name: str, state: SensorState) -> None:
    """Atomic: a temp file renamed over the old one locally, one PUT on S3."""
    store.object_store().write_bytes(state_uri(store, sensor_name), state.to_json())


# -- the decision ------------------------------------------------------------------------------------


def content_digest(obj: ObjectInfo) -> str:
    """S3: the ETag; local: the MD5 of the bytes (what a single-part S3 ETag is), read only for ready files."""
    if is_s3(obj.uri):
        return obj.version
    digest = hashlib.md5(usedforsecurity=False)
    with open(obj.uri, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def poll(
    listing: Iterable[ObjectInfo],
    state: SensorState,
    *,
    settle_seconds: float,
    dataset_name: str,
    dataset_spec: str = "",
    now: float | None = None,
    digest: Callable[[ObjectInfo], str] = content_digest,
) -> tuple[PollResult, SensorState]:
    """Decide what to announce; returns the result and the state to save (the input is not changed).

    A data file is announced when its version differs from the announced one, it is not empty, its mtime is
    at least ``settle_seconds`` old, and the previous poll saw it with the same size and version (or did not
    see it at all). A file that changed since the previous poll is still being written: it waits a poll.
    A ready file whose content equals what was announced for it (the same file copied in again: new mtime,
    same bytes) is remembered but not announced, so it starts no second pipeline run.
    """
    clock = time.time() if now is None else now
    announced = {uri: dict(entry) for uri, entry in state.announced.items()}
    same_content: list[str] = []
    last_poll: dict[str, list[Any]] = {}
    arrivals: list[Arrival] = []
    waiting: list[str] = []
    ignored: list[str] = []
    seen: list[str] = []
    for obj in listing:
        if not is_data_file(obj.name) or obj.size == 0:
            ignored.append(obj.uri)
            continue
        if announced.get(obj.uri, {}).get("version") == obj.version:
            seen.append(obj.uri)
            continue
        last_poll[obj.uri] = [obj.size, obj.version]
        previous = state.last_poll.get(obj.uri)
        changed_since_last_poll = previous is not None and previous != [obj.size, obj.version]
        if changed_since_last_poll or clock - obj.mtime < settle_seconds:
            waiting.append(obj.uri)
            continue
        del last_poll[obj.uri]
        content = digest(obj)
        if announced.get(obj.uri, {}).get("digest") == content:
            same_content.append(obj.uri)
        else:
            arrivals.append(
                Arrival(obj.uri, obj.size, obj.version, dataset_name=dataset_name, dataset_spec=dataset_spec)
            )
        announced[obj.uri] = {"version": obj.version, "digest": content}
    result = PollResult(tuple(arrivals), tuple(waiting), tuple(ignored), tuple(seen), tuple(same_content))
    return result, SensorState(announced=announced, last_poll=last_poll)


def announce(prefix_uri: str, arrival: Arrival) -> None:
    """Emit ``gpuflow.data.arrived`` for one object version; the prepare deployment's trigger listens."""
    events.emit(events.DATA_ARRIVED, data_resource(prefix_uri), arrival.payload())
