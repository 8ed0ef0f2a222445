"""The split files, written row group by row group on writer threads while the caller routes rows to them.

Encoding Parquet is single-threaded inside pyarrow, and it was over 40 % of a preparation's time: the three splits
were written one after the other on one core while the other idled. :class:`SplitWriters` writes them on threads of
their own (pyarrow releases the GIL while it casts, encodes, compresses and writes), at once and alongside the
caller's routing. Each file receives the same batches in the same order either way, so its bytes do not depend on
the threads. Store calls (an S3 upload) stay on the caller's thread.
"""

from __future__ import annotations

import hashlib
import os
import queue
import tempfile
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.data import arrays
from workloads.dataset import SplitFile
from workloads.store import ObjectStore, is_s3, join, local_path

# Rows per Parquet row group; also what each writer holds in memory at most while assembling one.
ROW_GROUP = 32_768

# Batches a writer thread may have waiting: enough to ride out a slow row group, few enough to bound memory.
QUEUE_DEPTH = 8

# Threads writing split files. Each holds its own row group in memory (and its own malloc arena); a third bought no
# time on a 1M-row file (train, the largest split, is the longest job either way) but cost about 30 MB.
WRITER_THREADS = 2


class SplitWriter:
    """One split's Parquet file, fed batch by batch; row groups of exactly ROW_GROUP rows (the last fewer).

    Locally the file is written in place (inside the staging folder). For S3 it is written to a local temporary
    file and uploaded by :meth:`ObjectStore.upload` when closed, so a split is never whole in memory: the writer
    holds one row group, the upload one part at a time.

    ``release_memory``: hand freed memory back to the system after each row group. A thread of its own gets its own
    malloc arena, which otherwise keeps its largest row group's buffers (measured on a 1M-row file with three
    writer threads: about 25 MB less peak with it).
    """

    def __init__(self, uri: str, schema: pa.Schema, *, release_memory: bool = False) -> None:
        self.uri = uri
        self.rows = 0
        self.release_memory = release_memory
        self.spool: Path | None = None  # the local file an S3 split is written to before its upload
        if is_s3(uri):
            fd, spool = tempfile.mkstemp(prefix="gpuflow-split-", suffix=".parquet")
            os.close(fd)
            self.spool = path = Path(spool)
        else:
            path = local_path(uri)
            path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        try:
            self.sink = pa.OSFile(str(path), "wb")
            self.writer = pq.ParquetWriter(self.sink, schema, compression="snappy", memory_pool=arrays.pool())
        except BaseException:
            if self.spool is not None:
                self.spool.unlink(missing_ok=True)
            raise
        self.pending: list[pa.RecordBatch] = []
        self.pending_rows = 0
        self._digest = ""

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
            del part
            if self.release_memory:
                arrays.pool().release_unused()
        self.pending = table.to_batches()
        self.pending_rows = table.num_rows

    def finish(self) -> None:
        """Write what is pending, close the file and hash it (no store call: that is :meth:`stored`)."""
        self._flush(final=True)
        if self.rows == 0:
            self.writer.write_table(self.writer.schema.empty_table())
        self.writer.close()
        self.sink.close()
        with self.path.open("rb") as handle:
            self._digest = hashlib.file_digest(handle, "sha256").hexdigest()

    def stored(self, store: ObjectStore) -> SplitFile:
        """After :meth:`finish`: upload an S3 split from its spool file, and say what was written."""
        entry = SplitFile(self.uri.rsplit("/", 1)[-1], self.rows, self._digest, self.path.stat().st_size)
        if self.spool is not None:
            store.upload(self.spool, self.uri)
            self.spool.unlink()
            self.spool = None
        return entry

    def close(self, store: ObjectStore) -> SplitFile:
        self.finish()
        return self.stored(store)

    def abandon(self) -> None:
        """Close whatever is still open and remove the local spool file (after an error; a no-op after
        :meth:`close`)."""
        if self.writer.is_open:
            self.writer.close()
        if not self.sink.closed:
            self.sink.close()
        if self.spool is not None:
            self.spool.unlink(missing_ok=True)
            self.spool = None


