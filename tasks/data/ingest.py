"""Fetch raw data (path, file:// or s3://) and hash it; refuse a bad local file early (:func:`quick_check`).
Several parts (a glob, an S3 prefix) are :mod:`tasks.data.parts`.

The content hash is computed while the bytes stream past (an S3 object is spooled to a temp file on the
way), so the version is known before anything is parsed and a cache hit costs one read. Parsing is
:mod:`tasks.data.schema_reader` (by a schema) or :mod:`tasks.data.spec_reader` (by a dataset spec).
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.core.errors import ConfigurationError, DataNotFoundError, ServiceUnavailable
from tasks.data.raw_file import ColumnSet, Format, RawFile, check_columns, csv_header, empty_file_error
from workloads.store import ObjectStore, StoreError, is_s3, local_path, split_s3

_CHUNK = 8 * 1024 * 1024
_PARQUET_MAGIC = b"PAR1"
DATA_SUFFIXES = (".csv", ".parquet", ".pq")  # the raw data formats prepare reads, by extension


def normalize_uri(uri: str) -> str:
    """``s3://`` and ``file://`` as given; a plain path made absolute so the manifest says where it was."""
    uri = uri.strip()
    if not uri:
        raise ConfigurationError("data_uri is empty: expected a path, file:// or s3://bucket/key")
    if is_s3(uri) or uri.startswith("file://"):
        return uri
    if "://" in uri:
        raise ConfigurationError(f"unsupported URI scheme in {uri!r}: expected a path, file:// or s3://bucket/key")
    return str(Path(uri).expanduser().resolve())


@contextmanager
def open_raw(uri: str, store: ObjectStore) -> Iterator[RawFile]:
    """The raw file behind ``uri``, hashed; an S3 object lives in a temp file until the block exits."""
    uri = normalize_uri(uri)
    if not is_s3(uri):
        path = _local_file(uri)
        try:
            with path.open("rb") as handle:
                digest = hashlib.file_digest(handle, "sha256").hexdigest()
        except OSError as exc:
            raise DataNotFoundError(f"raw data {path} cannot be read: {exc.strerror}") from exc
        yield RawFile(uri=uri, path=path, sha256=digest, size=path.stat().st_size, format=detect_format(uri, path))
        return
    with tempfile.TemporaryDirectory(prefix="gpuflow-raw-") as tmp:
        path = Path(tmp) / (uri.rsplit("/", 1)[-1] or "raw")
        digest, size = _spool_s3(uri, store, path)
        yield RawFile(uri=uri, path=path, sha256=digest, size=size, format=detect_format(uri, path))


def _local_file(uri: str) -> Path:
    path = local_path(uri)
    if not path.exists():
        raise DataNotFoundError(f"raw data not found: no file at {path}")
    if not path.is_file():
        raise DataNotFoundError(f"raw data {path} is a directory; expected a CSV or Parquet file")
    return path


def quick_check(uri: str, schema: ColumnSet) -> None:
    """The checks a local raw file allows without reading it: it exists, is not empty, its columns fit.

    ``gpuflow run`` calls this before any server boots, so a bad ``--data`` is refused in a moment with the
    same message the prepare flow would give; prepare still runs every check. An ``s3://`` object is left
    to prepare (reaching it needs the data store block's credentials).
    """
    uri = normalize_uri(uri)
    if is_s3(uri):
        return
    path = _local_file(uri)
    raw = RawFile(uri=uri, path=path, sha256="", size=path.stat().st_size, format=detect_format(uri, path))
    if raw.size == 0:
        raise empty_file_error(raw)
    if raw.format == "csv":
        check_columns(csv_header(raw), schema, raw.uri)
        return
    try:
        names = list(pq.read_schema(raw.path).names)
    except (pa.ArrowException, OSError):
        return  # unreadable: prepare says exactly how
    check_columns(names, schema, raw.uri)


def _spool_s3(uri: str, store: ObjectStore, dest: Path) -> tuple[str, int]:
    """Stream an S3 object to ``dest`` while hashing it; S3 errors become gpuflow's errors (no secrets)."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    try:
        bucket, key = split_s3(uri)
    except StoreError as exc:
        raise ConfigurationError(str(exc)) from exc
    if not key or key.endswith("/"):
        raise DataNotFoundError(f"raw data URI {uri} names a prefix, not an object: expected s3://bucket/key")
    hasher = hashlib.sha256()
    size = 0
    try:
        body = store.s3.get_object(Bucket=bucket, Key=key)["Body"]
        with dest.open("wb") as out:
            for chunk in body.iter_chunks(_CHUNK):
                hasher.update(chunk)
                out.write(chunk)
                size += len(chunk)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in {"NoSuchKey", "404", "NotFound"}:
            raise DataNotFoundError(f"raw data not found: no object at {uri}") from exc
        if code == "NoSuchBucket":
            raise DataNotFoundError(f"raw data not found: bucket {bucket!r} does not exist ({uri})") from exc
        if code in {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"}:
            raise ConfigurationError(
                f"S3 refused access to {uri} ({code}): check the data store block's credentials"
            ) from exc
        if status >= 500:
            raise ServiceUnavailable(f"S3 failed to serve {uri}: {code or status}") from exc
        raise ConfigurationError(f"S3 rejected the request for {uri}: {code or status}") from exc
    except NoCredentialsError as exc:
        raise ConfigurationError(f"no S3 credentials to read {uri}: set them on the data store block") from exc
    except BotoCoreError as exc:
        raise ServiceUnavailable(f"S3 unreachable while reading {uri}: {type(exc).__name__}") from exc
    return hasher.hexdigest(), size


def detect_format(uri: str, path: Path) -> Format:
    """By extension (.csv, .parquet/.pq); otherwise by Parquet's magic bytes."""
    name = uri.lower().rsplit("/", 1)[-1]
    if name.endswith(DATA_SUFFIXES):
        return "csv" if name.endswith(".csv") else "parquet"
    with path.open("rb") as handle:
        return "parquet" if handle.read(4) == _PARQUET_MAGIC else "csv"
