"""Read raw data by a dataset spec, check every value against it, and build the table the splits store.

What is stored (one column per stored feature, then the target):

- float and tensor elements as the spec's float type; integers as int64; booleans as 0/1 (int8);
  categories as int32 codes in vocabulary order (the vocabulary goes into the manifest); missing values of
  nullable columns stay missing (null);
- a class target as its value for integer classes, as the class index for string classes (the class names
  go into the manifest); a float target as float64.

Every failure is a :class:`DataValidationError` naming the column, the 1-based data row and what was
expected; nothing here writes anything, so a failure leaves nothing behind.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from tasks.core.dataset_spec import (
    BooleanColumn,
    CategoryColumn,
    DatasetSpec,
    FloatColumn,
    IntegerColumn,
    TensorColumn,
)
from tasks.core.errors import DataValidationError
from tasks.data import arrays
from tasks.data.ingest import (
    _CONVERSION,
    ROWS_NOTE,
    RawFile,
    _block_size,
    _csv_header,
    _empty,
    _first_ragged_line,
    _first_unparseable_csv,
    check_columns,
    first_unconvertible,
)
from tasks.data.schema import PrepareParams, _compact
from tasks.data.split import allocate, min_rows_per_class, splitmix64, stratified_split
from tasks.data.validation import _first, _listing

_MAX_LISTED = 8
_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = np.uint64(0x100000001B3)


@dataclass(frozen=True)
class _Expected:
    """What :func:`tasks.data.ingest.check_columns` needs to know about a spec."""

    columns: tuple[str, ...]

    def describe_columns(self) -> str:
        return _compact(self.columns)


@dataclass
class Conformed:
    """A table that passed every check of its spec, and what the split and the manifest need."""

    table: pa.Table  # stored columns: features (flattened), then the target
    labels: np.ndarray | None  # stored class values/indices, aligned with ``keep``; None for regression
    target: np.ndarray  # stored target values aligned with ``keep`` (class values/indices or floats)
    groups: np.ndarray | None  # group id per row (aligned with ``keep``) for a group split
    keep: np.ndarray | None  # row ids to use (ascending); None: every row
    duplicates_found: int = 0
    duplicates_dropped: int = 0
    duplicate_examples: list[tuple[int, int]] = field(default_factory=list)
    vocabularies: dict[str, list[str]] = field(default_factory=dict)


# --------------------------------------------------------------------------- types


def float_type(spec: DatasetSpec) -> pa.DataType:
    return pa.float32() if spec.dtype == "float32" else pa.float64()


def _read_types(spec: DatasetSpec) -> dict[str, pa.DataType]:
    """The Arrow type each raw column is parsed as (before checks and encoding)."""
    types: dict[str, pa.DataType] = {}
    kind = float_type(spec)  # parsed straight into the stored type: the same values the digits schema parses
    for column in spec.columns:
        if isinstance(column, TensorColumn):
            types.update(dict.fromkeys(column.element_columns(), kind))
        elif isinstance(column, FloatColumn):
            types[column.name] = kind
        elif isinstance(column, IntegerColumn):
            types[column.name] = pa.int64()
        elif isinstance(column, BooleanColumn):
            types[column.name] = pa.bool_()
        else:
            types[column.name] = pa.string()
    target = spec.target
    if target.type == "float":
        types[target.name] = pa.float64()
    else:
        types[target.name] = pa.string() if target.string_classes else pa.int64()
    group = spec.group_only()
    if group:
        types[group] = pa.string()
    return types


def _expected_text(spec: DatasetSpec, column: str, kind: pa.DataType) -> str:
    if column == spec.target.name:
        if spec.target.type == "float":
            return "numbers (a float regression target)"
        return f"integer class labels ({', '.join(str(c) for c in spec.target.classes or ())})"
    if pa.types.is_boolean(kind):
        return "booleans (true/false or 1/0)"
    if pa.types.is_integer(kind):
        return "whole numbers (integer)"
    if pa.types.is_floating(kind):
        return "numbers (float)"
    return "text"


# --------------------------------------------------------------------------- reading


def read_by_spec(raw: RawFile, spec: DatasetSpec) -> pa.Table:
    """The raw file's declared columns, parsed as the spec says; a value that does not parse names its row."""
    if raw.size == 0:
        raise _empty(raw)
    expected = _Expected(spec.raw_columns())
    types = _read_types(spec)
    if raw.format == "parquet":
        return _read_parquet(raw, spec, expected, types)
    header = _csv_header(raw)
    check_columns(header, expected, raw.uri)  # type: ignore[arg-type]
    convert = pcsv.ConvertOptions(
        column_types=types,
        include_columns=list(spec.raw_columns()),
        null_values=[""],
        strings_can_be_null=True,
    )
    options = pcsv.ReadOptions(use_threads=True, block_size=_block_size(raw.size))
    try:
        table = pcsv.read_csv(raw.path, read_options=options, convert_options=convert, memory_pool=arrays.pool())
    except pa.ArrowInvalid as exc:
        raise _explain(raw, spec, header, types, exc) from exc
    if table.num_rows == 0:
        raise DataValidationError(f"{raw.uri} has a header but no data rows")
    return table


