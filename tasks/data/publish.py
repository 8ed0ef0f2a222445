"""Turn a raw file into a published, immutable dataset version: the prepare stage's logic, without Prefect.

The version is a hash of the raw bytes and of everything that shapes the output (schema, fractions,
seed, duplicate policy), so the same input always maps to the same folder and a second run finds the
manifest and writes nothing. Publishing is all-or-nothing: locally the splits and manifest are written
into a hidden staging folder that is renamed into place; on S3 (no rename) the manifest is written last
and readers ignore a folder without one. Any failure deletes what was written.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.core.errors import ConfigurationError
from tasks.data import arrays
from tasks.data.parts import open_parts
from tasks.data.schema import DatasetSchema, PrepareParams, canonical_json
from tasks.data.schema_reader import feature_type, read_table
from tasks.data.split import SPLIT_NAMES, class_counts, stratified_split
from tasks.data.validation import Checked, validate
from workloads.dataset import MANIFEST, DatasetManifest, SplitFile, dataset_exists, dataset_uri, load_manifest
from workloads.store import ObjectStore, is_s3, join, local_path

# Bump when the split algorithm or the file layout changes, so old versions are not mistaken for new ones.
PREPARE_FORMAT = 1
# Rows per Parquet row group; also what each writer holds in memory at most while assembling one.
ROW_GROUP = 32_768

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

Log = logging.Logger | logging.LoggerAdapter[Any]


@dataclass(frozen=True)
class PrepareResult:
    """What one preparation produced (or found already published)."""

    dataset_uri: str
    manifest: DatasetManifest
    cache_hit: bool
    timings: dict[str, float]
    source_uri: str

    @property
    def version(self) -> str:
        return self.manifest.version


def check_dataset_name(name: str) -> str:
    """A dataset name becomes a folder name: letters, digits, ``.``, ``_`` and ``-`` only."""
    if not _NAME.match(name) or name in {".", ".."}:
        raise ConfigurationError(
            f"dataset name {name!r} is not usable as a folder name: use letters, digits, '.', '_' and '-' "
            "(up to 128 characters, starting with a letter or digit)"
        )
    return name


def compute_version(content_sha256: str, schema: DatasetSchema, params: PrepareParams) -> str:
    """16 hex chars of sha256 over the raw content hash and every parameter that shapes the output."""
    recipe = {
        "prepare_format": PREPARE_FORMAT,
        "content_sha256": content_sha256,
        "schema": schema.canonical(),
        "parameters": params.canonical(),
    }
    return hashlib.sha256(canonical_json(recipe).encode()).hexdigest()[:16]


def prepare_dataset(
    source_uri: str,
    *,
    store: ObjectStore,
    root: str,
    name: str,
    schema: DatasetSchema,
    params: PrepareParams,
    log: Log | None = None,
    created_by: str = "",
) -> PrepareResult:
    """Hash, check the cache, read, validate, split and publish; see the module docstring for the guarantees."""
    log = log or logging.getLogger("gpuflow.prepare")
    check_dataset_name(name)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    clock = _Clock(timings)
    with open_parts(source_uri, store) as parts:
        clock.lap("hash")
        if not parts.single:  # several parts: read batch by batch, by the spec this schema amounts to
            from tasks.data.streaming import prepare_parts, spec_from_schema

            return prepare_parts(
                parts, store=store, root=root, name=name, spec=spec_from_schema(schema), params=params, log=log,
                created_by=created_by, clock=clock, started=started,
            )  # fmt: skip
        raw = parts.files[0]
        version = compute_version(raw.sha256, schema, params)
        uri = dataset_uri(root, name, version)
        if (cached := cached_result(uri, store, name, version, raw.uri, timings, started, log)) is not None:
            return cached
        log.info("preparing dataset %s version %s from %s (%d bytes, %s)", name, version, raw.uri, raw.size, raw.format)
        table = read_table(raw, schema)
        clock.lap("read")
        table, checked = validate(table, schema, params, raw.uri)
        clock.lap("validate")
        source = {"uri": raw.uri, "sha256": raw.sha256, "bytes": raw.size, "format": raw.format}
    splits = stratified_split(
        checked.labels,
        val_fraction=params.val_fraction,
        test_fraction=params.test_fraction,
        seed=params.seed,
        row_ids=checked.keep,
    )
    clock.lap("split")
    if checked.dropped:
        log.info("dropped %d duplicate row(s), e.g. data rows %s", checked.dropped, checked.duplicates.examples())

    def manifest_for(files: dict[str, SplitFile]) -> DatasetManifest:
        return _manifest(name, version, source, schema, params, checked, splits, files, created_by)

    rows = Rows(table, splits, schema.features, feature_type(schema))
    del table  # ``rows`` holds the data now, and the writer frees it batch by batch
    return publish_result(rows, uri, store, manifest_for, name, version, str(source["uri"]), clock, started, log)


def cached_result(
    uri: str,
    store: ObjectStore,
    name: str,
    version: str,
    source_uri: str,
    timings: dict[str, float],
    started: float,
    log: Log,
) -> PrepareResult | None:
    """The published dataset at ``uri`` as a cache hit, or None when this version is not published yet."""
    if not dataset_exists(uri, store):
        return None
    manifest = load_manifest(uri, store)
    timings["total"] = round(time.perf_counter() - started, 4)
    log.info("cache hit: dataset %s version %s is already published at %s; nothing written", name, version, uri)
    return PrepareResult(uri, manifest, cache_hit=True, timings=timings, source_uri=source_uri)


def publish_result(
    rows: Rows | Callable[[str], dict[str, SplitFile]],
    uri: str,
    store: ObjectStore,
    manifest_for: Callable[[dict[str, SplitFile]], DatasetManifest],
    name: str,
    version: str,
    source_uri: str,
    clock: _Clock,
    started: float,
    log: Log,
) -> PrepareResult:
    """Publish the splits and say what happened: written now, or published meanwhile by a concurrent run."""
    manifest, published = publish(rows, uri=uri, store=store, manifest_for=manifest_for)
    clock.lap("write")
    clock.timings["total"] = round(time.perf_counter() - started, 4)
    if not published:
        log.info("dataset %s version %s was published concurrently by another run; using it", name, version)
        return PrepareResult(uri, manifest, cache_hit=True, timings=clock.timings, source_uri=source_uri)
    log.info("published dataset %s version %s at %s: rows %s", name, version, uri, manifest.rows)
    return PrepareResult(uri, manifest, cache_hit=False, timings=clock.timings, source_uri=source_uri)


class _Clock:
    def __init__(self, timings: dict[str, float]) -> None:
        self.timings = timings
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = round(now - self._last, 4)
        self._last = now


def _manifest(
    name: str,
    version: str,
    source: dict[str, Any],
    schema: DatasetSchema,
    params: PrepareParams,
    checked: Checked,
    splits: dict[str, np.ndarray],
    files: dict[str, SplitFile],
    created_by: str,
) -> DatasetManifest:
    balance: dict[str, dict[str, int]] = {}
    for split, rows in splits.items():
        # labels align with keep (ascending), or with the rows themselves when nothing was dropped
        labels = checked.labels[rows if checked.keep is None else np.searchsorted(checked.keep, rows)]
        balance[split] = {str(k): v for k, v in class_counts(labels, schema.labels).items()}
    return DatasetManifest(
        name=name,
        version=version,
        source_uri=str(source["uri"]),
        source_sha256=str(source["sha256"]),
        source_bytes=int(source["bytes"]),
        source_format=str(source["format"]),
        schema=schema.canonical(),
        parameters=params.canonical(),
        rows={split: len(rows) for split, rows in splits.items()},
        class_balance=balance,
        splits=files,
        duplicates={
            "found": checked.duplicates.count,
            "dropped": checked.dropped,
            "examples": [{"row": r, "repeats": f} for r, f in checked.duplicates.examples()],
        },
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        created_by=created_by,
        extra={
            "task": "classification",
            "target": {"name": schema.label, "type": "class", "classes": list(schema.labels), "stored": "value"},
        },
    )


# --------------------------------------------------------------------------- publishing


class Rows:
    """The validated table as record batches (zero-copy) and each row's split: what the writers read.

    ``schema`` is what the files get: features as the declared float type, even when the table holds
    them as narrow integers.
    """

    def __init__(self, table: pa.Table, splits: dict[str, np.ndarray], features: tuple[str, ...], kind: pa.DataType):
        self.schema = pa.schema(
            [field.with_type(kind) if field.name in features else field for field in table.schema],
            metadata=table.schema.metadata,
        )
        self.batches: list[pa.RecordBatch] = table.to_batches()
        self.code = np.full(table.num_rows, -1, dtype=np.int8)  # -1: dropped duplicate
        for k, name in enumerate(SPLIT_NAMES):
            self.code[splits[name]] = k


def publish(
    rows: Rows | Callable[[str], dict[str, SplitFile]],
    *,
    uri: str,
    store: ObjectStore,
    manifest_for: Callable[[dict[str, SplitFile]], DatasetManifest],
) -> tuple[DatasetManifest, bool]:
    """Write the splits, then the manifest, then make the folder visible; ``(manifest, False)`` if we lost a race.

    ``rows`` is a validated table, or a function writing the splits into the folder it is given (a streamed
    input, ``tasks.data.streaming``). On any failure everything this call wrote is deleted before the error
    propagates.
    """
    staging = store.staging_uri(uri)
    if is_s3(uri):
        store.delete_prefix(uri)  # objects of an earlier attempt that died before writing its manifest
    try:
        files = write_splits(rows, staging, store) if isinstance(rows, Rows) else rows(staging)
        manifest = manifest_for(files)
        store.write_bytes(join(staging, MANIFEST), manifest.to_json())
        if is_s3(uri):
            return manifest, True
        try:
            store.publish_folder(staging, uri)
        except OSError:
            if dataset_exists(uri, store):
                store.delete_prefix(staging)
                return load_manifest(uri, store), False
            store.delete_prefix(uri)  # a folder without manifest is not a dataset: replace it
            store.publish_folder(staging, uri)
        return manifest, True
    except BaseException:
        store.delete_prefix(staging)
        if not is_s3(uri):
            _remove_if_empty(local_path(uri).parent)
        raise


class SplitWriter:
    """One split's Parquet file, fed batch by batch; row groups of exactly ROW_GROUP rows (the last fewer)."""

    def __init__(self, uri: str, schema: pa.Schema) -> None:
        self.uri = uri
        self.rows = 0
        self.sink: pa.NativeFile
        if is_s3(uri):
            self.sink = pa.BufferOutputStream()
        else:
            path = local_path(uri)
            path.parent.mkdir(parents=True, exist_ok=True)
            self.sink = pa.OSFile(str(path), "wb")
        self.writer = pq.ParquetWriter(self.sink, schema, compression="snappy", memory_pool=arrays.pool())
        self.pending: list[pa.RecordBatch] = []
        self.pending_rows = 0

    def add(self, batch: pa.RecordBatch) -> None:
        self.pending.append(batch)
        self.pending_rows += batch.num_rows
        if self.pending_rows >= ROW_GROUP:
            self._flush(final=False)

    def _flush(self, *, final: bool) -> None:
        if not self.pending:
            return
        table = pa.Table.from_batches(self.pending)
        while table.num_rows >= ROW_GROUP or (final and table.num_rows):
            part = _conform(table.slice(0, ROW_GROUP), self.writer.schema)
            self.writer.write_table(part, row_group_size=ROW_GROUP)
            self.rows += part.num_rows
            table = table.slice(part.num_rows)
        self.pending = table.to_batches()
        self.pending_rows = table.num_rows

    def close(self, store: ObjectStore) -> SplitFile:
        self._flush(final=True)
        if self.rows == 0:
            self.writer.write_table(self.writer.schema.empty_table())
        self.writer.close()
        name = self.uri.rsplit("/", 1)[-1]
        if isinstance(self.sink, pa.BufferOutputStream):
            payload = self.sink.getvalue().to_pybytes()
            store.write_bytes(self.uri, payload)
            return SplitFile(name, self.rows, hashlib.sha256(payload).hexdigest(), len(payload))
        self.sink.close()
        path = local_path(self.uri)
        with path.open("rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
        return SplitFile(name, self.rows, digest, path.stat().st_size)

    def abandon(self) -> None:
        """Close whatever is still open (after an error; a no-op after :meth:`close`)."""
        if self.writer.is_open:
            self.writer.close()
        if not self.sink.closed:
            self.sink.close()


def write_splits(rows: Rows, folder: str, store: ObjectStore) -> dict[str, SplitFile]:
    """One pass over the batches in file order, routing each row to its split; frees each batch behind it.

    Each source batch is dropped as soon as its rows are copied out, and each split holds at most one
    row group being assembled, so writing adds little to the peak. Rows keep their source order inside
    each split, so the files are deterministic for a given input. ``rows`` is consumed.
    """
    writers: dict[str, SplitWriter] = {}
    try:
        for name in SPLIT_NAMES:
            writers[name] = SplitWriter(join(folder, f"{name}.parquet"), rows.schema)
        batches, rows.batches = rows.batches[::-1], []  # sole owner now; pop() from the end is O(1)
        offset = 0
        while batches:
            batch = batches.pop()
            code = rows.code[offset : offset + batch.num_rows]
            offset += batch.num_rows
            for k, name in enumerate(SPLIT_NAMES):
                selected = code == k
                count = int(np.count_nonzero(selected))
                if count == batch.num_rows:
                    writers[name].add(batch)
                elif count:
                    # filter beats take for dense picks
                    writers[name].add(pc.filter(batch, arrays.mask(selected), memory_pool=arrays.pool()))
            del batch
        return {name: writer.close(store) for name, writer in writers.items()}
    finally:
        for writer in writers.values():
            writer.abandon()


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Cast columns held narrower (small integers) to the file's declared types."""
    if table.schema.equals(schema):
        return table
    columns = [
        column if column.type == field.type else pc.cast(column, field.type, memory_pool=arrays.pool())
        for column, field in zip(table.columns, schema, strict=True)
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()
