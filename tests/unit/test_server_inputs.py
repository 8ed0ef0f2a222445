"""Inputs read from MLflow signatures, and JSON rows checked against them: tensors, typed columns, categories."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from mlflow.models import ModelSignature, infer_signature
from mlflow.types import ColSpec, Schema

from workloads.server.errors import HttpError, ModelLoadError
from workloads.server.inputs import input_spec
from workloads.tags import METADATA_CATEGORIES

IMAGES = np.zeros((2, 1, 8, 8), np.float32)
# what infer_signature gives a frame of height (float), visits (int) and city (str), written out: inferring an
# integer column makes MLflow warn about missing values
COLUMNS = ModelSignature(Schema([ColSpec("double", "height"), ColSpec("long", "visits"), ColSpec("string", "city")]))


def body(rows: object, key: str = "rows") -> bytes:
    return json.dumps({key: rows}).encode()


def refusal(spec: object, payload: bytes) -> HttpError:
    with pytest.raises(HttpError) as caught:
        spec.decode(payload, 10)  # type: ignore[attr-defined]
    return caught.value


def test_a_tensor_signature_takes_nested_rows_or_flat_ones() -> None:
    spec = input_spec(infer_signature(IMAGES), None, torch=True, where="m")
    assert spec is not None and (spec.form, spec.shape, spec.n_features) == ("tensor", (1, 8, 8), 64)
    image = np.arange(64, dtype=np.float32).reshape(1, 8, 8)
    nested = spec.decode(body([image.tolist()]), 10)
    flat = spec.decode(body([image.reshape(-1).tolist()]), 10)
    assert nested.shape == flat.shape == (1, 64) and nested.dtype == np.float32
    np.testing.assert_array_equal(nested, flat)
    assert "row 0 has shape [1, 8, 7]" in refusal(spec, body([np.zeros((1, 8, 7)).tolist()])).message
    bad = refusal(spec, body([np.zeros(63).tolist()]))
    assert bad.status == 422 and "shape [1, 8, 8] or 64 numbers" in (bad.expected or "")
    assert "is true, not a number" in refusal(spec, body([[[[True] * 8] * 8]])).message


def test_a_column_signature_with_strings_checks_each_value_and_the_vocabulary() -> None:
    metadata = {METADATA_CATEGORIES: {"city": ["lyon", "nice", "paris"]}}
    spec = input_spec(COLUMNS, metadata, torch=False, where="m")
    assert spec is not None and spec.form == "columns" and spec.typed and not spec.unknown_categories
    x = spec.decode(body([[170.5, 3, "paris"]]), 10)
    assert x.dtype == object and x.tolist() == [[170.5, 3, "paris"]]
    keyed = spec.decode(body([{"city": "nice", "visits": 1, "height": 150}], "instances"), 10)
    assert keyed.tolist() == [[150, 1, "nice"]]
    assert "'berlin', a category never seen in training" in refusal(spec, body([[1.0, 3, "berlin"]])).message
    assert "column 'visits' is 3.5, not a whole number" in refusal(spec, body([[1.0, 3.5, "nice"]])).message
    assert "column 'city' is 7, not a string" in refusal(spec, body([[1.0, 3, 7]])).message
    assert "column 'height' is true, not a finite number" in refusal(spec, body([[True, 3, "nice"]])).message
    assert "row 0 has 2 values" in refusal(spec, body([[1.0, 3]])).message
    unknown = input_spec(COLUMNS, None, torch=False, where="m")
    assert unknown is not None and unknown.unknown_categories
    assert unknown.decode(body([[1.0, 3, "berlin"]]), 10).tolist() == [[1.0, 3, "berlin"]]  # the model decides


def test_numeric_columns_keep_the_fast_path_and_the_signature_float_type() -> None:
    frame = pd.DataFrame({"a": [1.0], "b": [2.0]})
    pyfunc = input_spec(infer_signature(frame), None, torch=False, where="m")
    torch = input_spec(infer_signature(frame), None, torch=True, where="m")
    assert pyfunc is not None and torch is not None
    assert (pyfunc.form, pyfunc.dtype, torch.dtype) == ("rows", "float64", "float32")
    assert pyfunc.decode(body([[0.1, 2]]), 10).dtype == np.float64  # 0.1 reaches the model exactly as sent


@pytest.mark.parametrize(
    ("signature", "metadata", "torch", "says"),
    [
        (infer_signature(np.zeros((2, 3, 0), np.float32)), None, True, "expected [-1, n_features] or a fixed"),
        (COLUMNS, None, True, "a PyTorch model cannot take string columns"),
        (COLUMNS, {METADATA_CATEGORIES: {"height": ["x"]}}, False, "not string inputs"),
        (COLUMNS, {METADATA_CATEGORIES: ["x"]}, False, "not a mapping of column"),
    ],
)
def test_inputs_that_cannot_be_served_are_refused_at_load(
    signature: object, metadata: dict | None, torch: bool, says: str
) -> None:
    with pytest.raises(ModelLoadError, match=None) as caught:
        input_spec(signature, metadata, torch=torch, where="models:/m/1")
    assert says in str(caught.value) and caught.value.exit_code == 2
