"""Validation of raw data: every kind of bad file is rejected with a message naming what and where."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.core.errors import ConfigurationError, DataValidationError
from tasks.data.demo import digits_schema
from tasks.data.ingest import open_raw
from tasks.data.publish import prepare_dataset
from tasks.data.raw_file import check_columns, first_unconvertible
from tasks.data.schema import DatasetSchema, PrepareParams
from tasks.data.schema_reader import read_table
from tasks.data.validation import find_duplicates, row_hashes
from tests.fixtures.raw_files import (
    BAD_INPUTS,
    FEATURES,
    BadInput,
    csv_bytes,
    digits_columns,
    digits_rows,
    parquet_bytes,
    set_field,
)
from workloads.dataset import load_manifest, read_split
from workloads.store import ObjectStore


def run_prepare(path: Path, root: Path, **params: object):
    return prepare_dataset(
        str(path),
        store=ObjectStore(),
        root=str(root),
        name="digits",
        schema=digits_schema(),
        params=PrepareParams(**params),  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c.id for c in BAD_INPUTS])
def test_bad_input_is_rejected_with_a_precise_message_and_nothing_written(case: BadInput, tmp_path: Path) -> None:
    path = case.write(tmp_path)
    root = tmp_path / "store"
    with pytest.raises(case.error) as raised:
        run_prepare(path, root)
    message = str(raised.value)
    for fragment in case.fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert not (root / "datasets").exists()


def test_clean_digits_pass_and_every_row_lands_in_one_split(tmp_path: Path) -> None:
    path = tmp_path / "digits.csv"
    path.write_bytes(csv_bytes(digits_rows(300)))
    result = run_prepare(path, tmp_path / "store")
    assert sum(result.manifest.rows.values()) == 300
    assert result.manifest.duplicates == {"found": 0, "dropped": 0, "examples": []}


def test_drop_duplicates_drops_them_and_the_manifest_says_how_many(tmp_path: Path) -> None:
    rows = digits_rows(200)
    rows[50] = list(rows[2])
    rows[120] = list(rows[2])
    rows[199] = list(rows[10])
    path = tmp_path / "dups.csv"
    path.write_bytes(csv_bytes(rows))
    result = run_prepare(path, tmp_path / "store", drop_duplicates=True)
    manifest = load_manifest(result.dataset_uri)
    assert manifest.duplicates["found"] == 3
    assert manifest.duplicates["dropped"] == 3
    assert {"row": 51, "repeats": 3} in manifest.duplicates["examples"]
    assert sum(manifest.rows.values()) == 197


def test_duplicate_check_is_exact_even_when_every_hash_collides() -> None:
    columns = digits_columns(40)
    table = pa.table(columns)
    labels = table.column("label").to_numpy()
    truth = find_duplicates(table, digits_schema(), labels)
    assert truth.count == 0
    colliding = find_duplicates(table, digits_schema(), labels, hashes=np.zeros(40, dtype=np.uint64))
    assert colliding.count == 0


def test_rows_differing_only_in_label_are_not_duplicates_but_negative_zero_equals_zero() -> None:
    columns = {name: pa.array([0.0, 0.0, -0.0], pa.float32()) for name in FEATURES}
    columns["label"] = pa.array([1, 2, 1], pa.int64())
    table = pa.table(columns)
    found = find_duplicates(table, digits_schema(), table.column("label").to_numpy())
    assert found.examples() == [(3, 1)]


def test_row_hashes_depend_on_every_column() -> None:
    columns = {name: pa.array([1.0, 1.0], pa.float32()) for name in FEATURES}
    columns["pixel_63"] = pa.array([1.0, 2.0], pa.float32())
    columns["label"] = pa.array([3, 3], pa.int64())
    table = pa.table(columns)
    hashes = row_hashes(table, digits_schema(), table.column("label").to_numpy())
    assert hashes[0] != hashes[1]


def test_parquet_with_integer_features_and_int32_labels_is_accepted(tmp_path: Path) -> None:
    columns = digits_columns(200)
    columns = {k: v.cast(pa.int16()) for k, v in columns.items() if k != "label"} | {
        "label": columns["label"].cast(pa.int32())
    }
    path = tmp_path / "ints.parquet"
    path.write_bytes(parquet_bytes(columns))
    result = run_prepare(path, tmp_path / "store")
    assert sum(result.manifest.rows.values()) == 200
    assert result.manifest.source_format == "parquet"


def test_a_file_without_extension_is_sniffed(tmp_path: Path) -> None:
    path = tmp_path / "upload"
    path.write_bytes(parquet_bytes(digits_columns(200)))
    assert run_prepare(path, tmp_path / "store").manifest.source_format == "parquet"


@pytest.mark.parametrize(
    ("found", "fragments"),
    [
        (["pixel_0", "label"], ["missing column(s) 'pixel_1', 'pixel_2'", "and 53 more"]),
        ([*FEATURES, "label", "x", "y"], ["unexpected column(s) 'x', 'y'"]),
        ([*FEATURES, "label", "label"], ["named more than once: 'label'"]),
        ([";".join([*FEATURES, "label"])], ["is the file comma-separated?"]),
    ],
)
def test_column_check_names_every_difference(found: list[str], fragments: list[str]) -> None:
    with pytest.raises(DataValidationError) as raised:
        check_columns(found, digits_schema(), "raw.csv")
    for fragment in fragments:
        assert fragment in str(raised.value)


def test_columns_in_another_order_are_fine() -> None:
    check_columns(["label", *reversed(FEATURES)], digits_schema(), "raw.csv")


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["x", "1", "2"], 0),
        (["1", "2", "3", "4", "oops", "6"], 4),
        (["1"] * 999 + ["1,5"], 999),
        (["1", None, "2.5"], None),
    ],
)
def test_first_unconvertible_finds_the_first_bad_value(values: list[str | None], expected: int | None) -> None:
    assert first_unconvertible(pa.array(values, pa.string()), pa.float32()) == expected


@pytest.mark.parametrize(
    "kwargs",
    [
        {"val_fraction": 0.0},
        {"test_fraction": 1.0},
        {"val_fraction": 0.5, "test_fraction": 0.5},
        {"val_fraction": -0.1},
    ],
)
def test_impossible_fractions_are_a_configuration_error(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        PrepareParams(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"features": (), "label": "y", "labels": (0, 1)},
        {"features": ("a", "a"), "label": "y", "labels": (0, 1)},
        {"features": ("a",), "label": "a", "labels": (0, 1)},
        {"features": ("a",), "label": "y", "labels": (0,)},
        {"features": ("a",), "label": "y", "labels": (0, 1), "value_range": (2.0, 1.0)},
    ],
)
def test_inconsistent_schemas_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        DatasetSchema(**kwargs)  # type: ignore[arg-type]


def test_unsupported_uri_scheme_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="unsupported URI scheme"):
        prepare_dataset(
            "ftp://host/raw.csv",
            store=ObjectStore(),
            root=str(tmp_path),
            name="digits",
            schema=digits_schema(),
            params=PrepareParams(),
        )


def test_integer_csv_is_stored_as_the_declared_float_type(tmp_path: Path) -> None:
    path = tmp_path / "ints.csv"
    path.write_bytes(csv_bytes(digits_rows(200)))
    result = run_prepare(path, tmp_path / "store")
    folder = tmp_path / "store" / "datasets" / "digits" / result.version
    schema = pq.read_schema(folder / "train.parquet")
    assert {schema.field(name).type for name in FEATURES} == {pa.float32()}
    assert schema.field("label").type == pa.int64()


@pytest.mark.parametrize(
    ("row", "value", "expected"),
    [
        (3, "3.5", None),  # a float in the first rows: parsed as floats from the start
        (1700, "2.25", None),  # a float far past the sampled first rows: the integer parse gives way to floats
        (1700, "300", "first at data row 1700: 300"),  # beyond int8: still reported as out of range
        (5, "-0", None),
    ],
)
def test_non_integer_or_wide_values_fall_back_to_floats(
    row: int, value: str, expected: str | None, tmp_path: Path
) -> None:
    rows = set_field(digits_rows(1797), row, "pixel_9", value)
    path = tmp_path / "mixed.csv"
    path.write_bytes(csv_bytes(rows))
    assert path.stat().st_size > 4 * (1 << 16)  # row 1700 lies well beyond the sample that guesses integers
    if expected is not None:
        with pytest.raises(DataValidationError, match=expected):
            run_prepare(path, tmp_path / "store")
        return
    result = run_prepare(path, tmp_path / "store")
    stored = [
        float(v)
        for split in ("train", "val", "test")
        for v in read_split(result.dataset_uri, split)[0][:, FEATURES.index("pixel_9")]
    ]
    assert float(value) in stored


@pytest.mark.parametrize(
    ("value_range", "value", "held_as"),
    [
        ((0.0, 16.0), "7", pa.uint8()),  # no negatives allowed: the faster unsigned parse
        ((0.0, 16.0), "-0", pa.int8()),  # a sign: the signed parse, as before
        ((0.0, 200.0), "-0", pa.int16()),
        ((0.0, 1000.0), "999", pa.uint16()),
        ((-5.0, 5.0), "-3", pa.int8()),
    ],
)
def test_small_integer_csv_is_held_in_the_narrowest_type_that_reads_it(
    value_range: tuple[float, float], value: str, held_as: pa.DataType, tmp_path: Path
) -> None:
    path = tmp_path / "ints.csv"
    path.write_bytes(csv_bytes(set_field(digits_rows(50), 3, "pixel_9", value)))
    schema = digits_schema().model_copy(update={"value_range": value_range})
    with open_raw(str(path), ObjectStore()) as raw:
        table = read_table(raw, schema)
    assert {table.schema.field(name).type for name in FEATURES} == {held_as}
    assert table.column("pixel_9")[2].as_py() == int(value)


def test_bad_features_are_reported_before_bad_labels_or_duplicates(tmp_path: Path) -> None:
    """Labels are checked early (the splits are written while the features are checked), yet the order of the
    messages stays: features first, then labels, then duplicates."""
    rows = digits_rows(300)
    rows = set_field(rows, 40, "pixel_3", "99")
    path = tmp_path / "both.csv"
    path.write_bytes(csv_bytes([*set_field(rows, 7, "label", "12"), rows[5]]))
    with pytest.raises(DataValidationError, match="pixel_3") as raised:
        run_prepare(path, tmp_path / "store")
    assert "label" not in str(raised.value) and "duplicate" not in str(raised.value)
    path.write_bytes(csv_bytes([*rows, rows[5]]))
    with pytest.raises(DataValidationError, match="pixel_3") as raised:
        run_prepare(path, tmp_path / "store")
    assert "duplicate" not in str(raised.value)
    assert not (tmp_path / "store" / "datasets").exists()
