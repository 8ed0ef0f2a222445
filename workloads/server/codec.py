"""Request bodies to float32 rows, and predictions to response bodies, in JSON and the compact binary form.

Decoding is written for the common case first (orjson, one ``np.array`` call, a dtype and shape check) and
only walks the values in Python to name the culprit once a check has failed, so a valid one-row request
costs a few microseconds. Every refusal is an :class:`HttpError` saying what was wrong and what was expected.

Forms (see docs/serving.md):

- JSON ``{"rows": [[f1, ..., fn], ...]}``; ``{"instances": [...]}`` with the same lists, or objects keyed by
  feature name when the model's signature names its features. A model with a tensor input (say ``[1, 8, 8]``)
  also takes each row as nested lists of that shape; its rows are kept flat here (the model reshapes them).
- Compact ``application/octet-stream``: the rows as little-endian float32, ``n_features`` values per row and
  nothing else. The answer is compact too: for a classifier one little-endian int32 class index per row (an
  index into ``labels`` from ``GET /v1/model``), followed, with ``?proba=1``, by ``n_classes`` float32
  probabilities per row; for a regressor one little-endian float32 value per row.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from workloads.server.errors import HttpError

JSON = b"application/json"
COMPACT = b"application/octet-stream"
EXPECTED_JSON = '{"rows": [[n_features numbers], ...]} or {"instances": [...]}'


def expected_compact(n_features: int) -> str:
    return f"little-endian float32 rows of {n_features} values ({4 * n_features} bytes per row)"


def _find_bad_value(rows: list[Any], n_features: int) -> str:
    """Name the first value that is not a number, or the first row of the wrong length (slow path)."""
    for i, row in enumerate(rows):
        if not isinstance(row, list):
            return f"row {i} is {type(row).__name__} {_show(row)}, not a list of {n_features} numbers"
        if len(row) != n_features:
            return f"row {i} has {len(row)} values; expected {n_features}"
        for j, value in enumerate(row):
            if isinstance(value, bool) or not isinstance(value, int | float):
                return f"row {i} value {j} is {_show(value)}, not a number"
    return "values are not all numbers"


def _show(value: Any) -> str:
    text = orjson.dumps(value).decode() if not isinstance(value, bytes) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _instances(items: list[Any], feature_names: list[str] | None) -> list[Any]:
    """``instances`` as rows: lists pass through, objects are ordered by the signature's feature names."""
    if not isinstance(items[0], dict):
        return items
    if feature_names is None:
        raise HttpError(
            422,
            "instances are objects, but the model's signature does not name its features",
            'lists of values in feature order: {"rows": [[...], ...]}',
        )
    rows = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise HttpError(422, f"instance {i} is {_show(item)}, not an object", "objects keyed by feature name")
        try:
            rows.append([item[name] for name in feature_names])
        except KeyError as missing:
            raise HttpError(
                422, f"instance {i} has no feature {missing.args[0]!r}", f"objects with keys {feature_names}"
            ) from None
        if len(item) != len(feature_names):
            unknown = sorted(set(item) - set(feature_names))
            raise HttpError(422, f"instance {i} has unknown features {unknown[:5]}", f"only keys {feature_names}")
    return rows


