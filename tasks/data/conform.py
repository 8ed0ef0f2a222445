"""Check a table read by a dataset spec (:mod:`tasks.data.spec_reader`) against it, build the table the splits
store, and split its rows by the spec's split method.

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

from tasks.core.dataset_spec import BooleanColumn, CategoryColumn, DatasetSpec, FloatColumn, IntegerColumn, TensorColumn
from tasks.core.errors import DataValidationError
from tasks.data import arrays
from tasks.data.duplicate_rows import table_repeats
from tasks.data.raw_file import MAX_LISTED, ROWS_NOTE, data_row, first_problem, problem_listing
from tasks.data.schema import PrepareParams
from tasks.data.spec_reader import float_type
from tasks.data.split import allocate, min_rows_per_class, splitmix64, stratified_split


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


# --------------------------------------------------------------------------- checks


def conform(table: pa.Table, spec: DatasetSpec, params: PrepareParams, where: str) -> Conformed:
    """Check every value against the spec, encode categories, booleans and string classes; see the module doc."""
    out, target, vocabularies = conform_values(table, spec, where)
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


def conform_values(table: pa.Table, spec: DatasetSpec, where: str) -> tuple[pa.Table, np.ndarray, dict[str, list[str]]]:
    """(stored table, target values, category vocabularies): the checks and encodings one row at a time allows.

    Whole-table rules (duplicates, class sizes, group ids) are left to the caller, so a batch of a larger input
    can be checked on its own (``tasks.data.streaming``).
    """
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
        raise DataValidationError(problem_listing(where, f"bad feature values in {len(problems)} place(s)", problems))
    target_column, target = _check_target(table, spec, where)
    stored[spec.target.name] = target_column
    return pa.table(stored), target, vocabularies


def _null_problems(name: str, values: pa.ChunkedArray, nullable: bool) -> list[str]:
    if values.null_count and not nullable:
        return [
            first_problem(
                name, pc.is_null(values), "missing value(s) (empty field; the column is not nullable)", values
            )
        ]
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
            out.append(first_problem(name, nan, "NaN value(s) (the column is not nullable)", values))
        inf = pc.is_inf(values)
        if pc.any(inf).as_py():
            out.append(first_problem(name, inf, "infinite value(s)", values))
    if low is not None or high is not None:
        outside = pc.or_(
            pc.less(values, -np.inf if low is None else low), pc.greater(values, np.inf if high is None else high)
        )
        if floats:
            outside = pc.and_(outside, pc.invert(pc.is_inf(values)))
        if pc.any(outside).as_py():
            shown = f"[{'-inf' if low is None else _num(low)}, {'inf' if high is None else _num(high)}]"
            out.append(first_problem(name, outside, f"value(s) outside the allowed range {shown}", values))
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
        declared = ", ".join(repr(v) for v in vocabulary[:MAX_LISTED])
        what = f"value(s) not among the categories ({declared})"
        return codes, vocabulary, first_problem(column.name, unknown, what, values)
    return codes, vocabulary, None


def _check_target(table: pa.Table, spec: DatasetSpec, where: str) -> tuple[pa.Array, np.ndarray]:
    """(stored target column, its values as numpy): class values/indices (int64) or floats (float64)."""
    target = spec.target
    name = target.name
    values = table.column(name)
    if values.null_count:
        raise DataValidationError(
            f"{where}: {first_problem(name, pc.is_null(values), 'missing target value(s)', values)} ({ROWS_NOTE})"
        )
    if target.type == "float":
        for mask, what in (
            (pc.is_nan(values), "NaN target value(s): a regression target needs a number in every row"),
            (pc.is_inf(values), "infinite target value(s)"),
        ):
            if pc.any(mask).as_py():
                raise DataValidationError(f"{where}: {first_problem(name, mask, what, values)} ({ROWS_NOTE})")
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
        found.setdefault(values[int(row)].as_py(), []).append(data_row(int(row)))
    parts = []
    for value, at in list(found.items())[:MAX_LISTED]:
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
            f"{where}: {first_problem(name, pc.is_null(values), 'missing group value(s)', values)} ({ROWS_NOTE})"
        )
    distinct = pc.unique(values.combine_chunks())
    ordered = distinct.take(pc.sort_indices(distinct))
    ids = pc.index_in(values, value_set=ordered)
    return np.asarray(pc.cast(ids.combine_chunks(), pa.int64()).to_numpy(zero_copy_only=False), dtype=np.int64)


def _handle_duplicates(conformed: Conformed, policy: str, where: str) -> None:
    """Rows identical in every stored column (features and target): reject, or drop all but the first."""
    repeated, first_of = table_repeats(conformed.table)
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
