"""A category column given to a model in the form its MLflow signature asks for (workloads/model_input.py): the
vocabulary's strings for a ``string`` column, the stored codes for a number, a clear error for anything else, the
same answer for evaluation, the canary's replayed rows and the launcher's model check.

The dataset is prepared by its spec with the real prepare logic into a folder store; its category ``city`` declares
its vocabulary in an order that is not alphabetical, so codes and sorted values cannot be confused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mlflow.types import ColSpec, Schema, TensorSpec

from tasks.core.errors import ConfigurationError
from tasks.evaluation.labelled_split import read_test_split
from tasks.evaluation.model_loading import LoadedModel, ModelInput
from tasks.rollout.replay import read_replay_split
from tests.fixtures.spec_data import publish_by_spec
from workloads.dataset import load_manifest, read_split
from workloads.launcher.checks import check_schema, sample_input
from workloads.model_input import (
    InputMismatch,
    SignatureColumn,
    category_vocabularies,
    model_frame,
    model_rows,
    signature_columns,
)
from workloads.store import ObjectStore, local_path

CITIES = ["paris", "lyon", "nice"]  # code order: paris 0, lyon 1, nice 2 (not sorted)
SPEC = {
    "columns": [
        {"name": "visits", "type": "integer", "min": 0},
        {"name": "city", "type": "category", "categories": CITIES, "nullable": True},
        {"name": "height", "type": "float"},
    ],
    "target": {"name": "outcome", "type": "class", "classes": ["no", "yes"]},
}


def _csv(folder: Path, rows: int = 90) -> Path:
    """visits, city (every tenth row missing), height, outcome: a team's raw file."""
    lines = ["visits,city,height,outcome"]
    for i in range(rows):
        city = "" if i % 10 == 3 else ["nice", "paris", "lyon"][i % 3]
        lines.append(f"{i % 9},{city},{150 + (i * 7) % 40}.5,{'yes' if i % 2 else 'no'}")
    path = folder / "visits.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def _schema(city: str, *, visits: str = "long") -> Schema:
    return Schema([ColSpec(visits, "visits"), ColSpec(city, "city"), ColSpec("double", "height")])


def _columns(schema: Schema, features: list[str]) -> tuple[SignatureColumn, ...]:
    columns = signature_columns(schema, features)
    assert columns is not None
    return columns


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("categories")
    return publish_by_spec((folder / "store").as_uri(), _csv(folder), SPEC, "visits")


def _raw_cities(dataset: str, split: str = "test") -> list[str | None]:
    """Each row's city as the raw file has it (None: missing), from the row's stored code and the declared order."""
    manifest = load_manifest(dataset)
    x, _ = read_split(dataset, split, manifest=manifest)
    return [None if np.isnan(code) else CITIES[int(code)] for code in x[:, manifest.features.index("city")]]


def test_a_string_signature_gets_the_vocabularys_values_and_a_number_one_the_codes(dataset: str) -> None:
    manifest = load_manifest(dataset)
    x, _ = read_split(dataset, "test", manifest=manifest)
    vocabularies = category_vocabularies(manifest)
    assert vocabularies == {"city": CITIES}

    as_strings = model_frame(x, manifest.features, _columns(_schema("string"), manifest.features), vocabularies)
    as_codes = model_frame(x, manifest.features, _columns(_schema("double"), manifest.features), vocabularies)

    assert list(as_strings.columns) == ["visits", "city", "height"]
    assert as_strings["city"].tolist() == _raw_cities(dataset)
    assert repr(as_codes["city"].tolist()) == repr(
        [np.nan if c is None else float(CITIES.index(c)) for c in _raw_cities(dataset)]
    )
    assert str(as_codes["city"].dtype) == "float64" and str(as_strings["visits"].dtype) == "int64"
    train, _ = read_split(dataset, "train", manifest=manifest)
    strings = model_frame(train, manifest.features, _columns(_schema("string"), manifest.features),
                          vocabularies)["city"].tolist()  # fmt: skip
    assert strings == _raw_cities(dataset, "train") and None in strings and set(strings) == {*CITIES, None}


