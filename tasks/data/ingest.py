"""Fetch raw data (path, file:// or s3://), hash it, and parse it into an Arrow table typed by the schema.

The content hash is computed while the bytes stream past (an S3 object is spooled to a temp file on the
way), so the version is known before anything is parsed and a cache hit costs one read. Parsing uses
pyarrow's multithreaded CSV reader with the column types fixed by the schema, so a bad value fails fast;
only then does a slower, single-threaded pass find the row to name in the error message.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from tasks.core.errors import ConfigurationError, DataNotFoundError, DataValidationError, ServiceUnavailable
from tasks.data import arrays
from tasks.data.schema import DatasetSchema
from workloads.store import ObjectStore, StoreError, is_s3, local_path, split_s3

Format = Literal["csv", "parquet"]

ROWS_NOTE = "data rows are counted from 1, header not counted"
_CHUNK = 8 * 1024 * 1024
_PARQUET_MAGIC = b"PAR1"


@dataclass(frozen=True)
class RawFile:
    """A raw file ready to parse: where it came from, a local copy to read, and its content hash."""

    uri: str
    path: Path
    sha256: str
    size: int
    format: Format


def normalize_uri(uri: str) -> str:
    """``s3://`` and ``file://`` as given; a plain path made absolute so the manifest says where it was."""
    uri = uri.strip()
    if not uri:
        raise ConfigurationError("data_uri is empty: expected a path, file:// or s3://bucket/key")
    if is_s3(uri) or uri.startswith("file://"):
        return uri
    if "://" in uri:
        raise ConfigurationError(f"unsupported URI scheme in {uri!r}: expected a path, file:// or s3://bucket/key")
    return str(Path(uri).expanduser().resolve())


@contextmanager
def open_raw(uri: str, store: ObjectStore) -> Iterator[RawFile]:
    """The raw file behind ``uri``, hashed; an S3 object lives in a temp file until the block exits."""
    uri = normalize_uri(uri)
    if not is_s3(uri):
        path = _local_file(uri)
        try:
            with path.open("rb") as handle:
                digest = hashlib.file_digest(handle, "sha256").hexdigest()
        except OSError as exc:
            raise DataNotFoundError(f"raw data {path} cannot be read: {exc.strerror}") from exc
        yield RawFile(uri=uri, path=path, sha256=digest, size=path.stat().st_size, format=detect_format(uri, path))
        return
    with tempfile.TemporaryDirectory(prefix="gpuflow-raw-") as tmp:
        path = Path(tmp) / (uri.rsplit("/", 1)[-1] or "raw")
        digest, size = _spool_s3(uri, store, path)
        yield RawFile(uri=uri, path=path, sha256=digest, size=size, format=detect_format(uri, path))


def _local_file(uri: str) -> Path:
    path = local_path(uri)
    if not path.exists():
        raise DataNotFoundError(f"raw data not found: no file at {path}")
    if not path.is_file():
        raise DataNotFoundError(f"raw data {path} is a directory; expected a CSV or Parquet file")
    return path


def quick_check(uri: str, schema: DatasetSchema) -> None:
    """The checks a local raw file allows without reading it: it exists, is not empty, its columns fit.

    ``gpuflow run`` calls this before any server boots, so a bad ``--data`` is refused in a moment with the
    same message the prepare flow would give; prepare still runs every check. An ``s3://`` object is left
    to prepare (reaching it needs the data store block's credentials).
    """
    uri = normalize_uri(uri)
    if is_s3(uri):
        return
    path = _local_file(uri)
    raw = RawFile(uri=uri, path=path, sha256="", size=path.stat().st_size, format=detect_format(uri, path))
    if raw.size == 0:
        raise _empty(raw)
    if raw.format == "csv":
        check_columns(_csv_header(raw), schema, raw.uri)
        return
    try:
        names = list(pq.read_schema(raw.path).names)
    except (pa.ArrowException, OSError):
        return  # unreadable: prepare says exactly how
    check_columns(names, schema, raw.uri)


