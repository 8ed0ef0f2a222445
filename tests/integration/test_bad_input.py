"""The prepare flow on broken raw files: the right error, a message naming the problem, nothing published."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from flows.prepare import prepare
from tasks.core import settings
from tasks.core.errors import ConfigurationError
from tests.fixtures.flow_env import migrated_home, mlflow_db_template, no_heartbeat_wait  # noqa: F401 (fixtures used by name)
from tests.fixtures.raw_files import BAD_INPUTS, BadInput

pytestmark = pytest.mark.usefixtures("prefect_api", "no_heartbeat_wait", "migrated_home")


def store_leftovers(home: Path) -> list[str]:
    """Everything under <store>/datasets, hidden staging folders included."""
    datasets = home / "store" / "datasets"
    return sorted(str(p.relative_to(datasets)) for p in datasets.rglob("*")) if datasets.exists() else []


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c.id for c in BAD_INPUTS])
def test_prepare_flow_rejects_bad_input_and_publishes_nothing(
    case: BadInput, tmp_path: Path, gpuflow_home: Path
) -> None:
    path = case.write(tmp_path)
    with pytest.raises(case.error) as raised:
        prepare(str(path))
    message = str(raised.value)
    for fragment in case.fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert store_leftovers(gpuflow_home) == []


def test_failed_prepare_marks_its_mlflow_run_failed(tmp_path: Path, gpuflow_home: Path) -> None:
    case = next(c for c in BAD_INPUTS if c.id == "unknown-labels")
    with pytest.raises(case.error):
        prepare(str(case.write(tmp_path)))
    client = MlflowClient(settings.tracking_uri())
    experiment = client.get_experiment_by_name(settings.DEFAULT_EXPERIMENT)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert [(r.data.tags.get("gpuflow.stage"), r.info.status) for r in runs] == [("prepare", "FAILED")]


def test_impossible_fractions_fail_before_reading_anything(tmp_path: Path, gpuflow_home: Path) -> None:
    with pytest.raises(ConfigurationError, match="val_fraction \\+ test_fraction"):
        prepare("demo", val_fraction=0.6, test_fraction=0.5)
    assert not (gpuflow_home / "store" / "raw").exists()


# --------------------------------------------------------------------------- dataset specs


SPEC_ERRORS = [
    pytest.param(
        {"columns": [{"name": "x", "type": "floaty"}], "target": {"name": "y", "type": "float"}},
        ("columns[0] (x).type", "unknown column type 'floaty'", "float, integer, boolean, category, tensor"),
        id="unknown-type",
    ),
    pytest.param(
        {
            "columns": [{"name": "img", "type": "tensor", "shape": [1, 8, 8], "columns": ["a", "b", "c"]}],
            "target": {"name": "y", "type": "float"},
        },
        ("columns[0] (img)", "shape [1, 8, 8] has 64 elements but 3 column(s) are listed"),
        id="tensor-shape",
    ),
    pytest.param(
        {"columns": [{"name": "y", "type": "float"}], "target": {"name": "y", "type": "float"}},
        ("target: column 'y' is also listed as a feature",),
        id="target-is-a-feature",
    ),
    pytest.param(
        {"columns": [{"name": "x", "type": "float"}], "target": {"name": "y", "type": "class", "classes": ["only"]}},
        ("target", "at least two classes", "['only']"),
        id="one-class",
    ),
    pytest.param(
        {
            "columns": [{"name": "x", "type": "float"}],
            "target": {"name": "y", "type": "float"},
            "split": {"method": "stratified"},
        },
        ("split.method", "stratified needs a class target"),
        id="stratified-regression",
    ),
]


@pytest.mark.parametrize(("spec", "fragments"), SPEC_ERRORS)
def test_a_bad_spec_fails_before_any_data_is_read(
    spec: dict, fragments: tuple[str, ...], tmp_path: Path, gpuflow_home: Path
) -> None:
    from tasks.core.dataset_spec import SpecError
    from tests.fixtures.spec_data import write_spec

    # the data file does not exist: a spec error must come first, so nothing was read
    with pytest.raises(SpecError) as raised:
        prepare(str(tmp_path / "never-read.csv"), dataset_spec=str(write_spec(tmp_path, spec)))
    for fragment in fragments:
        assert fragment in str(raised.value), f"{fragment!r} not in {raised.value}"
    assert store_leftovers(gpuflow_home) == []


def _spec_data_cases() -> list[object]:
    from tests.fixtures.spec_data import breast_cancer_spec, diabetes_spec, mixed_spec

    def edit(path: Path, row: int, column: str, value: str) -> None:  # row: 1-based data row (header is line 0)
        lines = path.read_text().splitlines()
        header = lines[0].split(",")
        fields = lines[row].split(",")
        fields[header.index(column)] = value
        lines[row] = ",".join(fields)
        path.write_text("\n".join(lines) + "\n")

    def text_in_float(folder: Path) -> Path:
        from tests.fixtures.spec_data import diabetes_csv

        path = diabetes_csv(folder)
        edit(path, 7, "bmi", "heavy")
        return path

    def undeclared_class(folder: Path) -> Path:
        from tests.fixtures.spec_data import breast_cancer_csv

        path = breast_cancer_csv(folder)
        edit(path, 12, "diagnosis", "unsure")
        return path

    def nan_target(folder: Path) -> Path:
        from tests.fixtures.spec_data import diabetes_csv

        path = diabetes_csv(folder)
        edit(path, 30, "progression", "NaN")
        return path

    def one_group(folder: Path) -> Path:
        from tests.fixtures.spec_data import mixed_csv

        path = mixed_csv(folder)
        lines = path.read_text().splitlines()
        head = lines[0].split(",").index("patient")
        out = [lines[0]]
        for line in lines[1:]:
            fields = line.split(",")
            fields[head] = "everyone"
            out.append(",".join(fields))
        path.write_text("\n".join(out) + "\n")
        return path

    def repeated_row(folder: Path) -> Path:
        from tests.fixtures.spec_data import diabetes_csv

        path = diabetes_csv(folder)
        lines = path.read_text().splitlines()
        path.write_text("\n".join([*lines, lines[3]]) + "\n")
        return path

    return [
        pytest.param(
            diabetes_spec(),
            repeated_row,
            ("1 duplicate row(s)", "data row 443 repeats data row 3", "duplicates: drop"),
            id="duplicate-rows",
        ),
        pytest.param(
            diabetes_spec(),
            text_in_float,
            ("column 'bmi' must hold numbers (float)", "data row 7", "'heavy'"),
            id="text-in-float",
        ),
        pytest.param(
            breast_cancer_spec(),
            undeclared_class,
            ("column 'diagnosis'", "class not declared", "'malignant', 'benign'", "'unsure'", "data row(s) 12"),
            id="undeclared-class",
        ),
        pytest.param(
            diabetes_spec(), nan_target, ("column 'progression'", "NaN target", "data row 30"), id="nan-target"
        ),
        pytest.param(
            mixed_spec("group"),
            one_group,
            ("split.group_column 'patient' has 1 group(s)", "holds 60 of 60 rows", "at least 3 groups"),
            id="one-group",
        ),
    ]


@pytest.mark.parametrize(("spec", "write", "fragments"), _spec_data_cases())
def test_data_that_breaks_its_spec_names_column_and_row_and_publishes_nothing(
    spec: dict, write: object, fragments: tuple[str, ...], tmp_path: Path, gpuflow_home: Path
) -> None:
    from tasks.core.errors import DataValidationError
    from tests.fixtures.spec_data import write_spec

    path = write(tmp_path)  # type: ignore[operator]
    with pytest.raises(DataValidationError) as raised:
        prepare(str(path), dataset_name="spec-data", dataset_spec=str(write_spec(tmp_path, spec)))
    for fragment in fragments:
        assert fragment in str(raised.value), f"{fragment!r} not in {raised.value}"
    assert store_leftovers(gpuflow_home) == []