def _explain(
    raw: RawFile, spec: DatasetSpec, header: list[str], types: dict[str, pa.DataType], exc: pa.ArrowInvalid
) -> DataValidationError:
    text = str(exc)
    if "Empty CSV file" in text:
        return DataValidationError(f"{raw.uri} has a header but no data rows")
    match = _CONVERSION.search(text)
    if match and int(match.group(1)) < len(header):
        column = header[int(match.group(1))]
        row, value = _first_unparseable_csv(raw, column, types[column])
        where = f"data row {row}" if row is not None else "a data row"
        shown = value if value is not None else match.group(3)
        return DataValidationError(
            f"{raw.uri}: column {column!r} must hold {_expected_text(spec, column, types[column])}, but {where} "
            f"holds {shown!r} ({ROWS_NOTE})"
        )
    if "CSV parse error" in text:
        located = _first_ragged_line(raw, header[0])
        if located is not None:
            line, want, actual, content = located
            return DataValidationError(
                f"{raw.uri}: line {line} of the file (header is line 1) has {actual} field(s), expected {want}: "
                f"{content[:80]!r}"
            )
    return DataValidationError(f"{raw.uri} is not a readable CSV file: {text}")


def _read_parquet(raw: RawFile, spec: DatasetSpec, expected: _Expected, types: dict[str, pa.DataType]) -> pa.Table:
    try:
        parquet = pq.ParquetFile(raw.path)
        check_columns(list(parquet.schema_arrow.names), expected, raw.uri)  # type: ignore[arg-type]
        table = parquet.read(columns=list(spec.raw_columns()), use_threads=True)
    except (pa.ArrowException, OSError) as exc:
        raise DataValidationError(f"{raw.uri} is not a readable Parquet file (truncated or corrupt?): {exc}") from exc
    if table.num_rows == 0:
        raise DataValidationError(f"{raw.uri} has the expected columns but no data rows")
    for name, kind in types.items():
        column = table.column(name)
        if column.type == kind:
            continue
        values = column.combine_chunks()
        if pa.types.is_string(kind) and not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
            if spec.target.name == name or pa.types.is_integer(values.type):
                cast = pc.cast(values, kind)
            else:
                raise DataValidationError(
                    f"{raw.uri}: column {name!r} has Parquet type {values.type}; expected text (category)"
                )
        else:
            index = first_unconvertible(values, kind)
            if index is not None:
                raise DataValidationError(
                    f"{raw.uri}: column {name!r} must hold {_expected_text(spec, name, kind)}, but data row "
                    f"{index + 1} holds {values[index].as_py()!r} ({ROWS_NOTE})"
                )
            cast = pc.cast(values, kind)
        table = table.set_column(table.schema.get_field_index(name), name, cast)
    return table


# --------------------------------------------------------------------------- checks


def conform(table: pa.Table, spec: DatasetSpec, params: PrepareParams, where: str) -> Conformed:
    """Check every value against the spec, encode categories, booleans and string classes; see the module doc."""
    problems: list[str] = []
    stored: dict[str, pa.ChunkedArray | pa.Array] = {}
    vocabularies: dict[str, list[str]] = {}
    kind = float_type(spec)
    for column in spec.columns:
        if isinstance(column, TensorColumn | FloatColumn):
            names = column.element_columns() if isinstance(column, TensorColumn) else (column.name,)
            for name in names:
                values = table.column(name)
                problems.extend(_number_problems(name, values, column.nullable, column.min, column.max, floats=True))
                stored[name] = pc.cast(values, kind)
        elif isinstance(column, IntegerColumn):
            values = table.column(column.name)
            problems.extend(_number_problems(column.name, values, column.nullable, column.min, column.max))
            stored[column.name] = values
        elif isinstance(column, BooleanColumn):
            values = table.column(column.name)
            problems.extend(_null_problems(column.name, values, column.nullable))
            stored[column.name] = pc.cast(values, pa.int8())
        elif isinstance(column, CategoryColumn):
            values = table.column(column.name)
            problems.extend(_null_problems(column.name, values, column.nullable))
            codes, vocabulary, problem = _encode_category(column, values)
            if problem:
                problems.append(problem)
            vocabularies[column.name] = vocabulary
            stored[column.name] = codes
    if problems:
        raise DataValidationError(_listing(where, f"bad feature values in {len(problems)} place(s)", problems))
    target_column, target = _check_target(table, spec, where)
    stored[spec.target.name] = target_column
    out = pa.table(stored)
    groups = _group_ids(table, spec, where) if spec.split_method == "group" else None
    conformed = Conformed(
        table=out,
        labels=target if spec.target.type == "class" else None,
        target=target,
        groups=groups,
        keep=None,
        vocabularies=vocabularies,
    )
    policy = "drop" if params.drop_duplicates else spec.duplicates
    if policy != "allow":
        _handle_duplicates(conformed, policy, where)
    if spec.split_method == "stratified":
        _check_class_sizes(conformed, spec, params, where)
    return conformed