def _spool_s3(uri: str, store: ObjectStore, dest: Path) -> tuple[str, int]:
    """Stream an S3 object to ``dest`` while hashing it; S3 errors become gpuflow's errors (no secrets)."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    try:
        bucket, key = split_s3(uri)
    except StoreError as exc:
        raise ConfigurationError(str(exc)) from exc
    if not key or key.endswith("/"):
        raise DataNotFoundError(f"raw data URI {uri} names a prefix, not an object: expected s3://bucket/key")
    hasher = hashlib.sha256()
    size = 0
    try:
        body = store.s3.get_object(Bucket=bucket, Key=key)["Body"]
        with dest.open("wb") as out:
            for chunk in body.iter_chunks(_CHUNK):
                hasher.update(chunk)
                out.write(chunk)
                size += len(chunk)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in {"NoSuchKey", "404", "NotFound"}:
            raise DataNotFoundError(f"raw data not found: no object at {uri}") from exc
        if code == "NoSuchBucket":
            raise DataNotFoundError(f"raw data not found: bucket {bucket!r} does not exist ({uri})") from exc
        if code in {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"}:
            raise ConfigurationError(
                f"S3 refused access to {uri} ({code}): check the data store block's credentials"
            ) from exc
        if status >= 500:
            raise ServiceUnavailable(f"S3 failed to serve {uri}: {code or status}") from exc
        raise ConfigurationError(f"S3 rejected the request for {uri}: {code or status}") from exc
    except NoCredentialsError as exc:
        raise ConfigurationError(f"no S3 credentials to read {uri}: set them on the data store block") from exc
    except BotoCoreError as exc:
        raise ServiceUnavailable(f"S3 unreachable while reading {uri}: {type(exc).__name__}") from exc
    return hasher.hexdigest(), size


def detect_format(uri: str, path: Path) -> Format:
    """By extension (.csv, .parquet/.pq); otherwise by Parquet's magic bytes."""
    name = uri.lower().rsplit("/", 1)[-1]
    if name.endswith(".csv"):
        return "csv"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    with path.open("rb") as handle:
        return "parquet" if handle.read(4) == _PARQUET_MAGIC else "csv"


def read_table(raw: RawFile, schema: DatasetSchema) -> pa.Table:
    """The file as a table with exactly the schema's columns, in schema order, features typed as declared.

    Structural problems (empty, unreadable, truncated, missing / unexpected columns, text in a numeric
    column) raise :class:`DataValidationError`; value checks are left to ``tasks.data.validation``.
    Features come back as the declared float type, or as int8/int16 when a CSV holds only small
    integers within the declared range (exact, and a quarter of the memory); writers cast them.
    The label column comes back as integers, or as floats from Parquet (checked later).
    """
    if raw.size == 0:
        raise _empty(raw)
    if raw.format == "parquet":
        return _read_parquet(raw, schema)
    return _read_csv(raw, schema)


def _empty(raw: RawFile) -> DataValidationError:
    return DataValidationError(
        f"{raw.uri} is empty (0 bytes); expected {raw.format.upper()} with a header and data rows"
    )


# --------------------------------------------------------------------------- columns


def check_columns(found: list[str], schema: DatasetSchema, where: str) -> None:
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


def _csv_header(raw: RawFile) -> list[str]:
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


def _block_size(size: int) -> int:
    """Small blocks: every core gets many, and parse buffers in flight stay a small share of peak memory."""
    per_core = size // (16 * (os.cpu_count() or 1))
    return int(min(max(per_core, 1 << 20), 2 << 20))


def feature_type(schema: DatasetSchema) -> pa.DataType:
    """The Arrow type the splits store features as."""
    return pa.float32() if schema.dtype == "float32" else pa.float64()


