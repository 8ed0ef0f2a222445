"""One way to read and write objects by URI: local paths, ``file://`` and ``s3://``.

Workloads (trainer, server) and Prefect tasks share it, so a dataset written by ``prepare`` is read the
same way by a trainer in a pod. S3 goes through boto3; endpoint, region and credentials come from
explicit arguments or boto3's own environment variables (``AWS_ENDPOINT_URL_S3``, ``AWS_ACCESS_KEY_ID``,
...), so MinIO and other S3-compatible stores work. No Prefect import: this runs inside workload images.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


class StoreError(Exception):
    """An object could not be read or written; the message names the URI."""


class ObjectNotFound(StoreError):
    """No object at the URI."""


@dataclass(frozen=True)
class S3Options:
    """How to reach an S3-compatible endpoint; ``None`` fields fall back to boto3's own lookup."""

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None

    def __repr__(self) -> str:  # never show credentials
        return f"S3Options(endpoint_url={self.endpoint_url!r}, region={self.region!r})"


def join(uri: str, *parts: str) -> str:
    """Join path segments onto a URI or path with single slashes."""
    out = uri.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def local_path(uri: str) -> Path:
    """The filesystem path behind a plain path or ``file://`` URI."""
    if uri.startswith("file://"):
        parsed = urlparse(uri)
        return Path(unquote(parsed.path))
    if "://" in uri:
        raise StoreError(f"unsupported URI scheme in {uri!r}: expected a path, file:// or s3://")
    return Path(uri)


