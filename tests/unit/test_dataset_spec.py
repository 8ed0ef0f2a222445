"""The dataset spec model: what it accepts, what it derives, and the errors it gives before any data is read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.core.dataset_spec import DatasetSpec, SpecError, digits_spec, parse_spec_text, spec_from_data
from tasks.data.schema import PrepareParams
from tasks.data.spec import compute_spec_version, resolve_spec

FLOAT_TARGET = {"name": "y", "type": "float"}


def spec(**fields: object) -> DatasetSpec:
    return spec_from_data({"columns": [{"name": "x", "type": "float"}], "target": FLOAT_TARGET, **fields})


def error(data: dict) -> str:
    with pytest.raises(SpecError) as raised:
        spec_from_data(data)
    return str(raised.value)


def test_the_task_and_split_follow_from_the_target() -> None:
    regression = spec()
    assert regression.task == "regression" and regression.split_method == "random"
    classification = spec(target={"name": "y", "type": "class", "classes": ["a", "b"]})
    assert classification.task == "classification" and classification.split_method == "stratified"
    assert classification.target.string_classes


def test_a_tensor_by_prefix_expands_to_its_element_columns_in_order() -> None:
    digits = digits_spec()
    assert digits.feature_columns() == tuple(f"pixel_{i}" for i in range(64))
    assert digits.raw_columns()[-1] == "label" and digits.task == "classification"


def test_a_group_only_column_is_read_but_not_a_feature() -> None:
    grouped = spec(split={"method": "group", "group_column": "patient"})
    assert grouped.group_only() == "patient"
    assert grouped.raw_columns() == ("x", "y", "patient")
    assert grouped.feature_columns() == ("x",)


def test_canonical_form_spells_out_defaults_and_ignores_the_description() -> None:
    short = spec()
    long = spec(duplicates="reject", dtype="float32", split={}, description="people only")
    assert short.canonical() == long.canonical()
    params = PrepareParams()
    assert compute_spec_version("abc", short, params) == compute_spec_version("abc", long, params)
    assert compute_spec_version("abc", short, params) != compute_spec_version("abc", spec(duplicates="drop"), params)


@pytest.mark.parametrize(
    ("data", "fragments"),
    [
        (
            {"columns": [{"name": "x", "type": "text"}], "target": FLOAT_TARGET},
            ["columns[0] (x).type", "unknown column type 'text'", "expected one of float, integer"],
        ),
        ({"columns": [{"name": "x"}], "target": FLOAT_TARGET}, ["columns[0] (x).type: missing"]),
        (
            {
                "columns": [{"name": "i", "type": "tensor", "shape": [2, 2], "columns": ["a", "b", "c"]}],
                "target": FLOAT_TARGET,
            },
            ["columns[0] (i)", "shape [2, 2] has 4 elements but 3 column(s) are listed"],
        ),
        (
            {"columns": [{"name": "i", "type": "tensor", "shape": [2, 0], "prefix": "p"}], "target": FLOAT_TARGET},
            ["shape must be a list of positive sizes"],
        ),
        (
            {"columns": [{"name": "i", "type": "tensor", "shape": [4]}], "target": FLOAT_TARGET},
            ["exactly one of 'columns' or 'prefix'"],
        ),
        ({"columns": [{"name": "y", "type": "float"}], "target": FLOAT_TARGET}, ["target: column 'y' is also listed"]),
        (
            {"columns": [{"name": "i", "type": "tensor", "shape": [2], "columns": ["y", "z"]}], "target": FLOAT_TARGET},
            ["column 'y' is also listed as a feature"],
        ),
        (
            {"columns": [{"name": "x", "type": "float"}], "target": {"name": "y", "type": "class", "classes": [1]}},
            ["at least two classes"],
        ),
        (
            {"columns": [{"name": "x", "type": "float"}], "target": {"name": "y", "type": "class"}},
            ["declares its classes"],
        ),
        (
            {"columns": [{"name": "x", "type": "float"}], "target": {"name": "y", "type": "class", "classes": [1, 1]}},
            ["classes listed twice"],
        ),
        (
            {
                "columns": [{"name": "x", "type": "float"}],
                "target": {"name": "y", "type": "class", "classes": [0, "a"]},
            },
            ["all integers or all strings"],
        ),
        (
            {"columns": [{"name": "x", "type": "float", "min": 2, "max": 1}], "target": FLOAT_TARGET},
            ["min (2.0) is above max"],
        ),
        (
            {"columns": [{"name": "x", "type": "float"}, {"name": "x", "type": "integer"}], "target": FLOAT_TARGET},
            ["raw column 'x' is already used by columns[0]"],
        ),
        (
            {"columns": [{"name": "x", "type": "category", "categories": []}], "target": FLOAT_TARGET},
            ["categories is empty"],
        ),
        (
            {"columns": [{"name": "x", "type": "float"}], "target": FLOAT_TARGET, "split": {"method": "group"}},
            ["names its group_column"],
        ),
        (
            {"columns": [{"name": "x", "type": "float"}], "target": FLOAT_TARGET, "duplicates": "keep"},
            ["duplicates", "'keep'"],
        ),
        ({"columns": [], "target": FLOAT_TARGET}, ["at least one feature column"]),
        ({"columns": [{"name": "x", "type": "float"}]}, ["target: missing"]),
        ({"columns": [{"name": "x", "type": "float"}], "target": FLOAT_TARGET, "colour": 1}, ["colour: unknown field"]),
    ],
)
def test_spec_errors_name_the_field_and_what_was_expected(data: dict, fragments: list[str]) -> None:
    message = error(data)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_yaml_and_json_files_load_and_a_missing_file_is_named(tmp_path: Path) -> None:
    data = {"columns": [{"name": "x", "type": "integer", "min": 0}], "target": FLOAT_TARGET}
    (tmp_path / "s.json").write_text(json.dumps(data))
    (tmp_path / "s.yaml").write_text("columns:\n  - {name: x, type: integer, min: 0}\ntarget: {name: y, type: float}\n")
    assert resolve_spec(str(tmp_path / "s.json")) == resolve_spec(str(tmp_path / "s.yaml")) == spec_from_data(data)
    assert resolve_spec(None) is None and resolve_spec("  ") is None
    with pytest.raises(SpecError, match=r"dataset spec file .*nope\.yaml does not exist"):
        resolve_spec(str(tmp_path / "nope.yaml"))
    with pytest.raises(SpecError, match="not valid YAML"):
        parse_spec_text("columns: [", "x.yaml")
    with pytest.raises(SpecError, match="expected a mapping"):
        parse_spec_text("- 1\n- 2\n")


@pytest.mark.parametrize("name", ["data.csv", "data.parquet", "DATA.PQ"])
def test_a_data_file_given_as_the_spec_is_named_as_such(name: str, tmp_path: Path) -> None:
    data = tmp_path / name
    data.write_text("x,y\n1,2\n")
    with pytest.raises(SpecError) as refused:
        resolve_spec(str(data))
    assert str(refused.value) == (
        f"dataset spec {data} is a data file, not a spec: a spec is YAML or JSON "
        f"(`gpuflow spec infer {data}` writes one to start from)"
    )
    with pytest.raises(SpecError, match="is a data file, not a spec"):  # told by its name, before any read
        resolve_spec(str(tmp_path / "absent" / name))