class WriterThread:
    """Some splits' writers (:class:`SplitWriter`) on a thread of their own: :meth:`add` hands a batch over (waiting
    while :data:`QUEUE_DEPTH` batches are queued), :meth:`close` waits for the files. A failure on the thread is
    raised by the next :meth:`add` or by :meth:`close`.
    """

    def __init__(self, uris: dict[str, str], schema: pa.Schema) -> None:
        self._writers: dict[str, SplitWriter] = {}
        try:
            for name, uri in uris.items():
                self._writers[name] = SplitWriter(uri, schema, release_memory=True)
        except BaseException:
            self.abandon()
            raise
        self._queue: queue.Queue[tuple[str, pa.RecordBatch] | None] = queue.Queue(maxsize=QUEUE_DEPTH)
        self._error: BaseException | None = None
        self._stop = False
        self._thread = threading.Thread(target=self._run, name=f"gpuflow-write-{'-'.join(uris)}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while (item := self._queue.get()) is not None:
                if not self._stop:
                    self._writers[item[0]].add(item[1])
            if not self._stop:
                for writer in self._writers.values():
                    writer.finish()
        except BaseException as exc:  # handed to the caller's thread
            self._error = exc
            while self._queue.get() is not None:  # keep taking batches, so the caller never waits on a full queue
                pass

    def add(self, name: str, batch: pa.RecordBatch) -> None:
        self._raise_failure()
        self._queue.put((name, batch))

    def close(self, store: ObjectStore) -> dict[str, SplitFile]:
        self._queue.put(None)
        self._thread.join()
        self._raise_failure()
        return {name: writer.stored(store) for name, writer in self._writers.items()}

    def abandon(self) -> None:
        """Stop the thread, dropping what it has not written, and close the files (a no-op after :meth:`close`)."""
        thread = getattr(self, "_thread", None)
        if thread is not None and thread.is_alive():
            self._stop = True
            self._queue.put(None)
            thread.join()
        for writer in self._writers.values():
            writer.abandon()

    def _raise_failure(self) -> None:
        if self._error is not None:
            raise self._error


class SplitWriters:
    """The three split files, written at once by :data:`WRITER_THREADS` threads at most, each split wholly by one.

    ``shares`` (rows or fractions per split) balance the threads: with two, the largest split (train) gets one
    and the others share the second. Each file gets the same batches in the same order as on one thread, so its
    bytes do not depend on the threads.
    """

    def __init__(self, folder: str, schema: pa.Schema, shares: dict[str, float]) -> None:
        groups: list[dict[str, str]] = [{} for _ in range(min(WRITER_THREADS, len(shares)))]
        loads = [0.0] * len(groups)
        for name in sorted(shares, key=lambda n: -shares[n]):
            lightest = loads.index(min(loads))
            groups[lightest][name] = join(folder, f"{name}.parquet")
            loads[lightest] += shares[name]
        self._threads: list[WriterThread] = []
        self._thread_of: dict[str, WriterThread] = {}
        try:
            for group in groups:
                thread = WriterThread(group, schema)
                self._threads.append(thread)
                self._thread_of.update(dict.fromkeys(group, thread))
        except BaseException:
            self.abandon()
            raise
        self._order = list(shares)

    def add(self, name: str, batch: pa.RecordBatch) -> None:
        self._thread_of[name].add(name, batch)

    def close(self, store: ObjectStore) -> dict[str, SplitFile]:
        files: dict[str, SplitFile] = {}
        for thread in self._threads:
            files.update(thread.close(store))
        return {name: files[name] for name in self._order}

    def abandon(self) -> None:
        for thread in self._threads:
            thread.abandon()


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Cast columns held narrower (small integers) to the file's declared types."""
    if table.schema.equals(schema):
        return table
    columns = [
        column if column.type == field.type else pc.cast(column, field.type, memory_pool=arrays.pool())
        for column, field in zip(table.columns, schema, strict=True)
    ]
    return pa.Table.from_arrays(columns, schema=schema)