def test_replayed_rows_follow_the_signatures_order_with_categories_as_it_asks(dataset: str) -> None:
    manifest = load_manifest(dataset)
    x, _ = read_split(dataset, "test", manifest=manifest)
    reordered = Schema([ColSpec("string", "city"), ColSpec("double", "height"), ColSpec("long", "visits")])
    columns = signature_columns(reordered, manifest.features)

    rows = model_rows(x, manifest.features, columns, category_vocabularies(manifest))
    split = read_replay_split(ObjectStore(), dataset, "classification", ["no", "yes"], {"the candidate": reordered})

    assert rows.dtype == object and [row[0] for row in rows.tolist()] == _raw_cities(dataset)
    assert all(isinstance(row[2], int) and isinstance(row[1], float) for row in rows.tolist())
    assert repr(split.features.tolist()) == repr(rows.tolist())  # what the canary sends, as JSON rows
    # a model taking numbers, a tensor signature or none: the float32 rows as stored (codes), as before
    tensor = Schema([TensorSpec(np.dtype("float32"), (-1, 3))])
    for schema in (_schema("long"), tensor, None):
        plain = read_replay_split(ObjectStore(), dataset, "classification", ["no", "yes"], {"the model": schema})
        assert plain.features.dtype == np.float32 and np.array_equal(plain.features, x, equal_nan=True)


def test_a_category_typed_neither_string_nor_number_is_a_configuration_error_naming_both_types(dataset: str) -> None:
    manifest = load_manifest(dataset)
    x, _ = read_split(dataset, "test", manifest=manifest)
    expected = (
        r"the model's signature takes column 'city' as boolean, but the dataset stores it as a category \(int32 "
        r"codes of \['paris', 'lyon', 'nice'\]\); expected string \(the category's values\) or a number type"
    )
    with pytest.raises(InputMismatch, match=expected):
        model_frame(x, manifest.features, _columns(_schema("boolean"), manifest.features), {"city": CITIES})

    with pytest.raises(ConfigurationError, match=r"the candidate \(version 2\): " + expected):
        read_replay_split(ObjectStore(), dataset, "classification", ["no", "yes"],
                          {"the candidate (version 2)": _schema("boolean")})  # fmt: skip

    model = LoadedModel("models:/visits/2", "mlflow.sklearn", ModelInput(columns=("visits", "city", "height"),
                        column_types=("long", "binary", "double")), pyfunc=object())  # fmt: skip
    split = read_test_split(ObjectStore(), dataset)
    with pytest.raises(ConfigurationError, match=r"models:/visits/2: .*takes column 'city' as binary"):
        model.inputs(split.features, split.feature_names, {}, split.category_vocabularies())


def test_champion_and_candidate_taking_the_category_differently_are_refused_naming_both_forms(dataset: str) -> None:
    schemas = {"the champion (version 1)": _schema("long"), "the candidate (version 2)": _schema("string")}

    with pytest.raises(ConfigurationError) as caught:
        read_replay_split(ObjectStore(), dataset, "classification", ["no", "yes"], schemas)

    message = str(caught.value)
    assert "the champion (version 1) and the candidate (version 2) take the test rows in different forms" in message
    assert "categories as codes" in message and "categories ['city'] as strings" in message


def test_evaluation_gives_a_pyfunc_model_the_strings_its_signature_asks_for(dataset: str) -> None:
    split = read_test_split(ObjectStore(), dataset)
    model = LoadedModel("models:/visits/1", "mlflow.sklearn", ModelInput(columns=("city", "visits"),
                        column_types=("string", "long")), pyfunc=object())  # fmt: skip

    frame = model.inputs(split.features, split.feature_names, {}, split.category_vocabularies())

    assert frame["city"].tolist() == _raw_cities(dataset) and list(frame.columns) == ["city", "visits"]


def test_the_launchers_model_check_uses_the_same_forms(dataset: str) -> None:
    manifest = load_manifest(dataset)
    folder = Path(local_path(dataset))

    sample = sample_input(_schema("string"), manifest, folder)
    problems = check_schema(_schema("datetime"), manifest, "runs:/r/model")

    assert sample["city"].tolist() == _raw_cities(dataset, "val")[:5]
    assert len(problems) == 1 and "takes column 'city' as datetime" in problems[0]
    assert check_schema(_schema("string"), manifest, "runs:/r/model") == []
    assert check_schema(_schema("integer"), manifest, "runs:/r/model") == []
