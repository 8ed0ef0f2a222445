"""Default names for a user's own data: the dataset after its file, the model after the dataset."""

from __future__ import annotations

import pytest

from tasks.data.naming import dataset_name_for, model_name_for
from tasks.data.publishing import check_dataset_name


@pytest.mark.parametrize(
    ("data_uri", "name"),
    [
        ("demo", "digits"),
        ("", "digits"),
        ("/data/diabetes.csv", "diabetes"),
        ("churn.PARQUET", "churn"),
        ("s3://bucket/churn/2024-01.pq", "2024-01"),
        ("file:///tmp/My%20Data.csv", "My-Data"),
        ("raw/part-*.parquet", "raw"),  # a pattern of parts: its folder
        ("s3://bucket/events/", "events"),  # an S3 prefix of parts
        ("notes.v2.csv", "notes.v2"),
        ("s3://bucket/*.csv", "dataset"),  # nothing usable: a plain fallback
        ("données.csv", "donn-es"),
    ],
)
def test_the_dataset_is_named_after_its_file(data_uri: str, name: str) -> None:
    assert dataset_name_for(data_uri) == name
    assert check_dataset_name(name) == name  # always a usable folder name


def test_a_long_file_name_is_cut_to_a_usable_folder_name() -> None:
    name = dataset_name_for("/d/" + "a" * 200 + ".csv")
    assert name == "a" * 128 and check_dataset_name(name) == name


def test_the_model_is_named_after_the_dataset() -> None:
    assert model_name_for("digits") == "gpuflow-digits"  # the demo's model keeps its name
    assert model_name_for("churn") == "gpuflow-churn"
