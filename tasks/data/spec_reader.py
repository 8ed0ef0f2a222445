"""Read a raw file by a dataset spec: each declared column parsed as the spec says (tensor elements and floats
as the spec's float type, integers, booleans, categories and string classes as text), only the declared columns.
A value that does not parse names its column, its 1-based data row and what was expected; checking the values
against the spec is :mod:`tasks.data.conform`.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from tasks.core.dataset_spec import BooleanColumn, DatasetSpec, FloatColumn, IntegerColumn, TensorColumn
from tasks.core.errors import DataValidationError
from tasks.data import arrays
from tasks.data.raw_file import (
    CSV_CONVERSION,
    PARSE_BLOCK,
    ROWS_NOTE,
    ExpectedColumns,
    RawFile,
    check_columns,
    csv_header,
    data_row,
    empty_file_error,
    first_ragged_line,
    first_unconvertible,
    first_unparseable_csv,
)


def float_type(spec: DatasetSpec) -> pa.DataType:
    return pa.float32() if spec.dtype == "float32" else pa.float64()


def read_types(spec: DatasetSpec) -> dict[str, pa.DataType]:
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


def refuse_list_tensors(raw: RawFile, spec: DatasetSpec) -> None:
    """A CSV file has no list columns: a tensor read from one needs Parquet input."""
    for tensor in spec.list_tensors():
        raise DataValidationError(
            f"{raw.uri}: tensor {tensor.name!r} reads the Parquet list column {tensor.column!r}, but this input is "
            "CSV; give Parquet input, or name the element columns with 'prefix' or 'columns'"
        )


def csv_convert_options(spec: DatasetSpec, types: dict[str, pa.DataType]) -> pcsv.ConvertOptions:
    """Only the declared columns, typed; only an empty field is missing."""
    return pcsv.ConvertOptions(
        column_types=types, include_columns=list(spec.raw_columns()), null_values=[""], strings_can_be_null=True
    )


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


def read_by_spec(raw: RawFile, spec: DatasetSpec) -> pa.Table:
    """The raw file's declared columns, parsed as the spec says; a value that does not parse names its row."""
    if raw.size == 0:
        raise empty_file_error(raw)
    expected = ExpectedColumns(spec.raw_columns())
    types = read_types(spec)
    if raw.format == "parquet":
        return _read_parquet(raw, spec, expected, types)
    refuse_list_tensors(raw, spec)
    header = csv_header(raw)
    check_columns(header, expected, raw.uri)
    convert = csv_convert_options(spec, types)
    options = pcsv.ReadOptions(use_threads=True, block_size=PARSE_BLOCK)
    try:
        table = pcsv.read_csv(raw.path, read_options=options, convert_options=convert, memory_pool=arrays.pool())
    except pa.ArrowInvalid as exc:
        raise explain_csv_error(raw, spec, header, types, exc) from exc
    if table.num_rows == 0:
        raise DataValidationError(f"{raw.uri} has a header but no data rows")
    return table


def explain_csv_error(
    raw: RawFile, spec: DatasetSpec, header: list[str], types: dict[str, pa.DataType], exc: pa.ArrowInvalid
) -> DataValidationError:
    text = str(exc)
    if "Empty CSV file" in text:
        return DataValidationError(f"{raw.uri} has a header but no data rows")
    match = CSV_CONVERSION.search(text)
    if match and int(match.group(1)) < len(header):
        column = header[int(match.group(1))]
        row, value = first_unparseable_csv(raw, column, types[column])
        where = f"data row {row}" if row is not None else "a data row"
        shown = value if value is not None else match.group(3)
        return DataValidationError(
            f"{raw.uri}: column {column!r} must hold {_expected_text(spec, column, types[column])}, but {where} "
            f"holds {shown!r} ({ROWS_NOTE})"
        )
    if "CSV parse error" in text:
        located = first_ragged_line(raw, header[0])
        if located is not None:
            line, want, actual, content = located
            return DataValidationError(
                f"{raw.uri}: line {line} of the file (header is line 1) has {actual} field(s), expected {want}: "
                f"{content[:80]!r}"
            )
    return DataValidationError(f"{raw.uri} is not a readable CSV file: {text}")


