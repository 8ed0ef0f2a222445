"""A raw file ready to parse, and what reading it by a schema (:mod:`tasks.data.schema_reader`) or by a dataset
spec (:mod:`tasks.data.spec_reader`) shares: the CSV header, the column check, pyarrow's parse block size,
finding the row and value pyarrow refused, and how a problem names its column and 1-based data row.

pyarrow's multithreaded reader fails fast on a bad value but says only which column; the single-threaded
passes here run after that, on the failing file only, to name the row.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from tasks.core.errors import DataValidationError
from tasks.data.schema import compact_names

Format = Literal["csv", "parquet"]

ROWS_NOTE = "data rows are counted from 1, header not counted"
MAX_LISTED = 8

# Rows before the table being checked, when a file is checked batch by batch (tasks.data.streaming).
_ROW_OFFSET: ContextVar[int] = ContextVar("gpuflow_row_offset", default=0)


@contextmanager
def rows_after(offset: int) -> Iterator[None]:
    """Inside the block, a data row named in a message counts ``offset`` rows before the table at hand."""
    token = _ROW_OFFSET.set(offset)
    try:
        yield
    finally:
        _ROW_OFFSET.reset(token)


def data_row(index: int) -> int:
    """The 1-based data row of a 0-based index into the table being checked."""
    return index + 1 + _ROW_OFFSET.get()


@dataclass(frozen=True)
class RawFile:
    """A raw file ready to parse: where it came from, a local copy to read, and its content hash."""

    uri: str
    path: Path
    sha256: str
    size: int
    format: Format


def empty_file_error(raw: RawFile) -> DataValidationError:
    """A 0-byte file: what was expected instead."""
    return DataValidationError(
        f"{raw.uri} is empty (0 bytes); expected {raw.format.upper()} with a header and data rows"
    )


# --------------------------------------------------------------------------- columns


class ColumnSet(Protocol):
    """The columns a raw file must have: a schema's, or a spec's (:class:`ExpectedColumns`)."""

    @property
    def columns(self) -> tuple[str, ...]: ...

    def describe_columns(self) -> str: ...


@dataclass(frozen=True)
class ExpectedColumns:
    """The raw columns a dataset spec reads, as :func:`check_columns` takes them."""

    columns: tuple[str, ...]

    def describe_columns(self) -> str:
        return compact_names(self.columns)


def check_columns(found: list[str], schema: ColumnSet, where: str) -> None:
    """Exactly the declared columns, each once (order is free); one message lists every difference."""
    expected = set(schema.columns)
    missing = [c for c in schema.columns if c not in found]
    unexpected = [c for c in found if c not in expected]
    doubled = sorted({c for c in found if found.count(c) > 1})
    if not (missing or unexpected or doubled):
        return
    problems = []
    if missing:
        problems.append(f"missing column(s) {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected column(s) {_names(unexpected)}")
    if doubled:
        problems.append(f"column(s) named more than once: {_names(doubled)}")
    hint = ""
    if len(found) == 1 and any(sep in found[0] for sep in (";", "\t", "|")):
        hint = " (the header has one column: is the file comma-separated?)"
    raise DataValidationError(
        f"{where}: {'; '.join(problems)}; expected exactly the columns {schema.describe_columns()}{hint}"
    )


def _names(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


# --------------------------------------------------------------------------- CSV


def csv_header(raw: RawFile) -> list[str]:
    """The CSV header's column names; a first line that is not UTF-8 text or is blank is refused."""
    with raw.path.open("rb") as handle:
        first = handle.readline(1 << 20)
    try:
        line = first.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataValidationError(
            f"{raw.uri}: the first line is not UTF-8 text; expected a CSV header ({exc.reason} at byte {exc.start})"
        ) from exc
    if not line.strip():
        raise DataValidationError(f"{raw.uri}: the first line is blank; expected a CSV header")
    return next(csv.reader([line.rstrip("\r\n")]))


# Bytes of CSV text pyarrow parses as one block (pyarrow's own default). Small blocks give every core many and keep
# the parse buffers in flight a small share of peak memory; a block and what it parses into should fit a core's L2
# cache: on a 1M x 64 file, 2 MB blocks took 20 % more CPU than 1 MB ones on a 2 MB-L2 machine.
PARSE_BLOCK = 1 << 20


# --------------------------------------------------------------------------- the row to name


CSV_CONVERSION = re.compile(r"In CSV column #(\d+): .*?conversion error to (\w+): invalid value '(.*)'", re.S)


def first_unparseable_csv(raw: RawFile, column: str, target: pa.DataType) -> tuple[int | None, str | None]:
    """1-based data row and text of the first value in ``column`` that does not convert to ``target``."""
    try:
        strings = pcsv.read_csv(
            raw.path,
            read_options=pcsv.ReadOptions(use_threads=True, block_size=PARSE_BLOCK),
            parse_options=pcsv.ParseOptions(invalid_row_handler=lambda _row: "skip"),
            convert_options=pcsv.ConvertOptions(
                include_columns=[column], column_types={column: pa.string()}, null_values=[""], strings_can_be_null=True
            ),
        ).column(column)
    except pa.ArrowException:
        return None, None
    index = first_unconvertible(strings.combine_chunks(), target)
    if index is None:
        return None, None
    return index + 1, strings[index].as_py()


def first_unconvertible(values: pa.Array, target: pa.DataType) -> int | None:
    """Index of the first value the cast to ``target`` rejects, by halving (about 2n conversions)."""

    def fails(part: pa.Array) -> bool:
        try:
            pc.cast(part, target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return True
        return False

    if not fails(values):
        return None
    low, high = 0, len(values)
    while high - low > 1:
        middle = (low + high) // 2
        if fails(values.slice(low, middle - low)):
            high = middle
        else:
            low = middle
    return low


def first_ragged_line(raw: RawFile, any_column: str) -> tuple[int, int, int, str] | None:
    """(line, expected, actual, text) of the first row with the wrong number of fields.

    Single-threaded on purpose: only then does pyarrow know physical line numbers.
    """
    found: list[tuple[int, int, int, str]] = []

    def handler(row: pcsv.InvalidRow) -> str:
        if row.number is not None:
            found.append((row.number, row.expected_columns, row.actual_columns, row.text))
        return "error"

    with suppress(pa.ArrowException):
        pcsv.read_csv(
            raw.path,
            read_options=pcsv.ReadOptions(use_threads=False),
            parse_options=pcsv.ParseOptions(invalid_row_handler=handler),
            convert_options=pcsv.ConvertOptions(include_columns=[any_column], column_types={any_column: pa.string()}),
        )
    return found[0] if found else None


def first_problem(name: str, mask: pa.ChunkedArray | pa.Array, what: str, column: pa.ChunkedArray) -> str:
    """How many rows ``mask`` marks, and the first one (1-based) with its value."""
    mask = pc.fill_null(mask, False)
    count = int(pc.sum(mask).as_py() or 0)
    index = int(pc.index(mask, True).as_py())
    value = column[index].as_py()
    shown = "" if value is None else f": {value!r}"
    return f"column {name!r} has {count} {what}, first at data row {data_row(index)}{shown}"


def problem_listing(where: str, kind: str, problems: list[str]) -> str:
    """Several problems in one message, the first :data:`MAX_LISTED` of them shown."""
    shown = "; ".join(problems[:MAX_LISTED])
    more = f"; and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    return f"{where}: {kind} ({ROWS_NOTE}): {shown}{more}"