def _null_problems(name: str, values: pa.ChunkedArray, nullable: bool) -> list[str]:
    if values.null_count and not nullable:
        return [_first(name, pc.is_null(values), "missing value(s) (empty field; the column is not nullable)", values)]
    return []


def _number_problems(
    name: str,
    values: pa.ChunkedArray,
    nullable: bool,
    low: float | None,
    high: float | None,
    *,
    floats: bool = False,
) -> list[str]:
    out = _null_problems(name, values, nullable)
    if not values.null_count and len(values):
        # Fast path, one pass over the values: NaN makes min/max NaN and fails the test, inf is out of any bound.
        numbers = arrays.values(values)
        lowest, highest = numbers.min(), numbers.max()
        inside = lowest >= (-np.inf if low is None else low) and highest <= (np.inf if high is None else high)
        if inside and (not floats or (np.isfinite(lowest) and np.isfinite(highest))):
            return out
    if floats:
        nan = pc.is_nan(values)
        if not nullable and pc.any(nan).as_py():
            out.append(_first(name, nan, "NaN value(s) (the column is not nullable)", values))
        inf = pc.is_inf(values)
        if pc.any(inf).as_py():
            out.append(_first(name, inf, "infinite value(s)", values))
    if low is not None or high is not None:
        outside = pc.or_(
            pc.less(values, -np.inf if low is None else low), pc.greater(values, np.inf if high is None else high)
        )
        if floats:
            outside = pc.and_(outside, pc.invert(pc.is_inf(values)))
        if pc.any(outside).as_py():
            shown = f"[{'-inf' if low is None else _num(low)}, {'inf' if high is None else _num(high)}]"
            out.append(_first(name, outside, f"value(s) outside the allowed range {shown}", values))
    return out


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _encode_category(column: CategoryColumn, values: pa.ChunkedArray) -> tuple[pa.Array, list[str], str | None]:
    """(int32 codes, vocabulary, problem or None): codes follow the declared order, else the sorted values."""
    if column.categories is not None:
        vocabulary = list(column.categories)
    else:
        vocabulary = sorted(v for v in pc.unique(values).to_pylist() if v is not None)
    codes = pc.index_in(values, value_set=pa.array(vocabulary, pa.string()))
    unknown = pc.and_(pc.is_null(codes), pc.is_valid(values))
    if pc.any(unknown).as_py():
        declared = ", ".join(repr(v) for v in vocabulary[:_MAX_LISTED])
        what = f"value(s) not among the categories ({declared})"
        return codes, vocabulary, _first(column.name, unknown, what, values)
    return codes, vocabulary, None


def _check_target(table: pa.Table, spec: DatasetSpec, where: str) -> tuple[pa.Array, np.ndarray]:
    """(stored target column, its values as numpy): class values/indices (int64) or floats (float64)."""
    target = spec.target
    name = target.name
    values = table.column(name)
    if values.null_count:
        raise DataValidationError(
            f"{where}: {_first(name, pc.is_null(values), 'missing target value(s)', values)} ({ROWS_NOTE})"
        )
    if target.type == "float":
        for mask, what in (
            (pc.is_nan(values), "NaN target value(s): a regression target needs a number in every row"),
            (pc.is_inf(values), "infinite target value(s)"),
        ):
            if pc.any(mask).as_py():
                raise DataValidationError(f"{where}: {_first(name, mask, what, values)} ({ROWS_NOTE})")
        problems = _number_problems(name, values, False, target.min, target.max, floats=True)
        if problems:
            raise DataValidationError(f"{where}: {problems[0]} ({ROWS_NOTE})")
        column = pc.cast(values, pa.float64()).combine_chunks()
        return column, arrays.view(column)
    classes = list(target.classes or ())
    value_set = pa.array(classes, pa.string() if target.string_classes else pa.int64())
    index = pc.index_in(values, value_set=value_set)
    unknown = pc.is_null(index)
    if pc.any(unknown).as_py():
        raise DataValidationError(_undeclared_message(where, name, values, unknown, classes))
    if target.string_classes:
        column = pc.cast(index, pa.int64()).combine_chunks()
    else:
        column = pc.cast(values, pa.int64()).combine_chunks()
    return column, arrays.view(column)


