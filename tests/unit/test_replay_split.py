"""The canary's replayed traffic: a prepared dataset's test split with labels in the model's answer space.

The datasets are prepared by their specs with the real prepare logic (``tasks.data.spec.prepare_with_spec``)
into a folder store, as a team's data would be.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tasks.core.dataset_spec import spec_from_data
from tasks.core.errors import ConfigurationError
from tasks.data.schema import PrepareParams
from tasks.data.spec import prepare_with_spec
from tasks.rollout.replay import read_replay_split
from tests.fixtures.spec_data import breast_cancer_csv, breast_cancer_spec, diabetes_csv, diabetes_spec
from workloads.store import ObjectStore


def prepared(folder: Path, name: str, source: Path, spec: dict) -> str:
    result = prepare_with_spec(
        str(source),
        store=ObjectStore(),
        root=(folder / "store").as_uri(),
        name=name,
        spec=spec_from_data(spec),
        params=PrepareParams(),
    )
    return result.dataset_uri


def test_string_classes_stored_as_indices_are_replayed_as_the_names_the_model_answers(tmp_path: Path) -> None:
    uri = prepared(tmp_path, "breast-cancer", breast_cancer_csv(tmp_path), breast_cancer_spec())
    by_name = read_replay_split(ObjectStore(), uri, "classification", ["benign", "malignant"])
    by_index = read_replay_split(ObjectStore(), uri, "classification", [0, 1])
    assert by_name.task == "classification" and by_name.features.shape == (by_name.rows, 30)
    assert set(by_name.labels) == {"malignant", "benign"}
    assert set(by_index.labels) == {"0", "1"}  # the model answers the stored indices: compared as they are
    # the same rows either way: class 0 is "malignant" (the spec's class order)
    assert [{"0": "malignant", "1": "benign"}[label] for label in by_index.labels] == by_name.labels


def test_a_regression_split_replays_float_targets_and_refuses_a_classifier(tmp_path: Path) -> None:
    uri = prepared(tmp_path, "diabetes", diabetes_csv(tmp_path), diabetes_spec())
    split = read_replay_split(ObjectStore(), uri, "regression", [])
    assert split.task == "regression" and split.features.dtype == np.float32
    assert all(isinstance(label, float) for label in split.labels) and min(split.labels) >= 25
    with pytest.raises(ConfigurationError, match="is a regression dataset but the model is a classification model"):
        read_replay_split(ObjectStore(), uri, "classification", [0, 1])


def test_no_dataset_at_the_uri_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="run prepare first"):
        read_replay_split(ObjectStore(), (tmp_path / "nothing").as_uri(), "regression", [])
