"""Split, version and publish: deterministic, stratified, content-addressed, all-or-nothing, readable."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tasks.core.errors import ConfigurationError
from tasks.data.demo import digits_csv_bytes, digits_schema, write_digits_csv
from tasks.data.publish import compute_version, prepare_dataset
from tasks.data.schema import DatasetSchema, PrepareParams
from tasks.data.split import allocate, min_rows_per_class, stratified_split
from tests.fixtures.raw_files import csv_bytes, digits_rows
from workloads.dataset import (
    MANIFEST,
    DatasetCorrupt,
    DatasetNotFound,
    dataset_exists,
    load_manifest,
    read_split,
)
from workloads.store import ObjectStore

LABELS = np.repeat(np.arange(10), [100, 50, 30, 20, 10, 7, 5, 4, 3, 200])


def split(labels: np.ndarray = LABELS, seed: int = 42, val: float = 0.15, test: float = 0.15, **kw):
    return stratified_split(labels, val_fraction=val, test_fraction=test, seed=seed, **kw)


def test_same_labels_and_seed_give_the_same_split() -> None:
    first, second = split(), split()
    for name in ("train", "val", "test"):
        assert np.array_equal(first[name], second[name])


def test_another_seed_gives_another_split() -> None:
    assert not np.array_equal(split(seed=1)["test"], split(seed=2)["test"])


def test_splits_are_disjoint_sorted_and_cover_every_row() -> None:
    parts = split()
    joined = np.concatenate(list(parts.values()))
    assert sorted(joined.tolist()) == list(range(len(LABELS)))
    for rows in parts.values():
        assert np.all(np.diff(rows) > 0)


@pytest.mark.parametrize(("val", "test"), [(0.15, 0.15), (0.1, 0.2), (0.3, 0.3)])
def test_every_class_is_split_by_the_fractions(val: float, test: float) -> None:
    parts = split(val=val, test=test)
    for label in np.unique(LABELS):
        n = int(np.count_nonzero(np.equal(LABELS, label)))
        expected = allocate(n, val, test)
        got = tuple(int((LABELS[parts[name]] == label).sum()) for name in ("train", "val", "test"))
        assert got == expected
        assert min(got) >= 1


def test_row_ids_name_the_rows_that_survived() -> None:
    ids = np.arange(0, 2 * len(LABELS), 2)
    parts = split(row_ids=ids)
    assert set(np.concatenate(list(parts.values())).tolist()) == set(ids.tolist())


@pytest.mark.parametrize(
    ("rows", "val", "test", "expected"),
    [
        (100, 0.15, 0.15, (70, 15, 15)),
        (3, 0.15, 0.15, (1, 1, 1)),
        (10, 0.25, 0.25, (4, 3, 3)),
        (7, 0.1, 0.1, (5, 1, 1)),
    ],
)
def test_allocate_rounds_and_keeps_one_row_per_split(rows: int, val: float, test: float, expected: tuple) -> None:
    assert allocate(rows, val, test) == expected


@pytest.mark.parametrize(
    ("val", "test", "expected"), [(0.15, 0.15, 3), (0.45, 0.45, 3), (0.4, 0.45, 3), (0.49, 0.49, 3)]
)
def test_min_rows_per_class_is_enough_for_one_row_each(val: float, test: float, expected: int) -> None:
    need = min_rows_per_class(val, test)
    assert need == expected
    assert min(allocate(need, val, test)) >= 1


BASE = PrepareParams()
SCHEMA = digits_schema()


@pytest.mark.parametrize(
    ("content", "schema", "params", "same"),
    [
        ("a" * 64, SCHEMA, BASE, True),
        ("b" * 64, SCHEMA, BASE, False),
        ("a" * 64, SCHEMA, PrepareParams(seed=7), False),
        ("a" * 64, SCHEMA, PrepareParams(val_fraction=0.2), False),
        ("a" * 64, SCHEMA, PrepareParams(test_fraction=0.1), False),
        ("a" * 64, SCHEMA, PrepareParams(drop_duplicates=True), False),
        ("a" * 64, SCHEMA.model_copy(update={"value_range": (0.0, 255.0)}), BASE, False),
        ("a" * 64, DatasetSchema(**SCHEMA.model_dump()), PrepareParams(**BASE.model_dump()), True),
    ],
)
def test_version_changes_exactly_when_content_or_parameters_change(
    content: str, schema: DatasetSchema, params: PrepareParams, same: bool
) -> None:
    reference = compute_version("a" * 64, SCHEMA, BASE)
    version = compute_version(content, schema, params)
    assert len(version) == 16
    assert (version == reference) is same


def prepare(path: Path, root: Path, **params: object):
    return prepare_dataset(
        str(path), store=ObjectStore(), root=str(root), name="digits", schema=SCHEMA,
        params=PrepareParams(**params),  # type: ignore[arg-type]
    )  # fmt: skip


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*")}


def test_second_run_is_a_cache_hit_and_writes_nothing(tmp_path: Path) -> None:
    raw = tmp_path / "digits.csv"
    write_digits_csv(str(raw), ObjectStore())
    first = prepare(raw, tmp_path / "store")
    before = snapshot(tmp_path / "store")
    second = prepare(raw, tmp_path / "store")
    assert (first.cache_hit, second.cache_hit) == (False, True)
    assert second.version == first.version
    assert snapshot(tmp_path / "store") == before


def test_same_bytes_elsewhere_share_the_version_and_a_changed_byte_does_not(tmp_path: Path) -> None:
    raw = tmp_path / "a.csv"
    raw.write_bytes(csv_bytes(digits_rows(300)))
    copy = tmp_path / "copy" / "b.csv"
    copy.parent.mkdir()
    shutil.copy(raw, copy)
    rows = digits_rows(300)
    rows[0][0] = "1"
    changed = tmp_path / "c.csv"
    changed.write_bytes(csv_bytes(rows))
    root = tmp_path / "store"
    assert prepare(raw, root).version == prepare(copy, root).version
    assert prepare(changed, root).version != prepare(raw, root).version


def test_manifest_is_complete_and_files_match_their_checksums(tmp_path: Path) -> None:
    raw = tmp_path / "digits.csv"
    raw.write_bytes(digits_csv_bytes())
    result = prepare(raw, tmp_path / "store", seed=3)
    folder = tmp_path / "store" / "datasets" / "digits" / result.version
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "test.parquet", "train.parquet", "val.parquet"]
    data = json.loads((folder / MANIFEST).read_text())
    assert set(data) >= {
        "name", "version", "source_uri", "schema", "rows", "class_balance", "splits", "parameters",
        "duplicates", "created_at", "source_sha256",
    }  # fmt: skip
    assert data["schema"]["features"][0] == "pixel_0" and data["schema"]["label"] == "label"
    assert data["schema"]["labels"] == list(range(10))
    assert data["parameters"] == {"val_fraction": 0.15, "test_fraction": 0.15, "seed": 3, "drop_duplicates": False}
    assert sum(data["rows"].values()) == 1797
    for split_name in ("train", "val", "test"):
        assert sum(data["class_balance"][split_name].values()) == data["rows"][split_name]
        assert data["splits"][split_name]["file"] == f"{split_name}.parquet"
    x, y = read_split(result.dataset_uri, "test")
    assert x.dtype == np.float32 and x.shape == (data["rows"]["test"], 64)
    assert y.dtype == np.int64
    assert {str(k): int(v) for k, v in zip(*np.unique(y, return_counts=True), strict=True)} == data["class_balance"][
        "test"
    ]


def test_split_content_is_the_raw_rows(tmp_path: Path) -> None:
    raw = tmp_path / "digits.csv"
    raw.write_bytes(csv_bytes(digits_rows(300)))
    result = prepare(raw, tmp_path / "store")
    original = np.array(digits_rows(300), dtype=np.float64)
    rows = {tuple(r) for r in original}
    for split_name in ("train", "val", "test"):
        x, y = read_split(result.dataset_uri, split_name)
        assert all(tuple(np.r_[xi, yi]) in rows for xi, yi in zip(x.astype(np.float64), y, strict=True))


def test_reader_rejects_a_split_changed_after_publishing(tmp_path: Path) -> None:
    raw = tmp_path / "digits.csv"
    raw.write_bytes(digits_csv_bytes())
    result = prepare(raw, tmp_path / "store")
    path = tmp_path / "store" / "datasets" / "digits" / result.version / "val.parquet"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DatasetCorrupt, match="sha256"):
        read_split(result.dataset_uri, "val")


def test_folder_without_manifest_is_not_a_dataset(tmp_path: Path) -> None:
    folder = tmp_path / "datasets" / "digits" / "0123456789abcdef"
    folder.mkdir(parents=True)
    (folder / "train.parquet").write_bytes(b"PAR1")
    assert not dataset_exists(str(folder))
    with pytest.raises(DatasetNotFound, match=r"manifest\.json"):
        load_manifest(str(folder))


def test_failed_publish_leaves_no_staging_folder(tmp_path: Path) -> None:
    raw = tmp_path / "digits.csv"
    raw.write_bytes(digits_csv_bytes())
    version = compute_version(hashlib.sha256(raw.read_bytes()).hexdigest(), SCHEMA, BASE)
    blocker = tmp_path / "store" / "datasets" / "digits" / version
    blocker.parent.mkdir(parents=True)
    blocker.write_text("a file where the dataset folder should go")
    with pytest.raises(OSError):
        prepare(raw, tmp_path / "store")
    assert [p.name for p in blocker.parent.iterdir()] == [version]


@pytest.mark.parametrize("name", ["../x", "", "a/b", ".hidden", "x" * 200])
def test_dataset_names_that_are_not_folder_names_are_refused(name: str, tmp_path: Path) -> None:
    raw = tmp_path / "digits.csv"
    raw.write_bytes(digits_csv_bytes())
    with pytest.raises(ConfigurationError, match="dataset name"):
        prepare_dataset(str(raw), store=ObjectStore(), root=str(tmp_path), name=name, schema=SCHEMA, params=BASE)
