"""Raw data given as many parts: a glob of local files (``data/*.csv``) or an S3 prefix (``s3://bucket/raw/``,
or a pattern such as ``s3://bucket/raw/*.parquet``).

Every part is hashed (an S3 part is spooled to a temp file on the way, so memory stays flat), all parts must have
the same format and the same columns, and the content hash of the whole input is the sha256 of the sorted
``(key, sha256)`` pairs. A pattern or prefix that finds one part is read exactly like that one file (same
version); an empty one is an error naming the pattern.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.core.errors import ConfigurationError, DataNotFoundError, DataValidationError
from tasks.data.ingest import _spool_s3, detect_format, normalize_uri, open_raw, quick_check
from tasks.data.raw_file import ColumnSet, Format, RawFile, csv_header, empty_file_error
from workloads.store import ObjectStore, StoreError, is_s3, local_path, split_s3

_MAGIC = "*?["


@dataclass(frozen=True)
class Parts:
    """The raw input as parts sorted by key, each a hashed local file, and what the dataset version needs."""

    uri: str
    keys: tuple[str, ...]
    files: tuple[RawFile, ...]

    @property
    def single(self) -> bool:
        return len(self.files) == 1

    @property
    def content_sha256(self) -> str:
        """One file: its own sha256 (today's version). Several: sha256 of the sorted (key, sha256) pairs."""
        if self.single:
            return self.files[0].sha256
        pairs = [[key, raw.sha256] for key, raw in zip(self.keys, self.files, strict=True)]
        return hashlib.sha256(json.dumps(pairs, separators=(",", ":")).encode()).hexdigest()

    @property
    def size(self) -> int:
        return sum(raw.size for raw in self.files)

    @property
    def format(self) -> Format:
        return self.files[0].format

    def listing(self) -> list[dict[str, object]]:
        """Each part's key, hash and size, for the manifest."""
        return [
            {"key": key, "sha256": raw.sha256, "bytes": raw.size}
            for key, raw in zip(self.keys, self.files, strict=True)
        ]


def is_pattern(uri: str) -> bool:
    """A local glob, an S3 prefix (ends with ``/``) or an S3 key pattern: anything that may name several parts."""
    uri = uri.strip()
    if is_s3(uri):
        _, key = split_s3(uri)
        return not key or key.endswith("/") or any(c in key for c in _MAGIC)
    return any(c in uri for c in _MAGIC)


def local_parts(uri: str) -> list[tuple[str, Path]]:
    """(key, path) of every file a local glob matches, sorted by key; the key is the path below the glob's root."""
    pattern = str(local_path(normalize_uri(uri)))
    root = _glob_root(pattern)
    found = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
    if not found:
        raise DataNotFoundError(
            f"raw data not found: no file matches the pattern {pattern}; expected CSV or Parquet parts"
        )
    return [(os.path.relpath(p, root), p) for p in found]


def _glob_root(pattern: str) -> str:
    """The folder above the first path segment holding a glob character."""
    head: list[str] = []
    for segment in pattern.split(os.sep):
        if any(c in segment for c in _MAGIC):
            break
        head.append(segment)
    return os.sep.join(head) or os.sep


def quick_check_input(uri: str, schema: ColumnSet) -> None:
    """:func:`tasks.data.ingest.quick_check` for a file, or for every part a local glob matches (``gpuflow run``)."""
    if is_pattern(uri) and not is_s3(uri.strip()):
        for _, part in local_parts(uri):
            quick_check(str(part), schema)
        return
    quick_check(uri, schema)


def s3_part_keys(uri: str, store: ObjectStore) -> list[str]:
    """Object keys under an S3 prefix (or matching an S3 key pattern), sorted; folder markers skipped."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        bucket, key = split_s3(uri)
    except StoreError as exc:
        raise ConfigurationError(str(exc)) from exc
    pattern = key if any(c in key for c in _MAGIC) else None
    prefix = key[: min(key.index(c) for c in _MAGIC if c in key)] if pattern else key
    keys: list[str] = []
    try:
        for page in store.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys.extend(obj["Key"] for obj in page.get("Contents", []) if not obj["Key"].endswith("/"))
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code == "NoSuchBucket":
            raise DataNotFoundError(f"raw data not found: bucket {bucket!r} does not exist ({uri})") from exc
        raise ConfigurationError(
            f"S3 refused to list {uri} ({code}): check the data store block's credentials"
        ) from exc
    except BotoCoreError as exc:
        raise ConfigurationError(f"S3 could not list {uri}: {type(exc).__name__}") from exc
    if pattern is not None:
        keys = [k for k in keys if fnmatch.fnmatchcase(k, pattern)]
    if not keys:
        what = f"matches the pattern {uri}" if pattern else f"is under the prefix {uri}"
        raise DataNotFoundError(f"raw data not found: no object {what}; expected CSV or Parquet parts")
    return sorted(keys)


@contextmanager
def open_parts(uri: str, store: ObjectStore) -> Iterator[Parts]:
    """The raw input behind ``uri`` (a file, a glob or an S3 prefix) as hashed parts, checked alike.

    S3 parts live in a temp folder until the block exits. Mixed formats and parts whose columns differ are
    refused here, before anything is parsed.
    """
    uri = normalize_uri(uri)
    if not is_pattern(uri):
        with open_raw(uri, store) as raw:
            yield Parts(uri=raw.uri, keys=(raw.uri.rsplit("/", 1)[-1],), files=(raw,))
        return
    if not is_s3(uri):
        found = local_parts(uri)
        files = tuple(_hashed_local(path) for _, path in found)
        parts = Parts(uri=uri, keys=tuple(k for k, _ in found), files=files)
        check_parts(parts)
        yield parts
        return
    bucket, _ = split_s3(uri)
    keys = s3_part_keys(uri, store)
    base = split_s3(uri)[1]
    base = base[: base.rfind("/") + 1] if not base.endswith("/") else base
    with tempfile.TemporaryDirectory(prefix="gpuflow-parts-") as tmp:
        files_list = []
        for i, key in enumerate(keys):
            source = f"s3://{bucket}/{key}"
            path = Path(tmp) / f"{i:06d}-{key.rsplit('/', 1)[-1] or 'part'}"
            digest, size = _spool_s3(source, store, path)
            files_list.append(RawFile(uri=source, path=path, sha256=digest, size=size, format=detect_format(key, path)))
        parts = Parts(uri=uri, keys=tuple(k[len(base) :] for k in keys), files=tuple(files_list))
        check_parts(parts)
        yield parts


def _hashed_local(path: Path) -> RawFile:
    try:
        with path.open("rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError as exc:
        raise DataNotFoundError(f"raw data {path} cannot be read: {exc.strerror}") from exc
    return RawFile(
        uri=str(path), path=path, sha256=digest, size=path.stat().st_size, format=detect_format(str(path), path)
    )


def part_columns(raw: RawFile) -> list[str] | None:
    """A part's column names (CSV header, Parquet schema); None for an unreadable Parquet file."""
    if raw.format == "csv":
        return csv_header(raw)
    try:
        return list(pq.read_schema(raw.path).names)
    except (pa.ArrowException, OSError):
        return None


def check_parts(parts: Parts) -> None:
    """Every part non-empty, one format for all, and the same columns in each (order free)."""
    for raw in parts.files:
        if raw.size == 0:
            raise empty_file_error(raw)
    formats: dict[str, list[str]] = {}
    for key, raw in zip(parts.keys, parts.files, strict=True):
        formats.setdefault(raw.format, []).append(key)
    if len(formats) > 1:
        listed = "; ".join(
            f"{fmt.upper()}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}" for fmt, keys in formats.items()
        )
        raise DataValidationError(
            f"{parts.uri}: the parts mix formats ({listed}); expected every part to be CSV or every part Parquet"
        )
    first_key, first = parts.keys[0], part_columns(parts.files[0])
    for key, raw in zip(parts.keys[1:], parts.files[1:], strict=True):
        columns = part_columns(raw)
        if first is None or columns is None or set(columns) == set(first):
            continue
        missing = [c for c in first if c not in columns]
        extra = [c for c in columns if c not in first]
        problems = []
        if missing:
            problems.append(f"lacks {', '.join(repr(c) for c in missing[:10])}")
        if extra:
            problems.append(f"adds {', '.join(repr(c) for c in extra[:10])}")
        raise DataValidationError(
            f"{parts.uri}: the parts have different columns: part {key!r} {' and '.join(problems)} compared with "
            f"part {first_key!r}; expected every part to have the same columns"
        )
