"""Raw data as many parts (a glob of local files): versions, splits, duplicates and bad parts, read batch by batch.

The prepare stage's own code, without Prefect (the S3 prefix and the flow: tests/integration/test_prepare_parts.py).
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.core.dataset_spec import digits_spec, spec_from_data
from tasks.core.errors import DataNotFoundError, DataValidationError
from tasks.data.demo import digits_csv_bytes, digits_schema
from tasks.data.parts import quick_check_input
from tasks.data.publish import compute_version, prepare_dataset
from tasks.data.schema import PrepareParams
from tasks.data.spec import check_file, prepare_with_spec, quick_check_spec
from tasks.data.spec_manifest import compute_spec_version
from tasks.data.streaming import BLOCK, SplitAssigner, spec_from_schema
from tests.fixtures.spec_data import diabetes_csv, diabetes_spec, mixed_csv, mixed_spec, write_spec
from workloads.dataset import load_manifest, read_split_table
from workloads.store import ObjectStore

PARAMS = PrepareParams()
SPLITS = ("train", "val", "test")


def digits_frame() -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(digits_csv_bytes()))


def write_parts(folder: Path, frame: pd.DataFrame, parts: int, fmt: str = "csv") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, chunk in enumerate(np.array_split(np.arange(len(frame)), parts)):
        path = folder / f"part-{i:02d}.{fmt}"
        piece = frame.iloc[chunk]
        if fmt == "csv":
            piece.to_csv(path, index=False)
        else:
            pq.write_table(pa.Table.from_pandas(piece, preserve_index=False), path)
        paths.append(path)
    return paths


def prepare_spec(source: str, root: Path, spec: Any, name: str = "parts", **params: Any) -> Any:
    return prepare_with_spec(
        source,
        store=ObjectStore(),
        root=str(root),
        name=name,
        spec=spec_from_data(spec),
        params=PrepareParams(**params),
    )


def published(root: Path) -> list[str]:
    datasets = root / "datasets"
    return sorted(str(p.relative_to(datasets)) for p in datasets.rglob("*")) if datasets.exists() else []


def test_a_glob_of_csv_parts_is_published_with_every_row_once(tmp_path: Path) -> None:
    frame = digits_frame()
    write_parts(tmp_path / "raw", frame, 3)
    result = prepare_spec(str(tmp_path / "raw" / "*.csv"), tmp_path / "store", digits_spec())
    manifest = load_manifest(result.dataset_uri)
    assert sum(manifest.rows.values()) == len(frame) == 1797
    assert [p["key"] for p in manifest.extra["parts"]] == ["part-00.csv", "part-01.csv", "part-02.csv"]
    assert manifest.source_uri == str(tmp_path / "raw" / "*.csv")
    tables = [read_split_table(result.dataset_uri, split) for split in ("train", "val", "test")]
    rows = pd.concat([t.to_pandas() for t in tables])
    assert len(rows) == len(frame) and not rows.duplicated().any()
    # every pixel row of the raw data is in exactly one split, with its label
    key = lambda f: sorted(map(tuple, f[[*frame.columns]].astype(float).to_numpy().tolist()))  # noqa: E731
    assert key(rows) == key(frame)
    # stratified by blocks: every class keeps its share in test within a block's rounding
    for name, count in manifest.class_balance["test"].items():
        total = sum(manifest.class_balance[s][name] for s in ("train", "val", "test"))
        assert abs(count - 0.15 * total) <= 0.15 * BLOCK / 10 + 3, (name, count, total)


def test_the_version_hashes_sorted_key_and_content_pairs_plus_spec_and_parameters(tmp_path: Path) -> None:
    paths = write_parts(tmp_path / "raw", digits_frame(), 3)
    spec = spec_from_data(digits_spec().model_dump())
    result = prepare_spec(str(tmp_path / "raw" / "part-*.csv"), tmp_path / "store", spec)
    pairs = [[p.name, hashlib.sha256(p.read_bytes()).hexdigest()] for p in sorted(paths)]
    content = hashlib.sha256(json.dumps(pairs, separators=(",", ":")).encode()).hexdigest()
    assert result.version == compute_spec_version(content, spec, PARAMS)
    # the same parts again: a cache hit; another seed or a renamed part: another version
    again = prepare_spec(str(tmp_path / "raw" / "*.csv"), tmp_path / "store", spec)
    assert again.cache_hit and again.version == result.version
    assert prepare_spec(str(tmp_path / "raw" / "*.csv"), tmp_path / "store", spec, seed=7).version != result.version
    paths[2].rename(tmp_path / "raw" / "part-99.csv")
    assert prepare_spec(str(tmp_path / "raw" / "*.csv"), tmp_path / "store", spec).version != result.version


def test_a_glob_matching_one_file_keeps_that_files_version(tmp_path: Path) -> None:
    raw = tmp_path / "raw" / "digits.csv"
    raw.parent.mkdir()
    raw.write_bytes(digits_csv_bytes())
    schema = digits_schema()
    direct = prepare_dataset(
        str(raw), store=ObjectStore(), root=str(tmp_path / "a"), name="d", schema=schema, params=PARAMS
    )
    globbed = prepare_dataset(
        str(tmp_path / "raw" / "*.csv"),
        store=ObjectStore(),
        root=str(tmp_path / "b"),
        name="d",
        schema=schema,
        params=PARAMS,
    )
    assert (
        direct.version
        == globbed.version
        == compute_version(hashlib.sha256(raw.read_bytes()).hexdigest(), schema, PARAMS)
    )
    assert (tmp_path / "a" / "datasets" / "d" / direct.version / "train.parquet").read_bytes() == (
        tmp_path / "b" / "datasets" / "d" / globbed.version / "train.parquet"
    ).read_bytes()


def test_parts_without_a_spec_are_read_by_the_digits_schema(tmp_path: Path) -> None:
    write_parts(tmp_path / "raw", digits_frame(), 4)
    schema = digits_schema()
    result = prepare_dataset(
        str(tmp_path / "raw" / "*.csv"),
        store=ObjectStore(),
        root=str(tmp_path / "store"),
        name="d",
        schema=schema,
        params=PARAMS,
    )
    manifest = load_manifest(result.dataset_uri)
    assert sum(manifest.rows.values()) == 1797 and manifest.features == list(schema.features)
    assert manifest.extra["spec"] == spec_from_schema(schema).canonical()


def test_parquet_parts_learn_categories_and_a_group_split_keeps_groups_apart(tmp_path: Path) -> None:
    frame = pd.read_csv(mixed_csv(tmp_path, rows=600))
    write_parts(tmp_path / "raw", frame, 3, "parquet")
    spec = {**mixed_spec(), "split": {"method": "group", "group_column": "patient"}}  # patient: a feature too
    result = prepare_spec(str(tmp_path / "raw" / "*.parquet"), tmp_path / "store", spec)
    manifest = load_manifest(result.dataset_uri)
    assert sum(manifest.rows.values()) == 600 and all(manifest.rows.values())
    columns = {c["name"]: c for c in manifest.extra["columns"]}
    assert columns["city"]["vocabulary"] == ["lyon", "nice", "paris"]
    assert columns["patient"]["vocabulary"] == sorted(f"p{i}" for i in range(150))
    patients = {s: set(read_split_table(result.dataset_uri, s).column("patient").to_pylist()) for s in SPLITS}
    assert not (
        patients["train"] & patients["val"]
        or patients["train"] & patients["test"]
        or patients["val"] & patients["test"]
    )
    assert sum(len(p) for p in patients.values()) == 150


def test_a_regression_in_parts_records_its_target_summary(tmp_path: Path) -> None:
    frame = pd.read_csv(diabetes_csv(tmp_path))
    write_parts(tmp_path / "raw", frame, 2)
    result = prepare_spec(str(tmp_path / "raw" / "*.csv"), tmp_path / "store", diabetes_spec())
    manifest = load_manifest(result.dataset_uri)
    assert manifest.task == "regression" and sum(manifest.rows.values()) == 442
    for split in ("train", "val", "test"):
        target = read_split_table(result.dataset_uri, split).column("progression").to_numpy()
        summary = manifest.extra["target_summary"][split]
        assert summary["mean"] == pytest.approx(target.mean()) and summary["std"] == pytest.approx(target.std())
        assert summary["min"] == target.min() and summary["max"] == target.max()


def test_duplicates_across_parts_are_rejected_naming_both_parts_or_dropped(tmp_path: Path) -> None:
    frame = digits_frame()
    paths = write_parts(tmp_path / "raw", frame, 3)
    pd.concat([pd.read_csv(paths[2]), frame.iloc[[5]]]).to_csv(paths[2], index=False)  # row 6 of part 0, again
    with pytest.raises(DataValidationError) as info:
        prepare_spec(str(tmp_path / "raw" / "*.csv"), tmp_path / "store", digits_spec())
    last = len(pd.read_csv(paths[2]))
    assert f"data row {last} of part 'part-02.csv' repeats data row 6 of part 'part-00.csv'" in str(info.value)
    assert published(tmp_path / "store") == []
    dropped = prepare_spec(
        str(tmp_path / "raw" / "*.csv"), tmp_path / "store", {**digits_spec().model_dump(), "duplicates": "drop"}
    )
    manifest = load_manifest(dropped.dataset_uri)
    assert sum(manifest.rows.values()) == 1797 and manifest.duplicates["dropped"] == 1


def test_a_bad_value_names_its_part_and_row_and_nothing_is_published(tmp_path: Path) -> None:
    paths = write_parts(tmp_path / "raw", digits_frame(), 3)
    lines = paths[1].read_text().splitlines()
    lines[8] = lines[8].replace(lines[8].split(",")[0], "17", 1)  # data row 8: pixel_0 = 17, above max 16
    paths[1].write_text("\n".join(lines) + "\n")
    with pytest.raises(DataValidationError) as info:
        prepare_spec(str(tmp_path / "raw" / "*.csv"), tmp_path / "store", digits_spec())
    assert str(paths[1]) in str(info.value) and "column 'pixel_0'" in str(info.value)
    assert "first at data row 8: 17.0" in str(info.value)
    assert published(tmp_path / "store") == []


def test_an_empty_glob_is_an_error_naming_the_pattern(tmp_path: Path) -> None:
    pattern = str(tmp_path / "raw" / "*.csv")
    for call in (
        lambda: prepare_spec(pattern, tmp_path / "store", digits_spec()),
        lambda: quick_check_input(pattern, digits_schema()),
        lambda: quick_check_spec(pattern, str(write_spec(tmp_path, digits_spec().model_dump(mode="json")))),
    ):
        with pytest.raises(DataNotFoundError, match=r"no file matches the pattern .*/raw/\*\.csv"):
            call()
    assert published(tmp_path / "store") == []


def test_parts_with_different_columns_or_formats_are_refused(tmp_path: Path) -> None:
    frame = digits_frame()
    paths = write_parts(tmp_path / "raw", frame, 3)
    frame.iloc[:10].rename(columns={"pixel_3": "px3"}).to_csv(paths[1], index=False)
    with pytest.raises(DataValidationError) as info:
        prepare_spec(str(tmp_path / "raw" / "*.csv"), tmp_path / "store", digits_spec())
    message = str(info.value)
    assert "the parts have different columns: part 'part-01.csv' lacks 'pixel_3' and adds 'px3'" in message
    assert "compared with part 'part-00.csv'" in message
    frame.iloc[:10].to_csv(paths[1], index=False)
    pq.write_table(pa.Table.from_pandas(frame.iloc[:10]), tmp_path / "raw" / "part-03.parquet")
    with pytest.raises(
        DataValidationError,
        match=r"the parts mix formats \(CSV: part-00.csv, part-01.csv, part-02.csv; PARQUET: part-03.parquet\)",
    ):
        prepare_spec(str(tmp_path / "raw" / "part-*"), tmp_path / "store", digits_spec())
    assert published(tmp_path / "store") == []


def test_spec_check_reads_parts_as_prepare_would_and_publishes_nothing(tmp_path: Path) -> None:
    write_parts(tmp_path / "raw", digits_frame(), 3)
    spec = spec_from_data(digits_spec().model_dump())
    checked = check_file(str(tmp_path / "raw" / "*.csv"), spec, PARAMS, ObjectStore())
    result = prepare_spec(str(tmp_path / "raw" / "*.csv"), tmp_path / "store", spec)
    assert checked["rows"] == result.manifest.rows and checked["version"] == result.version
    assert checked["parts"] == 3


def test_block_split_holds_exact_fractions_per_full_block_and_depends_on_the_seed() -> None:
    labels = np.repeat(np.arange(3), 2 * BLOCK)
    np.random.default_rng(0).shuffle(labels)
    assigner = SplitAssigner(PARAMS)
    codes = np.concatenate([assigner.by_stratum(chunk) for chunk in np.array_split(labels, 7)])  # batch borders free
    for label in range(3):
        mine = codes[labels == label]
        assert np.count_nonzero(mine == 2) == np.count_nonzero(mine == 1) == 2 * int(BLOCK * 0.15 + 0.5)
    whole = SplitAssigner(PARAMS).by_stratum(labels)
    assert np.array_equal(whole, codes)
    assert not np.array_equal(SplitAssigner(PrepareParams(seed=1)).by_stratum(labels), codes)


def test_csv_parts_are_cut_at_line_ends_whatever_the_line_endings(tmp_path: Path) -> None:
    from tasks.data.parts import open_parts
    from tasks.data.streaming import csv_chunks

    path = tmp_path / "crlf.csv"
    lines = ["a,b"] + [f"{i},{i * 7}" for i in range(200)]
    path.write_bytes("\r\n".join(lines).encode())  # CRLF, and no line end after the last row
    with open_parts(str(path), ObjectStore()) as parts:
        chunks = list(csv_chunks(parts.files[0], size=64))
    assert len(chunks) > 10 and all(chunk.startswith(b"a,b\r\n") for chunk in chunks)
    rows = [line for chunk in chunks for line in chunk.decode().splitlines()[1:]]
    assert rows == lines[1:]
