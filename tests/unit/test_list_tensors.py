"""A fixed-shape tensor read from one Parquet list column: stored like the same tensor from 64 loose columns."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.core.dataset_spec import SpecError, spec_from_data
from tasks.core.errors import DataValidationError
from tasks.data.demo import digits_csv_bytes
from tasks.data.schema import PrepareParams
from tasks.data.spec import prepare_with_spec
from workloads.dataset import load_manifest, read_split, read_split_table
from workloads.store import ObjectStore

CLASSES = list(range(10))
LOOSE: dict[str, Any] = {
    "columns": [{"name": "image", "type": "tensor", "shape": [1, 8, 8], "prefix": "pixel_", "min": 0, "max": 16}],
    "target": {"name": "label", "type": "class", "classes": CLASSES},
}
LISTED: dict[str, Any] = {
    "columns": [{"name": "image", "type": "tensor", "shape": [1, 8, 8], "column": "pixels", "min": 0, "max": 16}],
    "target": {"name": "label", "type": "class", "classes": CLASSES},
}


def digits_with_a_list_column(path: Path, rows: slice = slice(None), lengths: dict[int, int] | None = None) -> Path:
    frame = pd.read_csv(io.BytesIO(digits_csv_bytes())).iloc[rows]
    pixels = frame[[f"pixel_{i}" for i in range(64)]].to_numpy(dtype=np.int16)
    lists = [list(row) for row in pixels]
    for row, length in (lengths or {}).items():
        lists[row] = lists[row][:length]
    table = pa.table({"pixels": pa.array(lists, pa.list_(pa.int16())), "label": pa.array(frame["label"].to_numpy())})
    pq.write_table(table, path)
    return path


def prepare(source: Path | str, root: Path, spec: dict) -> str:
    result = prepare_with_spec(
        str(source), store=ObjectStore(), root=str(root), name="img", spec=spec_from_data(spec), params=PrepareParams()
    )
    return result.dataset_uri


def test_a_list_column_gives_the_same_splits_as_64_loose_columns(tmp_path: Path) -> None:
    loose = tmp_path / "digits.csv"
    loose.write_bytes(digits_csv_bytes())
    from_columns = prepare(loose, tmp_path / "a", LOOSE)
    from_list = prepare(digits_with_a_list_column(tmp_path / "digits.parquet"), tmp_path / "b", LISTED)
    manifest = load_manifest(from_list)
    image = manifest.extra["columns"][0]
    assert image["shape"] == [1, 8, 8] and image["columns"] == [f"image_{i}" for i in range(64)]
    assert manifest.extra["spec"]["columns"][0]["column"] == "pixels"
    for split in ("train", "val", "test"):
        x_loose, y_loose = read_split(from_columns, split)
        x_list, y_list = read_split(from_list, split)
        assert np.array_equal(x_loose, x_list) and np.array_equal(y_loose, y_list)


def test_a_spec_without_list_tensors_keeps_its_canonical_form() -> None:
    assert "column" not in spec_from_data(LOOSE).canonical()["columns"][0]


def test_a_list_of_the_wrong_length_names_its_row(tmp_path: Path) -> None:
    source = digits_with_a_list_column(tmp_path / "short.parquet", lengths={41: 63})
    with pytest.raises(
        DataValidationError, match=r"column 'pixels' must hold 64 numbers a row .* data row 42 holds 63"
    ):
        prepare(source, tmp_path / "store", LISTED)
    assert not (tmp_path / "store" / "datasets").exists() or not any((tmp_path / "store" / "datasets").rglob("*.json"))


def test_list_tensors_in_parts_are_read_batch_by_batch(tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    for i, rows in enumerate((slice(0, 900), slice(900, None))):
        digits_with_a_list_column(tmp_path / "raw" / f"part-{i}.parquet", rows)
    uri = prepare(tmp_path / "raw" / "*.parquet", tmp_path / "store", LISTED)
    assert sum(load_manifest(uri).rows.values()) == 1797
    assert read_split_table(uri, "train").column_names[:2] == ["image_0", "image_1"]


def test_csv_input_cannot_hold_a_list_column_and_the_spec_names_one_source(tmp_path: Path) -> None:
    loose = tmp_path / "digits.csv"
    loose.write_bytes(digits_csv_bytes())
    with pytest.raises(DataValidationError, match="reads the Parquet list column 'pixels', but this input is CSV"):
        prepare(loose, tmp_path / "store", LISTED)
    both = {**LISTED, "columns": [{**LISTED["columns"][0], "prefix": "pixel_"}]}
    with pytest.raises(SpecError, match="exactly one of 'columns' or 'prefix'"):
        spec_from_data(both)