def _read_csv(raw: RawFile, schema: DatasetSchema) -> pa.Table:
    header = _csv_header(raw)
    check_columns(header, schema, raw.uri)
    narrow = _narrow_integer_type(schema) if _looks_integral(raw) else None
    if narrow is not None:
        try:
            return _parse_csv(raw, schema, narrow)
        except pa.ArrowInvalid:
            pass  # a value that is not a small integer after all: parse as the declared floats, which explains it
    try:
        return _parse_csv(raw, schema, feature_type(schema))
    except pa.ArrowInvalid as exc:
        raise _explain_csv_error(raw, schema, header, exc) from exc


def _parse_csv(raw: RawFile, schema: DatasetSchema, kind: pa.DataType) -> pa.Table:
    types = {name: kind for name in schema.features}
    types[schema.label] = pa.int64()
    # Only an empty field is missing: "NaN" and "inf" parse as such and "NA" is text, each reported by name.
    convert = pcsv.ConvertOptions(column_types=types, include_columns=list(schema.columns), null_values=[""])
    options = pcsv.ReadOptions(use_threads=True, block_size=_block_size(raw.size))
    try:
        table = pcsv.read_csv(raw.path, read_options=options, convert_options=convert, memory_pool=arrays.pool())
    finally:
        arrays.pool().release_unused()  # hand the parse buffers back before the next phase
    if table.num_rows == 0:
        raise DataValidationError(f"{raw.uri} has a header but no data rows")
    return table


def _narrow_integer_type(schema: DatasetSchema) -> pa.DataType | None:
    """int8 or int16 when the declared range fits: every such value is exact in float32 and float64.

    Small integers (pixels, counts, codes) then take 1-2 bytes a value in memory instead of 4-8, and
    parse faster; they become the declared float type when the splits are written.
    """
    if schema.value_range is None:
        return None
    low, high = schema.value_range
    for kind, lowest, highest in ((pa.int8(), -128, 127), (pa.int16(), -32768, 32767)):
        if lowest <= low and high <= highest:
            return kind
    return None


_INTEGRAL = re.compile(rb"[0-9,\-+ \r\n]*")


def _looks_integral(raw: RawFile, sample: int = 1 << 16) -> bool:
    """Whether the first rows hold nothing but integers (cheap guess; a wrong guess only costs a re-parse)."""
    with raw.path.open("rb") as handle:
        handle.readline(1 << 20)  # header
        data = handle.read(sample)
    data = data[: data.rfind(b"\n") + 1] if len(data) == sample else data
    return bool(data) and _INTEGRAL.fullmatch(data) is not None


_CONVERSION = re.compile(r"In CSV column #(\d+): .*?conversion error to (\w+): invalid value '(.*)'", re.S)


def _explain_csv_error(raw: RawFile, schema: DatasetSchema, header: list[str], exc: pa.ArrowInvalid) -> Exception:
    """Turn pyarrow's message into one that names the line or the column and row, and what was expected."""
    text = str(exc)
    if "Empty CSV file" in text:
        return DataValidationError(f"{raw.uri} has a header but no data rows")
    match = _CONVERSION.search(text)
    if match and int(match.group(1)) < len(header):
        column = header[int(match.group(1))]
        target = pa.int64() if column == schema.label else feature_type(schema)
        row, value = _first_unparseable_csv(raw, column, target)
        if row is None:
            row_text, value = "a data row", match.group(3)
        else:
            row_text = f"data row {row}"
        return DataValidationError(_type_message(raw.uri, schema, column, row_text, value))
    if "CSV parse error" in text:
        located = _first_ragged_line(raw, header[0])
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


def _first_unparseable_csv(raw: RawFile, column: str, target: pa.DataType) -> tuple[int | None, str | None]:
    """1-based data row and text of the first value in ``column`` that does not convert to ``target``."""
    try:
        strings = pcsv.read_csv(
            raw.path,
            read_options=pcsv.ReadOptions(use_threads=True, block_size=_block_size(raw.size)),
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


def _first_ragged_line(raw: RawFile, any_column: str) -> tuple[int, int, int, str] | None:
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
