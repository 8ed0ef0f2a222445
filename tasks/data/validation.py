"""Check a parsed table against its schema: values, labels, duplicates and class sizes, vectorised.

Every check runs on whole columns (numpy over Arrow buffers without copies where possible) and only
goes looking for the first offending row once a column is known to be bad, so a clean million-row file
costs a fraction of a second. Each failure raises :class:`DataValidationError` naming the column, the
1-based data row and what was expected.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.core.errors import DataValidationError
from tasks.data import arrays
from tasks.data.duplicate_rows import FNV_OFFSET, FNV_PRIME, repeated_rows
from tasks.data.raw_file import MAX_LISTED, ROWS_NOTE, first_problem, problem_listing
from tasks.data.schema import DatasetSchema, PrepareParams
from tasks.data.split import class_counts, min_rows_per_class, splitmix64


@dataclass(frozen=True)
class Duplicates:
    """Rows identical to an earlier row in every column: ``rows[i]`` repeats ``first[i]`` (0-based)."""

    rows: np.ndarray
    first: np.ndarray

    @property
    def count(self) -> int:
        return len(self.rows)

    def examples(self, limit: int = 5) -> list[tuple[int, int]]:
        """(data row, earlier data row it repeats), 1-based, for messages and the manifest."""
        return [(int(r) + 1, int(f) + 1) for r, f in zip(self.rows[:limit], self.first[:limit], strict=True)]


@dataclass(frozen=True)
class Checked:
    """What validation learned about a table that passed, and what the split needs.

    ``keep`` lists the row ids to use (ascending; ``None`` means every row) and ``labels`` their
    labels, aligned with ``keep``.
    """

    keep: np.ndarray | None
    labels: np.ndarray
    duplicates: Duplicates
    dropped: int


def validate(table: pa.Table, schema: DatasetSchema, params: PrepareParams, where: str) -> tuple[pa.Table, Checked]:
    """Run every check in the order a user would fix things; raise on the first kind of problem found.

    Returns the table to publish (the label column as int64) and what the checks found.
    """
    if table.num_rows == 0:
        raise DataValidationError(f"{where} has a header but no data rows")
    partial, suspicious = scan_features(table, schema)
    check_features(table, schema, where, suspicious)
    table, labels = check_labels(table, schema, where)
    duplicates = find_duplicates(table, schema, labels, finish_hashes(partial, labels))
    del partial  # 8 bytes a row, no longer needed
    keep: np.ndarray | None = None
    dropped = 0
    if duplicates.count:
        if not params.drop_duplicates:
            raise DataValidationError(_duplicates_message(where, duplicates))
        mask = np.ones(table.num_rows, dtype=bool)
        mask[duplicates.rows] = False
        keep = np.flatnonzero(mask)
        labels = labels[mask]
        dropped = duplicates.count
    check_class_sizes(labels, schema, params, where)
    return table, Checked(keep=keep, labels=labels, duplicates=duplicates, dropped=dropped)


def labels_ahead(
    table: pa.Table, schema: DatasetSchema, params: PrepareParams, where: str
) -> tuple[pa.Table, np.ndarray] | None:
    """The table (label as int64) and its labels, when the labels and class sizes pass by themselves and no dropped
    duplicate can change them (``drop_duplicates`` off); None otherwise.

    The split depends on nothing else then, so the splits can be written while :func:`check_values` checks the
    rest. On None, :func:`validate` checks everything in order.
    """
    if table.num_rows == 0 or params.drop_duplicates:
        return None
    try:
        table, labels = check_labels(table, schema, where)
        check_class_sizes(labels, schema, params, where)
    except DataValidationError:
        return None  # validate says it, after any problem in the features
    return table, labels


def check_values(table: pa.Table, schema: DatasetSchema, labels: np.ndarray, where: str) -> Checked:
    """The rest of :func:`validate` after :func:`labels_ahead`: the features, then duplicates (refused, as
    ``drop_duplicates`` is off); raises what :func:`validate` would raise."""
    partial, suspicious = scan_features(table, schema)
    check_features(table, schema, where, suspicious)
    hashes = finish_hashes(partial, labels)
    hashes.sort()  # in place: this runs while the splits are written, so no second 8 bytes a row
    if not bool(np.any(hashes[1:] == hashes[:-1])):
        none = np.empty(0, dtype=np.int64)
        return Checked(keep=None, labels=labels, duplicates=Duplicates(rows=none, first=none), dropped=0)
    del hashes, partial
    duplicates = find_duplicates(table, schema, labels)  # a hash repeats: hashed again in row order, found exactly
    if duplicates.count:
        raise DataValidationError(_duplicates_message(where, duplicates))
    return Checked(keep=None, labels=labels, duplicates=duplicates, dropped=0)


# --------------------------------------------------------------------------- feature values


def scan_features(table: pa.Table, schema: DatasetSchema) -> tuple[np.ndarray, set[str]]:
    """One cache-friendly pass over every feature: per-row hash of the values, and columns that look wrong.

    Works batch by batch on numpy views so the running hash stays in cache; a column is "suspicious" when it
    has nulls or its min/max is NaN, infinite or outside the range (NaN propagates through min/max, so clean
    columns cost two reductions). Returns (partial row hashes, suspicious).
    """
    low, high = _bounds(schema)
    features = table.select(list(schema.features))
    suspicious = {name for name in schema.features if features.column(name).null_count}
    hashes = np.full(table.num_rows, FNV_OFFSET, dtype=np.uint64)
    offset = 0
    for batch in _batches_of(features, SCAN_ROWS):
        rows = batch.num_rows
        if rows == 0:
            continue
        running = hashes[offset : offset + rows]
        scratch: dict[np.dtype, np.ndarray] = {}
        for j, name in enumerate(schema.features):
            column = batch.column(j)
            values = arrays.view(column)  # values behind nulls are garbage; such columns are suspicious anyway
            if name not in suspicious:
                lowest, highest = values.min(), values.max()
                if not (lowest >= low and highest <= high):  # False for NaN; inf is beyond any finite bound
                    suspicious.add(name)
            running ^= _bits(values, scratch)
            running *= FNV_PRIME
        offset += rows
    return hashes, suspicious


# Rows a feature scan takes at once: the parser's 1 MB blocks hold a few thousand rows each, and four numpy calls
# per column per block cost more than the work; 65,536 rows keep the running hash (512 KB) in a core's cache.
SCAN_ROWS = 65_536


def _batches_of(table: pa.Table, rows: int) -> Iterator[pa.RecordBatch]:
    """The table in record batches of ``rows`` rows (the last fewer), small chunks joined (zero-copy within one)."""
    for offset in range(0, table.num_rows, rows):
        yield from table.slice(offset, rows).combine_chunks(memory_pool=arrays.pool()).to_batches()


def _bits(values: np.ndarray, scratch: dict[np.dtype, np.ndarray]) -> np.ndarray:
    """The values' bits as unsigned integers of the same width; floats with -0.0 turned into 0.0 first."""
    unsigned = np.dtype(f"u{values.dtype.itemsize}")
    if values.dtype.kind != "f":
        return values.view(unsigned)
    out = scratch.get(values.dtype)
    if out is None or len(out) != len(values):
        out = scratch[values.dtype] = np.empty(len(values), dtype=values.dtype)
    np.add(values, 0, out=out)  # -0.0 -> 0.0: equal values hash alike
    return out.view(unsigned)


