"""Parse a raw file into an Arrow table typed by a :class:`~tasks.data.schema.DatasetSchema` (the digits-style
schema path; a dataset spec is read by :mod:`tasks.data.spec_reader`).

Parsing uses pyarrow's multithreaded CSV reader with the column types fixed by the schema, so a bad value fails
fast; only then does a slower, single-threaded pass find the row to name in the error message.
"""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from tasks.core.errors import DataValidationError
from tasks.data import arrays
from tasks.data.raw_file import (
    CSV_CONVERSION,
    PARSE_BLOCK,
    ROWS_NOTE,
    RawFile,
    check_columns,
    csv_header,
    empty_file_error,
    first_ragged_line,
    first_unconvertible,
    first_unparseable_csv,
)
from tasks.data.schema import DatasetSchema


def read_table(raw: RawFile, schema: DatasetSchema) -> pa.Table:
    """The file as a table with exactly the schema's columns, in schema order, features typed as declared.

    Structural problems (empty, unreadable, truncated, missing / unexpected columns, text in a numeric
    column) raise :class:`DataValidationError`; value checks are left to ``tasks.data.validation``.
    Features come back as the declared float type, or as int8/int16 when a CSV holds only small
    integers within the declared range (exact, and a quarter of the memory); writers cast them.
    The label column comes back as integers, or as floats from Parquet (checked later).
    """
    if raw.size == 0:
        raise empty_file_error(raw)
    if raw.format == "parquet":
        return _read_parquet(raw, schema)
    return _read_csv(raw, schema)


def feature_type(schema: DatasetSchema) -> pa.DataType:
    """The Arrow type the splits store features as."""
    return pa.float32() if schema.dtype == "float32" else pa.float64()


def _read_csv(raw: RawFile, schema: DatasetSchema) -> pa.Table:
    header = csv_header(raw)
    check_columns(header, schema, raw.uri)
    for narrow in _narrow_integer_types(schema) if _looks_integral(raw) else ():
        try:
            return _parse_csv(raw, schema, narrow)
        except pa.ArrowInvalid:
            pass  # not such an integer after all ("-0", a wider value): the next type, at last the declared floats
    try:
        return _parse_csv(raw, schema, feature_type(schema))
    except pa.ArrowInvalid as exc:
        raise _explain_csv_error(raw, schema, header, exc) from exc


def _parse_csv(raw: RawFile, schema: DatasetSchema, kind: pa.DataType) -> pa.Table:
    types = {name: kind for name in schema.features}
    types[schema.label] = pa.int64()
    # Only an empty field is missing: "NaN" and "inf" parse as such and "NA" is text, each reported by name.
    convert = pcsv.ConvertOptions(column_types=types, include_columns=list(schema.columns), null_values=[""])
    options = pcsv.ReadOptions(use_threads=True, block_size=PARSE_BLOCK)
    try:
        table = pcsv.read_csv(raw.path, read_options=options, convert_options=convert, memory_pool=arrays.pool())
    finally:
        arrays.release_memory()  # hand the parse buffers back before the next phase
    if table.num_rows == 0:
        raise DataValidationError(f"{raw.uri} has a header but no data rows")
    return table


def _narrow_integer_types(schema: DatasetSchema) -> list[pa.DataType]:
    """The integer types to try for features, in order; each of their values is exact in float32 and float64.

    Small integers (pixels, counts, codes) then take 1-2 bytes a value in memory instead of 4-8, and parse
    faster; they become the declared float type when the splits are written. A range without negatives is tried
    unsigned first, as pyarrow parses unsigned columns faster (1M x 64 pixels: about 15 % less CPU); a sign (as
    in "-0") sends the file on to the signed type, so a valid file reads as it did with the signed type alone.
    """
    if schema.value_range is None:
        return []
    low, high = schema.value_range
    kinds: list[pa.DataType] = []
    if low >= 0:
        kinds += [kind for kind, highest in ((pa.uint8(), 255), (pa.uint16(), 65535)) if high <= highest][:1]
    kinds += [
        kind
        for kind, lowest, highest in ((pa.int8(), -128, 127), (pa.int16(), -32768, 32767))
        if lowest <= low and high <= highest
    ][:1]
    return kinds


_INTEGRAL = re.compile(rb"[0-9,\-+ \r\n]*")


def _looks_integral(raw: RawFile, sample: int = 1 << 16) -> bool:
    """Whether the first rows hold nothing but integers (cheap guess; a wrong guess only costs a re-parse)."""
    with raw.path.open("rb") as handle:
        handle.readline(1 << 20)  # header
        data = handle.read(sample)
    data = data[: data.rfind(b"\n") + 1] if len(data) == sample else data
    return bool(data) and _INTEGRAL.fullmatch(data) is not None


