"""Split files written on writer threads: the same bytes as on one thread, and a failure reaches the caller; a check
running alongside the writing hands back its result, or its failure is the error raised."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tasks.core.errors import DataValidationError
from tasks.data import arrays
from tasks.data.publishing import Rows, write_splits, write_while_checking
from tasks.data.split_writer import ROW_GROUP, SplitWriter, SplitWriters
from workloads.store import ObjectStore

NAMES = ("train", "val", "test")


def _table(rows: int, chunk: int) -> pa.Table:
    """Small-integer features held as int8 (the files declare float32) and an int64 label, in many chunks."""
    rng = np.random.default_rng(7)
    batches = []
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        columns = [pa.array(rng.integers(0, 17, n, dtype=np.int8)) for _ in range(4)]
        columns.append(pa.array(np.arange(start, start + n, dtype=np.int64)))
        batches.append(pa.RecordBatch.from_arrays(columns, names=["a", "b", "c", "d", "label"]))
    return pa.Table.from_batches(batches)


FILE_SCHEMA = pa.schema([(name, pa.float32()) for name in "abcd"] + [("label", pa.int64())])


def _route(table: pa.Table, code: np.ndarray, add: Callable[[str, pa.RecordBatch], None]) -> None:
    offset = 0
    for batch in table.to_batches():
        part = code[offset : offset + batch.num_rows]
        offset += batch.num_rows
        for k, name in enumerate(NAMES):
            if np.any(part == k):
                add(name, pc.filter(batch, arrays.mask(part == k)))


def test_threads_write_the_same_bytes_as_one_thread(tmp_path: Path) -> None:
    table = _table(3 * ROW_GROUP + 1234, chunk=5_000)
    code = np.random.default_rng(1).choice(3, size=table.num_rows, p=[0.7, 0.15, 0.15]).astype(np.int8)
    store = ObjectStore()

    alone = {name: SplitWriter(str(tmp_path / "one" / f"{name}.parquet"), FILE_SCHEMA) for name in NAMES}
    _route(table, code, lambda name, batch: alone[name].add(batch))
    expected = {name: writer.close(store) for name, writer in alone.items()}

    threaded = SplitWriters(str(tmp_path / "threads"), FILE_SCHEMA, {"train": 0.7, "val": 0.15, "test": 0.15})
    try:
        _route(table, code, threaded.add)
        files = threaded.close(store)
    finally:
        threaded.abandon()

    assert list(files) == list(NAMES)
    for name in NAMES:
        assert files[name] == expected[name]
        assert (tmp_path / "threads" / f"{name}.parquet").read_bytes() == (
            tmp_path / "one" / f"{name}.parquet"
        ).read_bytes()
        back = pq.read_table(tmp_path / "threads" / f"{name}.parquet")
        assert back.schema == FILE_SCHEMA
        assert back.column("label").to_pylist() == np.flatnonzero(code == NAMES.index(name)).tolist()
    sizes = [pq.ParquetFile(tmp_path / "threads" / "train.parquet").metadata.row_group(i).num_rows for i in range(2)]
    assert sizes == [ROW_GROUP, ROW_GROUP]


def test_a_failure_on_a_writer_thread_is_raised_to_the_caller_and_stops_the_threads(tmp_path: Path) -> None:
    writers = SplitWriters(str(tmp_path), FILE_SCHEMA, {"train": 0.7, "val": 0.15, "test": 0.15})
    text = pa.RecordBatch.from_arrays(
        [pa.array(["x"] * ROW_GROUP)] + [pa.array(np.zeros(ROW_GROUP, dtype=np.int8)) for _ in range(3)]
        + [pa.array(np.zeros(ROW_GROUP, dtype=np.int64))],
        names=["a", "b", "c", "d", "label"],
    )  # fmt: skip
    with pytest.raises(pa.ArrowInvalid, match="x"):
        try:
            for _ in range(3 * 8):  # more than a queue holds: the error surfaces from add() or close()
                writers.add("train", text)
            writers.close(ObjectStore())
        finally:
            writers.abandon()
    assert not [t for t in threading.enumerate() if t.name.startswith("gpuflow-write-")]


def _rows(table: pa.Table, code: np.ndarray) -> Rows:
    splits = {name: np.flatnonzero(code == k) for k, name in enumerate(NAMES)}
    return Rows(table, splits, ("a", "b", "c", "d"), pa.float32())


def test_a_check_alongside_the_writing_returns_its_result_and_changes_no_byte(tmp_path: Path) -> None:
    table = _table(2 * ROW_GROUP + 99, chunk=4_000)
    code = np.random.default_rng(2).choice(3, size=table.num_rows, p=[0.7, 0.15, 0.15]).astype(np.int8)
    store = ObjectStore()
    expected = write_splits(_rows(table, code), str(tmp_path / "alone"), store)

    with ThreadPoolExecutor(1) as pool:
        files, result = write_while_checking(
            _rows(table, code), str(tmp_path / "checked"), store, pool.submit(lambda: "clean")
        )

    assert result == "clean"
    assert files == expected
    for name in NAMES:
        assert (tmp_path / "checked" / f"{name}.parquet").read_bytes() == (
            tmp_path / "alone" / f"{name}.parquet"
        ).read_bytes()


def test_a_failed_check_is_the_error_raised_and_no_thread_is_left(tmp_path: Path) -> None:
    table = _table(3 * ROW_GROUP, chunk=1_000)
    rows = _rows(table, np.zeros(table.num_rows, dtype=np.int8))

    def check() -> None:
        raise DataValidationError("bad values")

    with ThreadPoolExecutor(1) as pool, pytest.raises(DataValidationError, match="bad values"):
        write_while_checking(rows, str(tmp_path), ObjectStore(), pool.submit(check))
    assert not [t for t in threading.enumerate() if t.name.startswith("gpuflow-write-")]


@pytest.mark.skipif(
    arrays.MALLOC_TRIM is None,
    reason="this C library has no malloc_trim (musl, macOS): release_memory falls back to Arrow's release_unused",
)
def test_release_memory_hands_freed_heap_back_to_the_system() -> None:
    """pyarrow's system pool does not trim glibc's heaps, so prepare asks glibc itself (after the parse)."""
    blocks = [bytearray(64 * 1024) for _ in range(2_000)]  # ~128 MB in heap-sized blocks, below mmap's threshold
    before = _rss()
    del blocks[::2]  # every other block: freed, but not at the top of the heap, so free() keeps it
    arrays.release_memory()
    assert before - _rss() > 32 << 20


def _rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
