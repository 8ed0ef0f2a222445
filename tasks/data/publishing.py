r"""Publishing a dataset version, whichever way its rows were read: the all-or-nothing folder, routing rows to
the split writers (:mod:`tasks.data.split_writer`), the cache check and what a preparation returns.

Locally the splits and manifest are written into a hidden staging folder that is renamed into place; on S3 (no
rename) the manifest is written last and readers ignore a folder without one. Any failure deletes what was
written. A table read whole is written from :class:`Rows`; an input read batch by batch
(:mod:`tasks.data.streaming`) hands :func:`publish` a function that feeds the split writers itself.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.core.errors import ConfigurationError
from tasks.data import arrays
from tasks.data.split import SPLIT_NAMES
from tasks.data.split_writer import SplitWriters
from workloads.dataset import MANIFEST, DatasetManifest, SplitFile, dataset_exists, load_manifest
from workloads.store import ObjectStore, is_s3, join, local_path

# Bump when the split algorithm or the file layout changes, so old versions are not mistaken for new ones.
PREPARE_FORMAT = 1


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


_T = TypeVar("_T")

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
            name_folder = local_path(uri).parent
            _remove_if_empty(name_folder)
            _remove_if_empty(name_folder.parent)  # datasets/: a refused first dataset leaves nothing behind
        raise


def write_while_checking(
    rows: Rows, folder: str, store: ObjectStore, checking: Future[_T]
) -> tuple[dict[str, SplitFile], _T]:
    """:func:`write_splits` while ``checking`` (a check running on a thread of its own) goes on; its result with
    the files.

    Writing is bound by one writer thread (the largest split), so a check alongside fills a core that would
    otherwise wait. A failed check ends the writing at the next batch and is the error raised (:func:`publish` then
    deletes the folder), even when the writing failed too.
    """
    try:
        files = write_splits(rows, folder, store, stop=checking)
    except BaseException:
        checking.result()  # waits for the check: its failure is the one to report
        raise
    return files, checking.result()


def write_splits(rows: Rows, folder: str, store: ObjectStore, stop: Future[Any] | None = None) -> dict[str, SplitFile]:
    """One pass over the batches in file order, routing each row to its split; frees each batch behind it.

    Each source batch is dropped as soon as its rows are copied out, and each split holds at most one
    row group being assembled plus a few queued batches, so writing adds little to the peak. The files are
    written at once by writer threads (:class:`SplitWriters`). Rows keep their source order inside each split, so the
    files are deterministic for a given input. ``rows`` is consumed. A ``stop`` that failed ends the writing with
    its error.
    """
    shares = {name: float(np.count_nonzero(rows.code == k)) for k, name in enumerate(SPLIT_NAMES)}
    writers = SplitWriters(folder, rows.schema, shares)
    try:
        batches, rows.batches = rows.batches[::-1], []  # sole owner now; pop() from the end is O(1)
        offset = 0
        while batches:
            if stop is not None and stop.done():
                stop.result()  # raises the failure; a success lets the writing go on
            batch = batches.pop()
            code = rows.code[offset : offset + batch.num_rows]
            offset += batch.num_rows
            for k, name in enumerate(SPLIT_NAMES):
                selected = code == k
                count = int(np.count_nonzero(selected))
                if count == batch.num_rows:
                    writers.add(name, batch)
                elif count:
                    # filter beats take for dense picks
                    writers.add(name, pc.filter(batch, arrays.mask(selected), memory_pool=arrays.pool()))
            del batch
        return writers.close(store)
    finally:
        writers.abandon()


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()
