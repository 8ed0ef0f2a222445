"""Request bodies to rows and predictions to bodies: the exact refusals clients see, and the compact form."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest

from workloads.server.codec import Encoder, decode_compact, decode_json, softmax
from workloads.server.errors import HttpError

NAMES = ["a", "b", "c"]
# The server turns numpy's overflow warnings off (cli.run); here a value over float32's range warns once.
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")


def rows(body: object, names: list[str] | None = None, max_rows: int = 10) -> np.ndarray:
    return decode_json(json.dumps(body).encode(), 3, names, max_rows)


def refusal(body: bytes, names: list[str] | None = None, max_rows: int = 10) -> HttpError:
    with pytest.raises(HttpError) as caught:
        decode_json(body, 3, names, max_rows)
    return caught.value


def test_rows_become_float32_in_order() -> None:
    x = rows({"rows": [[1, 2.5, -3], [0, 0, 1e30]]})
    assert x.dtype == np.float32 and x.shape == (2, 3)
    np.testing.assert_array_equal(x[0], [1, 2.5, -3])


def test_instances_accept_lists_or_objects_keyed_by_feature_name() -> None:
    np.testing.assert_array_equal(rows({"instances": [[1, 2, 3]]}), [[1, 2, 3]])
    keyed = rows({"instances": [{"c": 3, "a": 1, "b": 2}]}, NAMES)
    np.testing.assert_array_equal(keyed, [[1, 2, 3]])


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        (b"", 400, "body is empty"),
        (b"{", 400, "not valid JSON"),
        (b'{"rows": [[NaN, 1, 2]]}', 400, "not valid JSON"),
        (b"[1]", 400, "not an object"),
        (b'{"data": [[1, 2, 3]]}', 400, "exactly one of rows, instances"),
        (b'{"rows": []}', 400, "not a non-empty list"),
        (b'{"rows": [1, 2, 3]}', 422, "one flat list"),
        (b'{"rows": [[1, 2]]}', 422, "row 0 has 2 values; expected 3"),
        (b'{"rows": [[1, 2, 3], [1, 2]]}', 422, "row 1 has 2 values"),
        (b'{"rows": [[1, 2, 3], 4]}', 422, "row 1 is int 4"),
        (b'{"rows": [[1, "x", 3]]}', 422, 'row 0 value 1 is "x", not a number'),
        (b'{"rows": [[1, 2, true]]}', 422, "row 0 value 2 is true"),
        (b'{"rows": [[1, null, 3]]}', 422, "row 0 value 1 is null"),
        (b'{"rows": [[1, [2], 3]]}', 422, "row 0 value 1 is [2]"),
        (b'{"rows": [[1, 2, 1e39]]}', 422, "row 0 value 2 is inf"),
        (b'{"rows": [[1, 2, 3]], "proba": true}', 400, "exactly one of"),
    ],
)
def test_bad_bodies_are_refused_with_what_was_wrong(body: bytes, status: int, says: str) -> None:
    error = refusal(body)
    assert error.status == status and says in error.message, error.message
    assert error.expected


def test_too_many_rows_is_413() -> None:
    error = refusal(orjson.dumps({"rows": [[1, 2, 3]] * 11}))
    assert error.status == 413 and "at most 10 rows" in (error.expected or "")


def test_named_instances_must_match_the_feature_names() -> None:
    assert "does not name its features" in refusal(b'{"instances": [{"a": 1}]}').message
    assert "has no feature 'c'" in refusal(b'{"instances": [{"a": 1, "b": 2}]}', NAMES).message
    assert "unknown features ['d']" in refusal(b'{"instances": [{"a": 1, "b": 2, "c": 3, "d": 4}]}', NAMES).message


def test_compact_rows_are_little_endian_float32() -> None:
    data = np.arange(6, dtype="<f4").tobytes()
    np.testing.assert_array_equal(decode_compact(data, 3, 10), [[0, 1, 2], [3, 4, 5]])
    for bad, status in ((b"", 400), (data[:-1], 400), (np.arange(33, dtype="<f4").tobytes(), 413)):
        with pytest.raises(HttpError) as caught:
            decode_compact(bad, 3, 10)
        assert caught.value.status == status
    with pytest.raises(HttpError, match="is nan"):
        decode_compact(np.array([1, np.nan, 2], "<f4").tobytes(), 3, 10)


def test_encoder_names_labels_and_keeps_their_json_types() -> None:
    encoder = Encoder(["cat", 7, None])
    logits = np.array([[0.0, 3.0, 1.0], [5.0, 0.0, 0.0]], dtype=np.float32)
    indices = logits.argmax(axis=1)
    assert json.loads(encoder.json(indices, None)) == {"predictions": [7, "cat"]}
    assert json.loads(encoder.single[2]) == {"predictions": [None]}
    answer = json.loads(encoder.json(indices, softmax(logits.copy())))
    assert answer["labels"] == ["cat", 7, None]
    np.testing.assert_allclose(np.sum(answer["probabilities"], axis=1), 1.0, rtol=1e-6)
    compact = Encoder.compact(indices, softmax(logits.copy()))
    assert list(np.frombuffer(compact[:8], "<i4")) == [1, 0] and len(compact) == 8 + 6 * 4


def test_softmax_is_stable_for_large_logits() -> None:
    probabilities = softmax(np.array([[1000.0, 999.0, -1000.0]], dtype=np.float32))
    assert np.isfinite(probabilities).all()
    np.testing.assert_allclose(probabilities[0, :2], [0.7310586, 0.2689414], rtol=1e-5)