def _undeclared_message(
    where: str, name: str, values: pa.ChunkedArray, unknown: pa.ChunkedArray, classes: list[Any]
) -> str:
    rows = np.flatnonzero(np.asarray(unknown.to_pylist(), dtype=bool))
    found: dict[Any, list[int]] = {}
    for row in rows:
        found.setdefault(values[int(row)].as_py(), []).append(int(row) + 1)
    parts = []
    for value, at in list(found.items())[:_MAX_LISTED]:
        listed = ", ".join(str(r) for r in at[:3]) + (", ..." if len(at) > 3 else "")
        parts.append(f"{value!r} ({len(at)} row(s): data row(s) {listed})")
    declared = ", ".join(repr(c) for c in classes)
    return (
        f"{where}: column {name!r} holds {len(rows)} row(s) with a class not declared in the spec (classes: "
        f"{declared}): {'; '.join(parts)} ({ROWS_NOTE})"
    )


def _group_ids(table: pa.Table, spec: DatasetSpec, where: str) -> np.ndarray:
    """A dense id per row for the group column, numbered in sorted order of the group values."""
    name = str(spec.split.group_column)
    values = table.column(name)
    if values.null_count:
        raise DataValidationError(
            f"{where}: {_first(name, pc.is_null(values), 'missing group value(s)', values)} ({ROWS_NOTE})"
        )
    distinct = pc.unique(values.combine_chunks())
    ordered = distinct.take(pc.sort_indices(distinct))
    ids = pc.index_in(values, value_set=ordered)
    return np.asarray(pc.cast(ids.combine_chunks(), pa.int64()).to_numpy(zero_copy_only=False), dtype=np.int64)


def _column_bits(array: pa.Array) -> list[np.ndarray]:
    """A column's values as unsigned integers (nulls as 0, -0.0 as 0.0), plus a 0/1 null flag when it has nulls."""
    filled = pc.fill_null(array, pa.scalar(0, array.type)) if array.null_count else array
    values = arrays.view(filled)
    if values.dtype.kind == "f":
        values = values + values.dtype.type(0)  # -0.0 == 0.0
    out = [values.view(np.dtype(f"u{values.dtype.itemsize}"))]
    if array.null_count:
        out.append(np.asarray(array.is_null().to_pylist(), dtype=np.uint8))
    return out