def parse_rows(body: bytes, n_features: int, feature_names: list[str] | None, max_rows: int) -> tuple[list[Any], str]:
    """The body's rows (``instances`` objects put in feature order) and the key they came under."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        what = "empty" if not body else f"not valid JSON ({exc})"
        raise HttpError(400, f"body is {what}", EXPECTED_JSON) from None
    if not isinstance(document, dict):
        raise HttpError(400, f"body is a JSON {type(document).__name__}, not an object", EXPECTED_JSON)
    rows = document.get("rows")
    key = "rows"
    if rows is None and "instances" in document:
        rows, key = document["instances"], "instances"
    if len(document) != 1 or rows is None:
        raise HttpError(
            400, f"body has keys {sorted(document)[:5]}; expected exactly one of rows, instances", EXPECTED_JSON
        )
    if not isinstance(rows, list) or not rows:
        raise HttpError(400, f"{key} is {_show(rows)}, not a non-empty list", EXPECTED_JSON)
    if isinstance(rows[0], int | float | str):
        raise HttpError(422, f"{key} is one flat list of values", f"a list of rows: [[{n_features} values], ...]")
    if len(rows) > max_rows:
        raise HttpError(413, f"{len(rows)} rows in one request", f"at most {max_rows} rows per request")
    if key == "instances":
        rows = _instances(rows, feature_names)
    return rows, key


def _has_bool(value: Any) -> bool:
    if isinstance(value, list):
        return any(_has_bool(v) for v in value)
    return isinstance(value, bool)


def _tensor_problem(rows: list[Any], shape: tuple[int, ...], n_features: int) -> str:
    """Name the first row that is neither nested lists of ``shape`` nor ``n_features`` flat numbers."""
    for i, row in enumerate(rows):
        try:
            array = np.array(row)
        except (ValueError, TypeError, OverflowError):
            return f"row {i} is ragged (nested lists of different lengths)"
        if array.shape == shape or array.shape == (n_features,):
            if array.dtype.kind not in "iuf" or _has_bool(row):
                return _find_bad_value([np.asarray(row, dtype=object).reshape(-1).tolist()], n_features).replace(
                    "row 0", f"row {i}"
                )
            continue
        return f"row {i} has shape {list(array.shape)}"
    return "rows do not all have the same shape"


def decode_json(
    body: bytes,
    n_features: int,
    feature_names: list[str] | None,
    max_rows: int,
    *,
    dtype: Any = np.float32,
    shape: tuple[int, ...] | None = None,
) -> np.ndarray:
    """A JSON body as ``[rows, n_features]`` numbers of ``dtype`` (float32 unless the model takes float64).

    With a tensor ``shape`` (per row, e.g. ``(1, 8, 8)``) each row may also be nested lists of that shape;
    the result stays flat either way.
    """
    rows, key = parse_rows(body, n_features, feature_names, max_rows)
    try:
        array = np.array(rows)
        ok = array.dtype.kind in "iuf" and array.ndim >= 2
    except (ValueError, TypeError, OverflowError):
        ok = False
    if ok and shape is not None and array.shape[1:] == shape:
        array = array.reshape(len(array), n_features)
    if not ok or array.ndim != 2 or array.shape[1] != n_features:
        if shape is not None:
            expected = f"{key}: each row nested lists of shape {list(shape)} or {n_features} numbers"
            raise HttpError(422, _tensor_problem(rows, shape, n_features), expected)
        raise HttpError(422, _find_bad_value(rows, n_features), f"{key}: lists of {n_features} numbers")
    if (b"true" in body or b"false" in body) and _has_bool(rows):
        problem = _find_bad_value([np.asarray(row, dtype=object).reshape(-1).tolist() for row in rows], n_features)
        raise HttpError(422, problem, f"{key}: lists of {n_features} numbers")
    x = array.astype(dtype)
    check_finite(x)
    return x


def decode_compact(body: bytes, n_features: int, max_rows: int) -> np.ndarray:
    """A compact body as float32 ``[rows, n_features]`` (a view on the body, no copy)."""
    row_bytes = 4 * n_features
    if not body or len(body) % row_bytes:
        raise HttpError(
            400, f"body has {len(body)} bytes, not a positive multiple of {row_bytes}", expected_compact(n_features)
        )
    rows = len(body) // row_bytes
    if rows > max_rows:
        raise HttpError(413, f"{rows} rows in one request", f"at most {max_rows} rows per request")
    x = np.frombuffer(body, dtype="<f4").reshape(rows, n_features)
    check_finite(x)
    return x


def check_finite(x: np.ndarray) -> None:
    """Refuse NaN and infinity (JSON numbers beyond float32's range become infinity when converted)."""
    if not np.isfinite(x).all():
        row, column = (int(i) for i in np.argwhere(~np.isfinite(x))[0])
        kind = "float32" if x.dtype == np.float32 else str(x.dtype)
        limit = "about +-3.4e38" if x.dtype == np.float32 else "about +-1.8e308"
        raise HttpError(
            422,
            f"row {row} value {column} is {x[row, column]} after conversion to {kind}",
            f"finite numbers within {kind} range ({limit})",
        )


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=1, keepdims=True)
    return shifted


class Encoder:
    """Response bodies for one model's labels; one-row JSON answers are built once, at start-up."""

    def __init__(self, labels: list[Any]) -> None:
        self.labels_json = orjson.dumps(labels)
        self.label_json = [orjson.dumps(label) for label in labels]
        self.single = [b'{"predictions":[' + label + b"]}" for label in self.label_json]

    def json(self, indices: np.ndarray, probabilities: np.ndarray | None) -> bytes:
        names = self.label_json
        predictions = b",".join([names[i] for i in indices.tolist()])
        if probabilities is None:
            return b'{"predictions":[' + predictions + b"]}"
        return b"".join(
            (
                b'{"predictions":[',
                predictions,
                b'],"probabilities":',
                orjson.dumps(probabilities, option=orjson.OPT_SERIALIZE_NUMPY),
                b',"labels":',
                self.labels_json,
                b"}",
            )
        )

    @staticmethod
    def compact(indices: np.ndarray, probabilities: np.ndarray | None) -> bytes:
        head = indices.astype("<i4").tobytes()
        return head if probabilities is None else head + probabilities.astype("<f4").tobytes()


class ValueEncoder:
    """Response bodies of a regressor: one number per row (JSON keeps the model's precision, compact is float32)."""

    @staticmethod
    def json(values: np.ndarray) -> bytes:
        return b'{"predictions":' + orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY) + b"}"

    @staticmethod
    def compact(values: np.ndarray) -> bytes:
        return values.astype("<f4").tobytes()
