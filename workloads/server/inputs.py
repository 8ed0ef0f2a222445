"""What a model takes, read from its MLflow signature, and JSON rows checked against it.

Three forms (docs/serving.md, "Inputs"):

- **rows**: numbers ``[N, n_features]`` (a tensor signature ``[-1, n]``, a column signature of numbers, or no
  signature): decoded by ``codec.decode_json``, fast;
- **tensor**: a tensor signature of higher rank, e.g. ``(-1, 1, 8, 8)``: a request row is nested lists of that
  shape or ``prod(shape)`` flat numbers; rows stay flat ``[N, prod(shape)]`` until the model gets them;
- **columns**: a column signature with string, integer or boolean columns: every value is checked against
  its column's type here (a string where a string is declared, a whole number for an integer column), and a
  category outside the column's known vocabulary is refused naming it. The vocabulary is known when the model
  was logged with ``metadata={"gpuflow.categories": {column: [values, ...]}}``; otherwise the value goes to the
  model, and the model refusing it is answered 422 (see ``Predictor.refusals_are_client_errors``).

Rows of the columns form are an object array ``[N, n_columns]`` (floats, ints, bools and strings), so the
batcher concatenates them like any other rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from workloads.server.codec import _show, decode_json, parse_rows
from workloads.server.config import EXIT_USAGE
from workloads.server.errors import HttpError, ModelLoadError
from workloads.tags import METADATA_CATEGORIES

# MLflow column types -> how a JSON value is checked, and the dtype the model's frame gets
_COLUMN_KINDS = {
    "double": ("number", "float64"),
    "float": ("number", "float32"),
    "long": ("integer", "int64"),
    "integer": ("integer", "int32"),
    "boolean": ("boolean", "bool"),
    "string": ("string", "object"),
}
_FLOATS = {"float64": np.float64, "float32": np.float32}


@dataclass(frozen=True)
class Column:
    """One column of a column signature: its name, how its values are checked, and known categories."""

    name: str
    kind: str  # number, integer, boolean or string
    dtype: str  # numpy dtype of the model's frame column
    categories: tuple[str, ...] | None = None

    def check(self, value: Any, row: int) -> Any:
        """``value`` as this column holds it, or an :class:`HttpError` naming row, column and what was expected."""
        where = f"row {row} column {self.name!r}"
        if self.kind == "string":
            if not isinstance(value, str):
                raise HttpError(422, f"{where} is {_show(value)}, not a string", f"{self.name}: {self._strings()}")
            if self.categories is not None and value not in self.categories:
                raise HttpError(
                    422, f"{where} is {value!r}, a category never seen in training", f"{self.name}: {self._strings()}"
                )
            return value
        if self.kind == "boolean":
            if not isinstance(value, bool):
                raise HttpError(422, f"{where} is {_show(value)}, not a boolean", f"{self.name}: true or false")
            return value
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise HttpError(422, f"{where} is {_show(value)}, not a finite number", f"{self.name}: a {self.kind}")
        if self.kind == "integer" and value != int(value):
            raise HttpError(422, f"{where} is {_show(value)}, not a whole number", f"{self.name}: an integer")
        return value

    def _strings(self) -> str:
        if self.categories is None:
            return "a string"
        shown = ", ".join(repr(c) for c in self.categories[:20])
        return f"one of {shown}" + (f" (and {len(self.categories) - 20} more)" if len(self.categories) > 20 else "")

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.kind}
        if self.categories is not None:
            out["categories"] = list(self.categories)
        return out


@dataclass(frozen=True)
class InputSpec:
    """The input a model takes: ``n_features`` values per row, as plain rows, a tensor, or typed columns."""

    n_features: int
    dtype: str = "float32"  # numbers are decoded as this (float32 for torch; float64 for a double signature)
    shape: tuple[int, ...] | None = None  # per-row tensor shape (rank >= 2), e.g. (1, 8, 8)
    columns: tuple[Column, ...] | None = None  # column signature, in order

    @property
    def form(self) -> str:
        if self.shape is not None:
            return "tensor"
        return "columns" if self.typed else "rows"

    @property
    def feature_names(self) -> list[str] | None:
        return [c.name for c in self.columns] if self.columns else None

    @property
    def typed(self) -> bool:
        """Some column is not a plain number: values are checked one by one (no compact form)."""
        return bool(self.columns) and any(c.kind != "number" for c in self.columns or ())

    @property
    def unknown_categories(self) -> bool:
        """A string column whose vocabulary is not known: only the model can refuse a value."""
        return any(c.kind == "string" and c.categories is None for c in self.columns or ())

    def decode(self, body: bytes, max_rows: int) -> np.ndarray:
        """A JSON body as rows ``[N, n_features]`` (numbers of ``dtype``, or objects for typed columns)."""
        if not self.typed:
            dtype = _FLOATS.get(self.dtype, np.float32)
            return decode_json(body, self.n_features, self.feature_names, max_rows, dtype=dtype, shape=self.shape)
        rows, key = parse_rows(body, self.n_features, self.feature_names, max_rows)
        columns = self.columns or ()
        x = np.empty((len(rows), len(columns)), dtype=object)
        for i, row in enumerate(rows):
            if not isinstance(row, list) or len(row) != len(columns):
                got = f"{len(row)} values" if isinstance(row, list) else f"{type(row).__name__} {_show(row)}"
                raise HttpError(422, f"row {i} has {got}", f"{key}: lists of {len(columns)} values in column order")
            for j, column in enumerate(columns):
                x[i, j] = column.check(row[j], i)
        return x

    def describe(self) -> dict[str, Any]:
        """What ``GET /v1/model`` says about the input."""
        out: dict[str, Any] = {"form": self.form, "n_features": self.n_features, "dtype": self.dtype}
        if self.shape is not None:
            out["shape"] = list(self.shape)
        if self.columns:
            out["columns"] = [c.describe() for c in self.columns]
        return out


def _categories(metadata: dict[str, Any] | None, where: str) -> dict[str, tuple[str, ...]]:
    found = (metadata or {}).get(METADATA_CATEGORIES)
    if found is None:
        return {}
    if not isinstance(found, dict) or not all(isinstance(v, list) for v in found.values()):
        raise ModelLoadError(
            f"{where}: metadata {METADATA_CATEGORIES} is not a mapping of column -> list of values", EXIT_USAGE
        )
    return {str(name): tuple(str(v) for v in values) for name, values in found.items()}


def _column_spec(inputs: Any, metadata: dict[str, Any] | None, torch: bool, where: str) -> InputSpec:
    vocabulary = _categories(metadata, where)
    columns = []
    for spec in inputs.inputs:
        type_name = str(getattr(spec.type, "name", spec.type))
        if type_name not in _COLUMN_KINDS:
            raise ModelLoadError(
                f"{where}: input column {spec.name!r} has type {type_name}; expected one of {', '.join(_COLUMN_KINDS)}",
                EXIT_USAGE,
            )
        kind, dtype = _COLUMN_KINDS[type_name]
        known = vocabulary.get(str(spec.name)) if kind == "string" else None
        columns.append(Column(str(spec.name), kind, dtype, known))
    unknown = sorted(set(vocabulary) - {c.name for c in columns if c.kind == "string"})
    if unknown:
        raise ModelLoadError(f"{where}: {METADATA_CATEGORIES} names {unknown}, which are not string inputs", EXIT_USAGE)
    if torch and any(c.kind == "string" for c in columns):
        raise ModelLoadError(f"{where}: a PyTorch model cannot take string columns; expected numeric inputs", 2)
    if torch:
        return InputSpec(len(columns), "float32", None, tuple(Column(c.name, "number", "float32") for c in columns))
    dtype = "float64" if any(c.dtype in ("float64", "int64", "int32") for c in columns) else "float32"
    return InputSpec(len(columns), dtype, None, tuple(columns))


def input_spec(signature: Any, metadata: dict[str, Any] | None, *, torch: bool, where: str) -> InputSpec | None:
    """The input the signature declares; None when there is no signature (the caller infers the width).

    ``torch`` models are always fed float32; a pyfunc model gets the signature's float type.
    """
    if signature is None or signature.inputs is None:
        return None
    inputs = signature.inputs
    if not inputs.is_tensor_spec():
        return _column_spec(inputs, metadata, torch, where)
    specs = inputs.inputs
    if len(specs) != 1:
        raise ModelLoadError(f"{where}: the signature declares {len(specs)} input tensors; expected one", EXIT_USAGE)
    spec = specs[0]
    shape = tuple(int(d) for d in (spec.shape or ()))
    dtype = "float64" if not torch and np.dtype(spec.type) == np.float64 else "float32"
    if len(shape) == 2:
        return InputSpec(shape[1], dtype) if shape[1] > 0 else None
    if len(shape) < 2 or any(d <= 0 for d in shape[1:]):
        raise ModelLoadError(
            f"{where}: input tensor of shape {list(shape)}; expected [-1, n_features] or a fixed per-row shape "
            "such as [-1, 1, 8, 8]",
            EXIT_USAGE,
        )
    return InputSpec(math.prod(shape[1:]), dtype, shape[1:])


def example_rows(example: Any, spec: InputSpec | None) -> np.ndarray | None:
    """The model's input example as rows the way requests decode (None when it does not fit)."""
    if example is None:
        return None
    if hasattr(example, "to_numpy"):
        if spec is not None and spec.columns and hasattr(example, "columns"):
            names = [c.name for c in spec.columns]
            if not set(names) <= {str(c) for c in example.columns}:
                return None
            example = example[names]
        array = np.asarray(example.to_numpy())
    else:
        array = np.asarray(example)
    if spec is not None and spec.typed:
        return array.astype(object) if array.ndim == 2 and array.shape[1] == spec.n_features else None
    if array.dtype.kind not in "iuf" or array.ndim < 2:
        return None
    array = array.reshape(len(array), -1)
    if spec is not None and array.shape[1] != spec.n_features:
        return None
    return np.ascontiguousarray(array, dtype=_FLOATS.get(spec.dtype if spec else "float32", np.float32))
