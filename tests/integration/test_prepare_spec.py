"""The prepare flow by a dataset spec: each task and column type end to end, manifests and splits checked."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from blocks.dataset_spec import DatasetSpecBlock
from flows.prepare import prepare
from tasks.core.dataset_spec import spec_from_data
from tests.fixtures.flow_env import migrated_home, mlflow_db_template, no_heartbeat_wait  # noqa: F401 (fixtures used by name)
from tests.fixtures.spec_data import (
    breast_cancer_csv,
    breast_cancer_spec,
    diabetes_csv,
    diabetes_spec,
    digits_tensor_spec,
    mixed_csv,
    mixed_spec,
    write_spec,
)
from workloads.dataset import load_manifest, read_split, read_split_table

pytestmark = pytest.mark.usefixtures("prefect_api", "no_heartbeat_wait", "migrated_home")


def manifest_json(dataset_uri: str) -> dict:
    return json.loads(load_manifest(dataset_uri).to_json())


def test_breast_cancer_with_string_labels_is_a_binary_classification(tmp_path: Path, gpuflow_home: Path) -> None:
    spec = write_spec(tmp_path, breast_cancer_spec())
    result = prepare(str(breast_cancer_csv(tmp_path)), dataset_name="breast-cancer", dataset_spec=str(spec))
    assert result.task == "classification"
    assert sum(result.rows.values()) == 569
    manifest = load_manifest(result.dataset_uri)
    assert manifest.format == 2 and manifest.task == "classification"
    assert manifest.target == {
        "name": "diagnosis",
        "type": "class",
        "classes": ["malignant", "benign"],
        "stored": "index",
    }
    assert manifest.class_names == ["malignant", "benign"] and manifest.labels == [0, 1]
    assert manifest.extra["spec"] == spec_from_data(breast_cancer_spec()).canonical()
    # stratified: both classes keep the file's balance (212 malignant, 357 benign) in every split
    total = {
        name: sum(manifest.class_balance[s][name] for s in ("train", "val", "test")) for name in ("malignant", "benign")
    }
    assert total == {"malignant": 212, "benign": 357}
    x, y = read_split(result.dataset_uri, "test")
    assert x.shape == (result.rows["test"], 30) and set(np.unique(y)) == {0, 1}
    assert y.dtype == np.int64


def test_diabetes_is_a_regression_with_a_float_target(tmp_path: Path, gpuflow_home: Path) -> None:
    spec = write_spec(tmp_path, diabetes_spec(), "diabetes.json")
    result = prepare(str(diabetes_csv(tmp_path)), dataset_name="diabetes", dataset_spec=str(spec), seed=3)
    assert result.task == "regression"
    manifest = manifest_json(result.dataset_uri)
    assert manifest["format"] == 2 and manifest["task"] == "regression"
    assert manifest["target"] == {"name": "progression", "type": "float"}
    assert manifest["split_method"] == "random" and manifest["class_balance"] == {}
    assert manifest["schema"]["labels"] == []
    assert sum(manifest["rows"].values()) == 442
    assert 100 < manifest["target_summary"]["train"]["mean"] < 200
    x, y = read_split(result.dataset_uri, "train")
    assert y.dtype == np.float64 and x.shape == (result.rows["train"], 10)
    assert not np.all(y == np.round(y)) or len(np.unique(y)) > 50  # float values, not class indices


def test_digits_as_an_image_tensor_stores_the_demo_bytes(tmp_path: Path, gpuflow_home: Path) -> None:
    demo = prepare("demo")
    spec = write_spec(tmp_path, digits_tensor_spec())
    tensor = prepare("demo", dataset_name="digits-image", dataset_spec=str(spec))
    assert tensor.dataset_version != demo.dataset_version  # the spec is part of the version
    old, new = load_manifest(demo.dataset_uri), load_manifest(tensor.dataset_uri)
    assert {k: v.sha256 for k, v in old.splits.items()} == {k: v.sha256 for k, v in new.splits.items()}
    assert new.features == old.features and new.labels == list(range(10))
    (image,) = new.extra["columns"]
    assert image["type"] == "tensor" and image["shape"] == [1, 8, 8] and len(image["columns"]) == 64
    assert image["columns"][0] == "pixel_0" and image["columns"][-1] == "pixel_63"
    assert old.task == "classification" and old.target["stored"] == "value"


def test_categories_booleans_and_nullable_columns_are_encoded(tmp_path: Path, gpuflow_home: Path) -> None:
    spec = write_spec(tmp_path, mixed_spec())
    result = prepare(str(mixed_csv(tmp_path)), dataset_name="mixed", dataset_spec=str(spec))
    manifest = load_manifest(result.dataset_uri)
    columns = {c["name"]: c for c in manifest.extra["columns"]}
    assert columns["city"]["vocabulary"] == ["lyon", "nice", "paris"]
    assert columns["height"]["nullable"] is True
    table = read_split_table(result.dataset_uri, "train")
    assert str(table.schema.field("smoker").type) == "int8"
    assert set(table.column("smoker").to_pylist()) == {0, 1}
    assert set(table.column("city").to_pylist()) <= {0, 1, 2}
    assert str(table.schema.field("visits").type) == "int64"
    assert str(table.schema.field("height").type) == "float"
    everything = sum(
        read_split_table(result.dataset_uri, s).column("height").null_count for s in ("train", "val", "test")
    )
    assert everything == 4  # rows 5, 22, 39, 56 (0-based) have no height
    assert manifest.target["classes"] == ["no", "yes"]


def test_a_group_split_keeps_each_group_on_one_side(tmp_path: Path, gpuflow_home: Path) -> None:
    spec = write_spec(tmp_path, mixed_spec("group"))
    path = mixed_csv(tmp_path, rows=200)
    result = prepare(str(path), dataset_name="grouped", dataset_spec=str(spec))
    manifest = load_manifest(result.dataset_uri)
    assert manifest.extra["split_method"] == "group"
    assert "patient" not in manifest.features  # read for the split only
    # which patients went where: rebuild from the raw file by row position
    import pyarrow.csv as pcsv

    raw = pcsv.read_csv(path).to_pydict()
    rows_by_split = {s: read_split_table(result.dataset_uri, s).num_rows for s in ("train", "val", "test")}
    assert all(n > 0 for n in rows_by_split.values()) and sum(rows_by_split.values()) == 200
    # every patient has 4 rows; a split's row count is then a multiple of 4 only if no patient is cut
    assert all(n % 4 == 0 for n in rows_by_split.values()), rows_by_split
    assert len(set(raw["patient"])) == 50


def test_duplicates_can_be_dropped_or_allowed_by_the_spec(tmp_path: Path, gpuflow_home: Path) -> None:
    base = diabetes_csv(tmp_path)
    lines = base.read_text().splitlines()
    doubled = tmp_path / "doubled.csv"
    doubled.write_text("\n".join([*lines, lines[1], lines[2]]) + "\n")
    dropped = prepare(
        str(doubled),
        dataset_name="d1",
        dataset_spec=str(write_spec(tmp_path, {**diabetes_spec(), "duplicates": "drop"})),
    )
    assert sum(dropped.rows.values()) == 442 and dropped.duplicates_dropped == 2
    allowed = prepare(
        str(doubled),
        dataset_name="d2",
        dataset_spec=str(write_spec(tmp_path, {**diabetes_spec(), "duplicates": "allow"})),
    )
    assert sum(allowed.rows.values()) == 444 and allowed.duplicates_found == 0


def test_a_saved_dataset_spec_block_is_chosen_by_name(tmp_path: Path, gpuflow_home: Path) -> None:
    DatasetSpecBlock(spec=spec_from_data(diabetes_spec())).save("diabetes-spec", overwrite=True)
    by_block = prepare(str(diabetes_csv(tmp_path)), dataset_name="diabetes", dataset_spec="diabetes-spec")
    by_file = prepare(
        str(diabetes_csv(tmp_path)), dataset_name="diabetes", dataset_spec=str(write_spec(tmp_path, diabetes_spec()))
    )
    assert by_block.dataset_version == by_file.dataset_version and by_file.cache_hit
    assert load_manifest(by_block.dataset_uri).task == "regression"


def test_breast_cancer_runs_through_the_pipeline_and_a_gate_a_regression_cannot_meet_is_refused_before_training(
    tmp_path: Path, gpuflow_home: Path
) -> None:
    from flows.pipeline import PipelineResult, ml_pipeline
    from tasks.core.errors import ConfigurationError

    spec = write_spec(tmp_path, breast_cancer_spec())
    result = ml_pipeline(  # no names: the dataset and the model are named after the file
        data_uri=str(breast_cancer_csv(tmp_path)),
        dataset_spec=str(spec),
        epochs=8,
        device="cpu",
        promote_on_pass=False,
    )
    assert isinstance(result, PipelineResult)
    assert (result.dataset_name, result.model_name) == ("breast_cancer", "gpuflow-breast_cancer")
    assert result.metrics["accuracy"] > 0.85  # standardisation is the model's job; raw features still separate

    regression = write_spec(tmp_path, diabetes_spec(), "diabetes.yaml")
    gate = tmp_path / "accuracy-gate.yaml"
    gate.write_text("rules:\n  - {metric: accuracy, at_least: 0.9}\n")
    with pytest.raises(ConfigurationError, match=r"quality gate rule on 'accuracy'.*regression.*rmse"):
        ml_pipeline(
            data_uri=str(diabetes_csv(tmp_path)),
            dataset_name="diabetes",
            model_name="diabetes",
            dataset_spec=str(regression),
            gate=str(gate),
            epochs=1,
            device="cpu",
            promote_on_pass=False,
        )
    from mlflow import MlflowClient

    from tasks.core import settings

    runs = MlflowClient(settings.tracking_uri()).search_runs(
        [e.experiment_id for e in MlflowClient(settings.tracking_uri()).search_experiments()],
        filter_string="tags.`gpuflow.stage` = 'train' and tags.`gpuflow.dataset_version` != ''",
    )
    assert len(runs) == 1  # the breast-cancer training only: the regression never reached training


def test_parquet_input_is_read_by_the_spec_and_a_bad_parquet_value_is_named(tmp_path: Path, gpuflow_home: Path) -> None:
    import pyarrow as pa

    from tasks.core.errors import DataValidationError
    from tests.fixtures.raw_files import digits_columns, parquet_bytes

    columns = digits_columns(300)  # float64 pixels and an int64 label, as pandas writes them
    good = tmp_path / "digits.parquet"
    good.write_bytes(parquet_bytes(columns))
    result = prepare(str(good), dataset_name="digits-pq", dataset_spec=str(write_spec(tmp_path, digits_tensor_spec())))
    table = read_split_table(result.dataset_uri, "train")
    assert str(table.schema.field("pixel_0").type) == "float" and str(table.schema.field("label").type) == "int64"
    assert sum(result.rows.values()) == 300

    named = dict(columns)
    named["label"] = pa.array([f"digit-{v}" for v in columns["label"].to_pylist()])
    spec = {
        **digits_tensor_spec(),
        "target": {"name": "label", "type": "class", "classes": [f"digit-{i}" for i in range(10)]},
    }
    strings = tmp_path / "named.parquet"
    strings.write_bytes(parquet_bytes(named))
    by_name = prepare(
        str(strings), dataset_name="digits-named", dataset_spec=str(write_spec(tmp_path, spec, "named.yaml"))
    )
    manifest = load_manifest(by_name.dataset_uri)
    assert manifest.class_names[3] == "digit-3" and manifest.labels == list(range(10))
    _, y = read_split(by_name.dataset_uri, "test")
    assert set(y.tolist()) <= set(range(10))

    broken = dict(columns)
    broken["pixel_9"] = pa.array([str(v) for v in columns["pixel_9"].to_pylist()[:40]] + ["dark"] + ["1.0"] * 259)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(parquet_bytes(broken))
    with pytest.raises(
        DataValidationError, match=r"column 'pixel_9' must hold numbers \(float\), but data row 41 holds 'dark'"
    ):
        prepare(str(bad), dataset_name="digits-bad", dataset_spec=str(write_spec(tmp_path, digits_tensor_spec())))