def _explain_csv_error(raw: RawFile, schema: DatasetSchema, header: list[str], exc: pa.ArrowInvalid) -> Exception:
    """Turn pyarrow's message into one that names the line or the column and row, and what was expected."""
    text = str(exc)
    if "Empty CSV file" in text:
        return DataValidationError(f"{raw.uri} has a header but no data rows")
    match = CSV_CONVERSION.search(text)
    if match and int(match.group(1)) < len(header):
        column = header[int(match.group(1))]
        target = pa.int64() if column == schema.label else feature_type(schema)
        row, value = first_unparseable_csv(raw, column, target)
        if row is None:
            row_text, value = "a data row", match.group(3)
        else:
            row_text = f"data row {row}"
        return DataValidationError(_type_message(raw.uri, schema, column, row_text, value))
    if "CSV parse error" in text:
        located = first_ragged_line(raw, header[0])
        if located is not None:
            line, expected, actual, content = located
            hint = "; a short last line usually means the file was cut off" if actual < expected else ""
            return DataValidationError(
                f"{raw.uri}: line {line} of the file (header is line 1) has {actual} field(s), expected {expected}"
                f"{hint}: {content[:80]!r}"
            )
        return DataValidationError(f"{raw.uri} is not a well-formed CSV file: {text}")
    return DataValidationError(f"{raw.uri} is not a readable CSV file: {text}")


def _type_message(uri: str, schema: DatasetSchema, column: str, row_text: str, value: object) -> str:
    expected = f"integer labels ({schema.describe_labels()})" if column == schema.label else f"numbers ({schema.dtype})"
    return f"{uri}: column {column!r} must hold {expected}, but {row_text} holds {value!r} ({ROWS_NOTE})"


# --------------------------------------------------------------------------- Parquet


def _read_parquet(raw: RawFile, schema: DatasetSchema) -> pa.Table:
    try:
        parquet = pq.ParquetFile(raw.path)
    except (pa.ArrowException, OSError) as exc:
        raise DataValidationError(f"{raw.uri} is not a readable Parquet file (truncated or corrupt?): {exc}") from exc
    arrow_schema = parquet.schema_arrow
    check_columns(list(arrow_schema.names), schema, raw.uri)
    if parquet.metadata.num_rows == 0:
        raise DataValidationError(f"{raw.uri} has the expected columns but no data rows")
    for name in schema.columns:
        kind = arrow_schema.field(name).type
        numeric = pa.types.is_integer(kind) or pa.types.is_floating(kind)
        if not numeric:
            raise _parquet_type_error(raw, parquet, schema, name, kind)
    try:
        table = parquet.read(columns=list(schema.columns), use_threads=True)
    except (pa.ArrowException, OSError) as exc:
        raise DataValidationError(f"{raw.uri} is not a readable Parquet file (truncated or corrupt?): {exc}") from exc
    target = feature_type(schema)
    for i, name in enumerate(schema.features):
        if table.schema.field(name).type != target:
            cast = pc.cast(table.column(name), target, safe=False, memory_pool=arrays.pool())
            table = table.set_column(i, name, cast)
    label_type = table.schema.field(schema.label).type
    if pa.types.is_integer(label_type) and label_type != pa.int64():
        index = table.schema.get_field_index(schema.label)
        table = table.set_column(index, schema.label, pc.cast(table.column(schema.label), pa.int64()))
    return table


def _parquet_type_error(
    raw: RawFile, parquet: pq.ParquetFile, schema: DatasetSchema, column: str, kind: pa.DataType
) -> DataValidationError:
    """Name the column, its type and, for text, the first row that is not a number."""
    target = pa.int64() if column == schema.label else feature_type(schema)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        values = parquet.read(columns=[column]).column(column).combine_chunks()
        index = first_unconvertible(values, target)
        if index is not None:
            return DataValidationError(
                _type_message(raw.uri, schema, column, f"data row {index + 1}", values[index].as_py())
            )
        return DataValidationError(
            f"{raw.uri}: column {column!r} is stored as text; expected a numeric Parquet column "
            f"({'integer' if column == schema.label else schema.dtype})"
        )
    return DataValidationError(
        f"{raw.uri}: column {column!r} has Parquet type {kind}; expected "
        f"{'an integer' if column == schema.label else 'a numeric'} type"
    )