def split_s3(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if not parsed.netloc:
        raise StoreError(f"S3 URI {uri!r} has no bucket: expected s3://bucket/key")
    return parsed.netloc, parsed.path.lstrip("/")


class ObjectStore:
    """Reads and writes whole objects; writes are atomic (temp file + rename locally, one PUT or one multipart
    upload on S3)."""

    def __init__(self, s3: S3Options | None = None) -> None:
        self._s3_options = s3 or S3Options()
        self._client: S3Client | None = None

    @property
    def s3(self) -> S3Client:
        if self._client is None:
            import boto3
            from botocore.config import Config

            opts = self._s3_options
            kwargs: dict[str, Any] = {
                "config": Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=10),
            }
            if opts.endpoint_url:
                kwargs["endpoint_url"] = opts.endpoint_url
            if opts.region:
                kwargs["region_name"] = opts.region
            if opts.access_key_id and opts.secret_access_key:
                kwargs["aws_access_key_id"] = opts.access_key_id
                kwargs["aws_secret_access_key"] = opts.secret_access_key
            self._client = boto3.client("s3", **kwargs)
        return self._client

    def read_bytes(self, uri: str) -> bytes:
        if is_s3(uri):
            bucket, key = split_s3(uri)
            try:
                response = self.s3.get_object(Bucket=bucket, Key=key)
            except self.s3.exceptions.NoSuchKey as exc:
                raise ObjectNotFound(f"no object at {uri}") from exc
            except Exception as exc:
                if _is_not_found(exc):
                    raise ObjectNotFound(f"no object at {uri}") from exc
                raise StoreError(f"could not read {uri}: {exc}") from exc
            return response["Body"].read()
        path = local_path(uri)
        if not path.is_file():
            raise ObjectNotFound(f"no file at {path}")
        return path.read_bytes()

    def download(self, uri: str, path: Path) -> None:
        """Copy an object to a local file in chunks (a large split is never whole in memory)."""
        if not is_s3(uri):
            source = local_path(uri)
            if not source.is_file():
                raise ObjectNotFound(f"no file at {source}")
            import shutil

            shutil.copyfile(source, path)
            return
        bucket, key = split_s3(uri)
        try:
            self.s3.download_file(bucket, key, str(path))
        except Exception as exc:
            if _is_not_found(exc):
                raise ObjectNotFound(f"no object at {uri}") from exc
            raise StoreError(f"could not read {uri}: {exc}") from exc

    def upload(self, path: Path, uri: str) -> None:
        """Copy a local file to ``uri`` without holding it in memory: on S3 boto3's managed transfer (a multipart
        upload in 8 MB parts for a large file, aborted by boto3 if it fails, so no half-written object appears);
        locally a temp file renamed into place."""
        if is_s3(uri):
            bucket, key = split_s3(uri)
            try:
                self.s3.upload_file(str(path), bucket, key)
            except Exception as exc:
                raise StoreError(f"could not write {uri}: {exc}") from exc
            return
        with path.open("rb") as source:
            _write_local_atomically(local_path(uri), lambda handle: shutil.copyfileobj(source, handle))

    def write_bytes(self, uri: str, data: bytes) -> None:
        if is_s3(uri):
            bucket, key = split_s3(uri)
            try:
                self.s3.put_object(Bucket=bucket, Key=key, Body=data)
            except Exception as exc:
                raise StoreError(f"could not write {uri}: {exc}") from exc
            return
        _write_local_atomically(local_path(uri), lambda handle: handle.write(data))

    def exists(self, uri: str) -> bool:
        if is_s3(uri):
            bucket, key = split_s3(uri)
            try:
                self.s3.head_object(Bucket=bucket, Key=key)
            except Exception as exc:
                if _is_not_found(exc):
                    return False
                raise StoreError(f"could not check {uri}: {exc}") from exc
            return True
        return local_path(uri).is_file()

    def list(self, prefix_uri: str) -> list[str]:
        """Names (not URIs) of the objects directly under a prefix, sorted; temp files excluded."""
        if is_s3(prefix_uri):
            bucket, key = split_s3(prefix_uri.rstrip("/") + "/")
            names: list[str] = []
            paginator = self.s3.get_paginator("list_objects_v2")
            try:
                for page in paginator.paginate(Bucket=bucket, Prefix=key, Delimiter="/"):
                    names.extend(obj["Key"][len(key) :] for obj in page.get("Contents", []))
            except Exception as exc:
                if _is_not_found(exc):
                    return []
                raise StoreError(f"could not list {prefix_uri}: {exc}") from exc
            return sorted(names)
        path = local_path(prefix_uri)
        if not path.is_dir():
            return []
        return sorted(p.name for p in path.iterdir() if p.is_file() and not p.name.startswith("."))

    def delete_prefix(self, prefix_uri: str) -> None:
        """Remove every object under a prefix (used to clean up a half-written dataset)."""
        if is_s3(prefix_uri):
            bucket, key = split_s3(prefix_uri.rstrip("/") + "/")
            paginator = self.s3.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=bucket, Prefix=key):
                objects = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
                if objects:
                    self.s3.delete_objects(Bucket=bucket, Delete={"Objects": objects})  # type: ignore[typeddict-item]
            return
        import shutil

        shutil.rmtree(local_path(prefix_uri), ignore_errors=True)

    def staging_uri(self, final_uri: str) -> str:
        """Where to write a folder that is published by :meth:`publish_folder`.

        Locally a hidden sibling folder that is renamed into place in one step; on S3 (no rename)
        the final prefix itself, where readers only trust the folder once its manifest exists.
        """
        if is_s3(final_uri):
            return final_uri
        final = local_path(final_uri)
        return str(final.parent / f".staging-{final.name}-{uuid.uuid4().hex[:8]}")

    def publish_folder(self, staging: str, final_uri: str) -> None:
        """Make a fully written staging folder visible at ``final_uri`` atomically (local) or as-is (S3)."""
        if is_s3(final_uri):
            return
        final = local_path(final_uri)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, final)


def _is_not_found(exc: Exception) -> bool:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return False
    code = str(response.get("Error", {}).get("Code", ""))
    return code in {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}


def store_from_env() -> ObjectStore:
    """The store a workload uses: boto3 reads endpoint, region and credentials from the environment."""
    return ObjectStore(
        S3Options(endpoint_url=os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"))
    )


def _write_local_atomically(target: Path, fill: Callable[[IO[bytes]], object]) -> None:
    """Write ``target`` through a temp file beside it, synced and renamed into place: readers see all or nothing."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            fill(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