def _bounds(schema: DatasetSchema) -> tuple[float, float]:
    """The declared range, or the largest finite values of the feature type (so inf is always out)."""
    if schema.value_range is not None:
        return schema.value_range
    largest = float(np.finfo(np.float32 if schema.dtype == "float32" else np.float64).max)
    return -largest, largest


def finish_hashes(partial: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Fold the label into the feature hashes and mix, in place: one well-spread 64-bit hash per row."""
    partial ^= labels.view(np.uint64) if labels.dtype == np.int64 else labels.astype(np.uint64)
    return splitmix64(partial, inplace=True)


def check_features(table: pa.Table, schema: DatasetSchema, where: str, suspicious: set[str] | None = None) -> None:
    """No missing, NaN or infinite values and everything inside the declared range, in every feature column."""
    if suspicious is None:
        suspicious = scan_features(table, schema)[1]
    low, high = schema.value_range if schema.value_range is not None else (-np.inf, np.inf)
    problems: list[str] = []
    for name in schema.features:
        if name in suspicious:
            problems.extend(_feature_problems(name, table.column(name), low, high, schema))
    if problems:
        raise DataValidationError(problem_listing(where, f"bad feature values in {len(problems)} place(s)", problems))


def _feature_problems(name: str, column: pa.ChunkedArray, low: float, high: float, schema: DatasetSchema) -> list[str]:
    out: list[str] = []
    if column.null_count:
        out.append(first_problem(name, pc.is_null(column), "missing value(s) (empty field)", column))
    nan = pc.is_nan(column)
    if pc.any(nan).as_py():
        out.append(first_problem(name, nan, "NaN value(s)", column))
    inf = pc.is_inf(column)
    if pc.any(inf).as_py():
        out.append(first_problem(name, inf, "infinite value(s) (or too large for the column's type)", column))
    finite = pc.and_(pc.invert(nan), pc.invert(inf))
    outside = pc.and_(finite, pc.or_(pc.less(column, low), pc.greater(column, high)))
    if pc.any(outside).as_py():
        out.append(
            first_problem(name, outside, f"value(s) outside the allowed range {schema.describe_range()}", column)
        )
    return out


# --------------------------------------------------------------------------- labels


def check_labels(table: pa.Table, schema: DatasetSchema, where: str) -> tuple[pa.Table, np.ndarray]:
    """Labels present, whole numbers and in the allowed set; returns the table with an int64 label."""
    name = schema.label
    column = table.column(name)
    if column.null_count:
        first = first_problem(name, pc.is_null(column), "missing label(s)", column)
        raise DataValidationError(f"{where}: {first} ({ROWS_NOTE})")
    if pa.types.is_floating(column.type):
        column = _integral_labels(name, column, where)
        table = table.set_column(table.schema.get_field_index(name), name, column)
    labels = arrays.values(column)
    allowed = np.asarray(schema.labels, dtype=np.int64)
    known = np.isin(labels, allowed)
    if not known.all():
        raise DataValidationError(_unknown_labels_message(where, schema, labels, np.flatnonzero(~known)))
    return table, labels


def _integral_labels(name: str, column: pa.ChunkedArray, where: str) -> pa.ChunkedArray:
    """A float label column (Parquet written by pandas) is fine when every value is a whole number."""
    for mask, what in ((pc.is_nan(column), "NaN label(s)"), (pc.is_inf(column), "infinite label(s)")):
        if pc.any(mask).as_py():
            raise DataValidationError(f"{where}: {first_problem(name, mask, what, column)} ({ROWS_NOTE})")
    fractional = pc.not_equal(column, pc.floor(column))
    if pc.any(fractional).as_py():
        raise DataValidationError(
            f"{where}: {first_problem(name, fractional, 'non-integer label(s)', column)}; labels must be whole numbers "
            f"({ROWS_NOTE})"
        )
    return pc.cast(column, pa.int64())


def _unknown_labels_message(where: str, schema: DatasetSchema, labels: np.ndarray, bad: np.ndarray) -> str:
    values, first_index, counts = np.unique(labels[bad], return_index=True, return_counts=True)
    order = np.argsort(first_index, kind="stable")  # in the order they first appear
    parts = []
    for i in order[:MAX_LISTED]:
        rows = bad[labels[bad] == values[i]][:3] + 1
        listed = ", ".join(str(int(r)) for r in rows)
        plural = "s" if counts[i] > 1 else ""
        more = ", ..." if counts[i] > 3 else ""
        parts.append(f"{int(values[i])} ({int(counts[i])} row{plural}: data row{plural} {listed}{more})")
    more_values = f" and {len(values) - MAX_LISTED} more value(s)" if len(values) > MAX_LISTED else ""
    return (
        f"{where}: column {schema.label!r} holds {len(bad)} row(s) with labels outside the allowed "
        f"{schema.describe_labels()}: {'; '.join(parts)}{more_values} ({ROWS_NOTE})"
    )


# --------------------------------------------------------------------------- duplicates


def row_hashes(table: pa.Table, schema: DatasetSchema, labels: np.ndarray) -> np.ndarray:
    """A 64-bit hash per row over every column (FNV-style over the value bits, then splitmix64).

    -0.0 and 0.0 hash alike (they compare equal). Collisions are possible and are resolved exactly by
    :func:`find_duplicates`, so the hash only has to be fast and well spread.
    """
    return finish_hashes(scan_features(table, schema)[0], labels)


def find_duplicates(
    table: pa.Table, schema: DatasetSchema, labels: np.ndarray, hashes: np.ndarray | None = None
) -> Duplicates:
    """Rows that repeat an earlier row exactly (every feature and the label); the first one is not counted."""
    if hashes is None:
        hashes = row_hashes(table, schema, labels)
    rows, first = repeated_rows(hashes, lambda candidates: _records(table, schema, labels, candidates))
    return Duplicates(rows=rows, first=first)


def _records(table: pa.Table, schema: DatasetSchema, labels: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """The candidate rows' bytes, every feature then the label: what two rows must share to be duplicates."""
    subset = table.select(list(schema.features)).take(arrays.indices(candidates))
    width = sum(subset.schema.field(n).type.byte_width for n in schema.features) + 8
    record = np.empty((len(candidates), width), dtype=np.uint8)
    offset = 0
    for name in schema.features:
        values = arrays.values(subset.column(name))
        values = values + values.dtype.type(0)
        size = values.dtype.itemsize
        record[:, offset : offset + size] = values.view(np.uint8).reshape(-1, size)
        offset += size
    record[:, offset:] = labels[candidates].astype(np.int64).view(np.uint8).reshape(-1, 8)
    return record


def _duplicates_message(where: str, duplicates: Duplicates) -> str:
    examples = ", ".join(f"data row {row} repeats data row {first}" for row, first in duplicates.examples())
    return (
        f"{where}: {duplicates.count} duplicate row(s) (identical to an earlier row in every column), e.g. "
        f"{examples} ({ROWS_NOTE}); remove them or run with drop_duplicates=True to drop them (the first of each "
        f"is kept)"
    )


# --------------------------------------------------------------------------- class sizes


def check_class_sizes(labels: np.ndarray, schema: DatasetSchema, params: PrepareParams, where: str) -> None:
    """Every allowed class must have enough rows for a row in each of train, val and test."""
    need = min_rows_per_class(params.val_fraction, params.test_fraction)
    counts = class_counts(labels, schema.labels)
    short = [(label, count) for label, count in counts.items() if count < need]
    if short:
        listed = ", ".join(f"class {label} has {count} row{'s' if count != 1 else ''}" for label, count in short)
        raise DataValidationError(
            f"{where}: too few rows to split every class into train/val/test: {listed}; each class needs at least "
            f"{need} rows with val_fraction={params.val_fraction} and test_fraction={params.test_fraction}"
        )