def _find_repeats(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(rows, the earlier row each repeats), 0-based: a 64-bit hash per row, then an exact byte check of the rows
    whose hash occurs more than once (hash collisions are resolved, never trusted)."""
    columns = [bits for column in table.columns for bits in _column_bits(column.combine_chunks())]
    hashes = np.full(table.num_rows, _FNV_OFFSET, dtype=np.uint64)
    for bits in columns:
        hashes ^= bits.astype(np.uint64, copy=False)
        hashes *= _FNV_PRIME
    hashes = splitmix64(hashes, inplace=True)
    ordered = np.sort(hashes)
    repeated_hashes = ordered[1:][ordered[1:] == ordered[:-1]]
    if len(repeated_hashes) == 0:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty
    candidates = np.flatnonzero(np.isin(hashes, repeated_hashes))
    record = np.ascontiguousarray(
        np.concatenate([bits[candidates].view(np.uint8).reshape(len(candidates), -1) for bits in columns], axis=1)
    )
    keys = record.view(np.dtype((np.void, record.shape[1]))).ravel()
    _, first_index, inverse = np.unique(keys, return_index=True, return_inverse=True)
    first = candidates[first_index[inverse.ravel()]]
    again = first != candidates
    return candidates[again], first[again]


def _handle_duplicates(conformed: Conformed, policy: str, where: str) -> None:
    """Rows identical in every stored column (features and target): reject, or drop all but the first."""
    repeated, first_of = _find_repeats(conformed.table)
    if len(repeated) == 0:
        return
    examples = [(int(r) + 1, int(f) + 1) for r, f in zip(repeated[:5], first_of[:5], strict=True)]
    conformed.duplicates_found = len(repeated)
    conformed.duplicate_examples = examples
    if policy == "reject":
        listed = ", ".join(f"data row {r} repeats data row {f}" for r, f in examples)
        raise DataValidationError(
            f"{where}: {len(repeated)} duplicate row(s) (identical to an earlier row in every column), e.g. {listed} "
            f"({ROWS_NOTE}); remove them, or set duplicates: drop (or allow) in the dataset spec"
        )
    keep_mask = np.ones(conformed.table.num_rows, dtype=bool)
    keep_mask[repeated] = False
    conformed.keep = np.flatnonzero(keep_mask)
    conformed.duplicates_dropped = len(repeated)
    conformed.target = conformed.target[keep_mask]
    if conformed.labels is not None:
        conformed.labels = conformed.labels[keep_mask]
    if conformed.groups is not None:
        conformed.groups = conformed.groups[keep_mask]


def _check_class_sizes(conformed: Conformed, spec: DatasetSpec, params: PrepareParams, where: str) -> None:
    assert conformed.labels is not None
    need = min_rows_per_class(params.val_fraction, params.test_fraction)
    stored = stored_classes(spec)
    values, counts = np.unique(conformed.labels, return_counts=True)
    found = dict(zip(values.tolist(), counts.tolist(), strict=True))
    names = list(spec.target.classes or ())
    short = [(names[i], found.get(value, 0)) for i, value in enumerate(stored) if found.get(value, 0) < need]
    if short:
        listed = ", ".join(f"class {name!r} has {count} row(s)" for name, count in short)
        raise DataValidationError(
            f"{where}: too few rows to split every class into train/val/test: {listed}; each class needs at least "
            f"{need} rows with val_fraction={params.val_fraction} and test_fraction={params.test_fraction}"
        )


def stored_classes(spec: DatasetSpec) -> list[Any]:
    """The values a class target's column holds: the classes themselves (integers) or their indices (strings)."""
    classes = list(spec.target.classes or ())
    return list(range(len(classes))) if spec.target.string_classes else classes


# --------------------------------------------------------------------------- split


def split_rows(conformed: Conformed, spec: DatasetSpec, params: PrepareParams, where: str) -> dict[str, np.ndarray]:
    """Row ids (sorted) of train, val and test by the spec's split method."""
    n = len(conformed.target)
    if spec.split_method == "stratified":
        assert conformed.labels is not None
        labels = conformed.labels
    elif spec.split_method == "random":
        need = min_rows_per_class(params.val_fraction, params.test_fraction)
        if n < need:
            raise DataValidationError(f"{where}: {n} row(s) are too few to split into train/val/test (need {need})")
        labels = np.zeros(n, dtype=np.int64)
    else:
        assert conformed.groups is not None
        return _group_split(conformed, spec, params, where)
    return stratified_split(
        labels,
        val_fraction=params.val_fraction,
        test_fraction=params.test_fraction,
        seed=params.seed,
        row_ids=conformed.keep,
    )


def _group_split(conformed: Conformed, spec: DatasetSpec, params: PrepareParams, where: str) -> dict[str, np.ndarray]:
    """Whole groups to test, then val, in a seeded order of the groups, until each has its share of rows."""
    assert conformed.groups is not None
    groups = conformed.groups
    name = spec.split.group_column
    counts = np.bincount(groups)
    present = np.flatnonzero(counts)
    if len(present) < 3:
        largest = int(counts.max())
        raise DataValidationError(
            f"{where}: split.group_column {name!r} has {len(present)} group(s) (the largest holds {largest} of "
            f"{len(groups)} rows); a group split needs at least 3 groups so that train, val and test share none"
        )
    salt = splitmix64(np.array([params.seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0]
    order = present[np.argsort(splitmix64(present.astype(np.uint64) ^ salt), kind="stable")]
    _, want_val, want_test = allocate(len(groups), params.val_fraction, params.test_fraction)
    place = np.zeros(len(counts), dtype=np.int8)  # 0 train, 1 val, 2 test
    taken = {2: 0, 1: 0}
    queue = list(order)
    for code, want in ((2, want_test), (1, want_val)):
        while queue and taken[code] < want and len(queue) > 1:
            group = queue.pop(0)
            place[group] = code
            taken[code] += int(counts[group])
    if not queue or taken[1] == 0 or taken[2] == 0:
        raise DataValidationError(
            f"{where}: split.group_column {name!r}: the groups cannot fill train, val and test (the largest group "
            f"holds {int(counts.max())} of {len(groups)} rows); add groups or change the fractions"
        )
    code = place[groups]
    ids = conformed.keep if conformed.keep is not None else np.arange(len(groups), dtype=np.int64)
    return {name_: ids[code == k] for k, name_ in enumerate(("train", "val", "test"))}
