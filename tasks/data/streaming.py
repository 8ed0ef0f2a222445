"""Prepare an input of many parts (:mod:`tasks.data.parts`) batch by batch, so memory follows the batch, not the data.

Each part is read in record batches (CSV cut at line ends into ~4 MB texts, Parquet ``iter_batches``); each batch is
checked by the spec (:func:`tasks.data.conform.conform_values`, rows named within their part), assigned to
its splits and appended to the split files, row group by row group. What needed the whole table when a file is
read whole is done differently here (docs/data.md, "Inputs of any size"):

- **split**: a stratified or random split cuts each class into consecutive blocks of :data:`BLOCK` rows (in input
  order) and places each block's rows by a seeded permutation, so every full block holds the exact fractions
  and only a class's last, partial block is left to chance; a group split places each group by a seeded hash of
  its value (no group on two sides; the row shares are those of the groups, so they vary with group sizes);
- **duplicates**: a 64-bit hash of each distinct row and its row id (16 bytes a row, :class:`SeenRows`);
  a hash match is trusted, as the earlier row is no longer in memory;
- **categories** without a declared list: one extra pass reads only those columns to learn the vocabulary.

The split files keep today's layout (one Parquet file per split, written in row groups as batches arrive), so
readers are unchanged.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from tasks.core.dataset_spec import CategoryColumn, DatasetSpec, FloatColumn, TargetSpec
from tasks.core.errors import DataValidationError
from tasks.data import arrays
from tasks.data.conform import conform_values, stored_classes
from tasks.data.duplicate_rows import SeenRows, row_hashes
from tasks.data.parts import Parts
from tasks.data.publishing import Log, PrepareResult, _Clock, cached_result, publish_result
from tasks.data.raw_file import (
    PARSE_BLOCK,
    ROWS_NOTE,
    ExpectedColumns,
    RawFile,
    check_columns,
    csv_header,
    first_problem,
    rows_after,
)
from tasks.data.schema import DatasetSchema, PrepareParams
from tasks.data.spec_manifest import compute_spec_version, manifest_from
from tasks.data.spec_reader import (
    csv_convert_options,
    explain_csv_error,
    parquet_as_read,
    read_types,
    refuse_list_tensors,
)
from tasks.data.split import SPLIT_NAMES, allocate, min_rows_per_class, splitmix64
from tasks.data.split_writer import SplitWriters
from workloads.dataset import DatasetManifest, SplitFile, dataset_uri
from workloads.store import ObjectStore

# CSV bytes per batch (parsed by pyarrow's threads); Parquet rows per batch. With the writers' row groups they
# bound the memory.
BATCH_BYTES = 4 << 20
BATCH_ROWS = 65_536
# Rows of one class placed together by one seeded permutation (stratified and random splits).
BLOCK = 200


def spec_from_schema(schema: DatasetSchema) -> DatasetSpec:
    """The spec a digits-style schema amounts to: one float column per feature in its range, integer classes."""
    low, high = schema.value_range if schema.value_range is not None else (None, None)
    return DatasetSpec(
        columns=tuple(FloatColumn(name=name, min=low, max=high) for name in schema.features),
        target=TargetSpec(name=schema.label, type="class", classes=schema.labels),
        dtype=schema.dtype,
    )


def prepare_parts(
    parts: Parts,
    *,
    store: ObjectStore,
    root: str,
    name: str,
    spec: DatasetSpec,
    params: PrepareParams,
    log: Log,
    created_by: str,
    clock: _Clock,
    started: float,
) -> PrepareResult:
    """Version, cache check, then check, split and publish the parts batch by batch (publish's all-or-nothing rule)."""
    version = compute_spec_version(parts.content_sha256, spec, params)
    uri = dataset_uri(root, name, version)
    if (cached := cached_result(uri, store, name, version, parts.uri, clock.timings, started, log)) is not None:
        return cached
    log.info(
        "preparing dataset %s version %s (%s) from %d parts at %s (%d bytes, %s), batch by batch",
        name, version, spec.task, len(parts.files), parts.uri, parts.size, parts.format,
    )  # fmt: skip
    encoding = with_vocabularies(spec, parts)
    stream = Stream(parts, encoding, params)
    source = {"uri": parts.uri, "sha256": parts.content_sha256, "bytes": parts.size, "format": parts.format}

    def manifest_for(files: dict[str, SplitFile]) -> DatasetManifest:
        return manifest_from(
            name,
            version,
            source,
            spec,
            params,
            rows=dict(stream.rows),
            counts=stream.counts,
            summary=stream.summary(),
            vocabularies=stream.vocabularies,
            duplicates=(stream.duplicates_found, stream.dropped, stream.examples),
            files=files,
            created_by=created_by,
            more={"parts": parts.listing()},
        )

    def write(folder: str) -> dict[str, SplitFile]:
        files = stream.write(folder, store)
        clock.lap("read_check_split")
        return files

    result = publish_result(write, uri, store, manifest_for, name, version, parts.uri, clock, started, log)
    if stream.dropped:
        log.info("dropped %d duplicate row(s), e.g. data rows %s", stream.dropped, stream.examples)
    return result


# --------------------------------------------------------------------------- reading


def read_batches(raw: RawFile, spec: DatasetSpec) -> Iterator[tuple[int, pa.Table]]:
    """(rows before it in the part, batch) for one part, parsed as the spec says; a bad value names its row."""
    types = read_types(spec)
    expected = ExpectedColumns(spec.raw_columns())
    if raw.format == "parquet":
        try:
            parquet = pq.ParquetFile(raw.path)
            check_columns(list(parquet.schema_arrow.names), expected, raw.uri)
            batches = parquet.iter_batches(batch_size=BATCH_ROWS, columns=list(spec.raw_columns()))
            offset = 0
            for batch in batches:
                with rows_after(offset):
                    table = parquet_as_read(pa.Table.from_batches([batch]), spec, types, raw.uri)
                yield offset, table
                offset += batch.num_rows
        except (pa.ArrowException, OSError) as exc:
            raise DataValidationError(
                f"{raw.uri} is not a readable Parquet file (truncated or corrupt?): {exc}"
            ) from exc
        return
    refuse_list_tensors(raw, spec)
    header = csv_header(raw)
    check_columns(header, expected, raw.uri)
    options = pcsv.ReadOptions(use_threads=True, block_size=PARSE_BLOCK)
    convert = csv_convert_options(spec, types)
    offset = 0
    for chunk in csv_chunks(raw):
        try:
            table = pcsv.read_csv(pa.BufferReader(chunk), read_options=options, convert_options=convert)
        except pa.ArrowInvalid as exc:
            if "Empty CSV file" in str(exc):
                continue
            raise explain_csv_error(raw, spec, header, types, exc) from exc
        if table.num_rows:
            yield offset, table
            offset += table.num_rows


def csv_chunks(raw: RawFile, size: int = BATCH_BYTES) -> Iterator[bytes]:
    """The part as CSV texts of about ``size`` bytes, each the header plus whole lines.

    pyarrow's streaming CSV reader reads its input ahead without bound (a whole local part lands in memory), so
    the part is cut here at line ends instead; like pyarrow's default parse (``newlines_in_values=False``), a line
    end always ends a row.
    """
    with raw.path.open("rb") as handle:
        header = handle.readline()
        rest = b""
        while data := handle.read(size):
            data = rest + data
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                rest = data
                continue
            yield header + data[:cut]
            rest = data[cut:]
        if rest.strip():
            yield header + rest


def with_vocabularies(spec: DatasetSpec, parts: Parts) -> DatasetSpec:
    """The spec with every undeclared category list filled from the data (sorted), learnt in one narrow pass."""
    open_columns = [c.name for c in spec.columns if isinstance(c, CategoryColumn) and c.categories is None]
    if not open_columns:
        return spec
    found: dict[str, set[str]] = {name: set() for name in open_columns}
    for raw in parts.files:
        for table in _string_columns(raw, open_columns):
            for name in open_columns:
                found[name].update(v for v in pc.unique(table.column(name)).to_pylist() if v is not None)
    columns = tuple(
        c.model_copy(update={"categories": tuple(sorted(found[c.name])) or None}) if c.name in found else c
        for c in spec.columns
    )
    return spec.model_copy(update={"columns": columns})


def _string_columns(raw: RawFile, names: list[str]) -> Iterator[pa.Table]:
    if raw.format == "parquet":
        for batch in pq.ParquetFile(raw.path).iter_batches(batch_size=BATCH_ROWS, columns=names):
            yield pa.Table.from_batches([batch])
        return
    convert = pcsv.ConvertOptions(
        include_columns=names,
        column_types=dict.fromkeys(names, pa.string()),
        null_values=[""],
        strings_can_be_null=True,
    )
    for chunk in csv_chunks(raw):
        try:
            yield pcsv.read_csv(pa.BufferReader(chunk), convert_options=convert)
        except pa.ArrowInvalid:
            return  # the main pass explains it


# --------------------------------------------------------------------------- splitting


class SplitAssigner:
    """Split codes (0 train, 1 val, 2 test) for rows arriving batch by batch; see the module docstring."""

    def __init__(self, params: PrepareParams, block: int = BLOCK) -> None:
        self.salt = int(splitmix64(np.array([params.seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0])
        self.block = block
        _, self.n_val, self.n_test = allocate(block, params.val_fraction, params.test_fraction)
        self.val_fraction, self.test_fraction = params.val_fraction, params.test_fraction
        self.seen: dict[int, int] = {}
        self.patterns: dict[int, tuple[int, np.ndarray]] = {}

    def by_stratum(self, strata: np.ndarray) -> np.ndarray:
        """Each row's split, every stratum (class) cut into blocks placed by a seeded permutation."""
        code = np.empty(len(strata), dtype=np.int8)
        values, inverse = np.unique(strata, return_inverse=True)
        for j, value in enumerate(values.tolist()):
            members = np.flatnonzero(inverse.ravel() == j)
            start = self.seen.get(value, 0)
            ranks = start + np.arange(len(members))
            self.seen[value] = start + len(members)
            blocks = ranks // self.block
            for b in range(int(blocks[0]), int(blocks[-1]) + 1):
                chosen = blocks == b
                code[members[chosen]] = self._pattern(value, b)[ranks[chosen] % self.block]
        return code

    def _pattern(self, stratum: int, block: int) -> np.ndarray:
        cached = self.patterns.get(stratum)
        if cached is not None and cached[0] == block:
            return cached[1]
        mix = splitmix64(np.array([(stratum * 0x9E3779B1 + block) & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0]
        keys = splitmix64(np.arange(self.block, dtype=np.uint64) ^ np.uint64(self.salt) ^ mix, inplace=True)
        order = np.argsort(keys, kind="stable")
        pattern = np.zeros(self.block, dtype=np.int8)
        pattern[order[: self.n_test]] = 2
        pattern[order[self.n_test : self.n_test + self.n_val]] = 1
        self.patterns[stratum] = (block, pattern)
        return pattern

    def by_group(self, group_hashes: np.ndarray) -> np.ndarray:
        """Each row's split from its group's hash: a group always lands in one split."""
        mixed = splitmix64(group_hashes ^ np.uint64(self.salt))
        unit = (mixed >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
        return np.where(
            unit < self.test_fraction, 2, np.where(unit < self.test_fraction + self.val_fraction, 1, 0)
        ).astype(np.int8)


def group_hashes(table: pa.Table, spec: DatasetSpec, where: str) -> np.ndarray:
    """A 64-bit hash of each row's group value (its text), the same in every batch and part."""
    name = str(spec.split.group_column)
    values = table.column(name)
    if values.null_count:
        raise DataValidationError(
            f"{where}: {first_problem(name, pc.is_null(values), 'missing group value(s)', values)} ({ROWS_NOTE})"
        )
    encoded = pc.dictionary_encode(pc.cast(values, pa.string()).combine_chunks())
    keys = np.array(
        [
            int.from_bytes(hashlib.blake2b(str(v).encode(), digest_size=8).digest(), "little")
            for v in encoded.dictionary.to_pylist()
        ],
        dtype=np.uint64,
    )
    return keys[arrays.values(pc.cast(encoded.indices, pa.int64()))]


# --------------------------------------------------------------------------- the pass


@dataclass
class Stream:
    """One pass over the parts: check, split, drop or reject duplicates, write; what the manifest needs."""

    parts: Parts
    spec: DatasetSpec
    params: PrepareParams
    rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLIT_NAMES, 0))
    counts: dict[str, dict[Any, int]] = field(default_factory=lambda: {name: {} for name in SPLIT_NAMES})
    moments: dict[str, tuple[int, float, float, float, float]] = field(default_factory=dict)
    duplicates_found: int = 0
    dropped: int = 0
    examples: list[tuple[int, int]] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)

    @property
    def vocabularies(self) -> dict[str, list[str]]:
        return {c.name: list(c.categories or ()) for c in self.spec.columns if isinstance(c, CategoryColumn)}

    def write(self, folder: str, store: ObjectStore) -> dict[str, SplitFile]:
        policy = "drop" if self.params.drop_duplicates else self.spec.duplicates
        seen = SeenRows() if policy != "allow" else None
        assigner = SplitAssigner(self.params)
        method = self.spec.split_method
        writers: SplitWriters | None = None
        total = 0
        try:
            for raw in self.parts.files:
                self.starts.append(total)
                for offset, table in read_batches(raw, self.spec):
                    with rows_after(offset):
                        stored, target, _ = conform_values(table, self.spec, raw.uri)
                        groups = group_hashes(table, self.spec, raw.uri) if method == "group" else None
                    del table
                    ids = np.arange(total, total + stored.num_rows, dtype=np.int64)
                    if groups is not None:
                        code = assigner.by_group(groups)
                    else:
                        code = assigner.by_stratum(target if method == "stratified" else np.zeros(len(ids), np.int64))
                    if seen is not None:
                        self._duplicates(seen, row_hashes(stored), ids, code, policy)
                    self._tally(code, target)
                    if writers is None:
                        writers = SplitWriters(folder, stored.schema, self._shares())
                    for k, name in enumerate(SPLIT_NAMES):
                        selected = code == k
                        count = int(np.count_nonzero(selected))
                        part = stored if count == stored.num_rows else stored.filter(arrays.mask(selected))
                        for batch in part.to_batches() if count else ():
                            writers.add(name, batch)
                    total += len(ids)
            self._check_filled(total)
            if writers is None:  # _check_filled refused an input without rows
                return {}
            return writers.close(store)
        finally:
            if writers is not None:
                writers.abandon()

    def _shares(self) -> dict[str, float]:
        """Each split's expected share of the rows, to balance the writer threads."""
        val, test = self.params.val_fraction, self.params.test_fraction
        return {"train": 1.0 - val - test, "val": val, "test": test}

    def _duplicates(self, seen: SeenRows, hashes: np.ndarray, ids: np.ndarray, code: np.ndarray, policy: str) -> None:
        first = seen.add(hashes, ids)
        repeats = np.flatnonzero(first != ids)
        if not len(repeats):
            return
        self.duplicates_found += len(repeats)
        for i in repeats[: max(0, 5 - len(self.examples))]:
            self.examples.append((int(ids[i]) + 1, int(first[i]) + 1))
        if policy == "reject":
            row, earlier = int(ids[repeats[0]]), int(first[repeats[0]])
            raise DataValidationError(
                f"{self.parts.uri}: a duplicate row (identical to an earlier row in every column): {self._where(row)} "
                f"repeats {self._where(earlier)} ({ROWS_NOTE}, in each part); remove duplicates, or set "
                "duplicates: drop (or allow) in the dataset spec"
            )
        code[repeats] = -1
        self.dropped += len(repeats)

    def _where(self, row: int) -> str:
        part = bisect.bisect_right(self.starts, row) - 1
        return f"data row {row - self.starts[part] + 1} of part {self.parts.keys[part]!r}"

    def _tally(self, code: np.ndarray, target: np.ndarray) -> None:
        for k, name in enumerate(SPLIT_NAMES):
            values = target[code == k]
            self.rows[name] += len(values)
            if not len(values):
                continue
            if self.spec.target.type == "class":
                found, counts = np.unique(values, return_counts=True)
                for value, count in zip(found.tolist(), counts.tolist(), strict=True):
                    self.counts[name][value] = self.counts[name].get(value, 0) + count
            else:
                self.moments[name] = _combine(self.moments.get(name), values)

    def summary(self) -> dict[str, dict[str, float]]:
        """Mean, std, min and max of a regression target per split."""
        if self.spec.target.type == "class":
            return {}
        return {
            name: {"mean": mean, "std": float(np.sqrt(m2 / n)), "min": low, "max": high}
            for name, (n, mean, m2, low, high) in self.moments.items()
        }

    def _check_filled(self, total: int) -> None:
        where = self.parts.uri
        if total == 0:
            raise DataValidationError(f"{where}: the parts hold headers but no data rows")
        if self.spec.split_method == "group":
            empty = [name for name in SPLIT_NAMES if not self.rows[name]]
            if empty:
                raise DataValidationError(
                    f"{where}: split.group_column {self.spec.split.group_column!r}: the groups left "
                    f"{' and '.join(empty)} without rows (one group, or too few groups, hold everything); add groups "
                    "or change the fractions"
                )
            return
        need = min_rows_per_class(self.params.val_fraction, self.params.test_fraction)
        if self.spec.split_method == "random":
            if total < need or not all(self.rows.values()):
                raise DataValidationError(
                    f"{where}: {total} row(s) are too few to split into train/val/test (need {need})"
                )
            return
        names = list(self.spec.target.classes or ())
        short = []
        for i, value in enumerate(stored_classes(self.spec)):
            per_split = [self.counts[name].get(value, 0) for name in SPLIT_NAMES]
            if sum(per_split) < need or min(per_split) == 0:
                short.append(
                    f"class {names[i]!r} has {sum(per_split)} row(s) (train/val/test {'/'.join(map(str, per_split))})"
                )
        if short:
            raise DataValidationError(
                f"{where}: too few rows to split every class into train/val/test: {'; '.join(short)}; each class needs "
                f"at least {need} rows with val_fraction={self.params.val_fraction} and "
                f"test_fraction={self.params.test_fraction}, and more when read in parts (the split is by blocks of "
                f"{BLOCK} rows)"
            )


def _combine(
    running: tuple[int, float, float, float, float] | None, values: np.ndarray
) -> tuple[int, float, float, float, float]:
    """(n, mean, M2, min, max) of everything so far, merged with ``values`` (Chan's parallel formula)."""
    n_b, mean_b = len(values), float(values.mean())
    m2_b = float(((values - mean_b) ** 2).sum())
    low_b, high_b = float(values.min()), float(values.max())
    if running is None:
        return n_b, mean_b, m2_b, low_b, high_b
    n_a, mean_a, m2_a, low_a, high_a = running
    n = n_a + n_b
    delta = mean_b - mean_a
    return (
        n,
        mean_a + delta * n_b / n,
        m2_a + m2_b + delta * delta * n_a * n_b / n,
        min(low_a, low_b),
        max(high_a, high_b),
    )