def _read_parquet(
    raw: RawFile, spec: DatasetSpec, expected: ExpectedColumns, types: dict[str, pa.DataType]
) -> pa.Table:
    try:
        parquet = pq.ParquetFile(raw.path)
        check_columns(list(parquet.schema_arrow.names), expected, raw.uri)
        table = parquet.read(columns=list(spec.raw_columns()), use_threads=True)
    except (pa.ArrowException, OSError) as exc:
        raise DataValidationError(f"{raw.uri} is not a readable Parquet file (truncated or corrupt?): {exc}") from exc
    if table.num_rows == 0:
        raise DataValidationError(f"{raw.uri} has the expected columns but no data rows")
    return parquet_as_read(table, spec, types, raw.uri)


def parquet_as_read(table: pa.Table, spec: DatasetSpec, types: dict[str, pa.DataType], uri: str) -> pa.Table:
    """Parquet columns cast to the types a CSV would have been parsed as; a value that does not convert is named.

    A tensor read from a list column becomes its element columns first (:func:`expand_list_tensor`).
    """
    for tensor in spec.list_tensors():
        table = expand_list_tensor(table, tensor, uri)
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
                    f"{uri}: column {name!r} has Parquet type {values.type}; expected text (category)"
                )
        else:
            index = first_unconvertible(values, kind)
            if index is not None:
                raise DataValidationError(
                    f"{uri}: column {name!r} must hold {_expected_text(spec, name, kind)}, but data row "
                    f"{data_row(index)} holds {values[index].as_py()!r} ({ROWS_NOTE})"
                )
            cast = pc.cast(values, kind)
        table = table.set_column(table.schema.get_field_index(name), name, cast)
    return table


def expand_list_tensor(table: pa.Table, tensor: TensorColumn, uri: str) -> pa.Table:
    """Replace a tensor's list column by one column per element (row-major); every row must hold ``size`` numbers.

    A missing list (null) leaves every element missing, which the checks accept only for a nullable tensor.
    """
    name = str(tensor.column)
    values = table.column(name).combine_chunks()
    if not (
        pa.types.is_list(values.type) or pa.types.is_large_list(values.type) or pa.types.is_fixed_size_list(values.type)
    ):
        raise DataValidationError(
            f"{uri}: column {name!r} has Parquet type {values.type}; expected a list of numbers (tensor "
            f"{tensor.name!r}, shape {list(tensor.shape)})"
        )
    lengths = pc.fill_null(pc.list_value_length(values), tensor.size)
    wrong = pc.not_equal(lengths, tensor.size)
    if pc.any(wrong).as_py():
        index = int(pc.index(wrong, True).as_py())
        raise DataValidationError(
            f"{uri}: column {name!r} must hold {tensor.size} numbers a row (tensor {tensor.name!r}, shape "
            f"{list(tensor.shape)}), but data row {data_row(index)} holds {lengths[index].as_py()} ({ROWS_NOTE})"
        )
    kind = values.type.value_type
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
        raise DataValidationError(f"{uri}: column {name!r} holds lists of {kind}; expected lists of numbers")
    if values.null_count or pc.list_flatten(values).null_count:  # rare: missing lists or elements, row by row
        rows = [row if row is not None else [None] * tensor.size for row in values.to_pylist()]
        elements = [pa.array([row[i] for row in rows], kind) for i in range(tensor.size)]
    else:
        grid = arrays.view(pc.list_flatten(values)).reshape(len(values), tensor.size)
        elements = [arrays.from_numpy(np.ascontiguousarray(grid[:, i])) for i in range(tensor.size)]
    index = table.schema.get_field_index(name)
    table = table.remove_column(index)
    for offset, (element, column) in enumerate(zip(tensor.element_columns(), elements, strict=True)):
        table = table.add_column(index + offset, element, column)
    return table
