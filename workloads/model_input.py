"""A split's feature rows in the form a model's MLflow signature asks for: one place for every reader that feeds one.

Splits store a category column as int32 codes in the order of the vocabulary the manifest records
(docs/data.md). A model whose column signature takes that column as a ``string`` (a scikit-learn pipeline whose
OneHotEncoder was fitted on the values) is given the vocabulary's values; one that takes a number (``double``,
``float``, ``long``, ``integer``: the built-in MLP, the SDK's trainers, anything fitted on the codes or a one-hot
of them) is given the codes unchanged. Any other type (``boolean``, ``binary``, ``datetime``) fits neither, and
is an :class:`InputMismatch` naming the column and both types. A tensor signature, or none, takes the flat
float32 matrix: categories stay codes.

The readers: evaluation (tasks/evaluation/model_loading.py builds a DataFrame with :func:`model_frame`), the
canary's replayed traffic (tasks/rollout/replay.py sends :func:`model_rows` as JSON rows) and the launcher's model
check that ``gpuflow trainer check`` runs (workloads/launcher/checks.py). No Prefect or gpuflow-tasks import: the
launcher runs in trainer images.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from workloads.dataset import DatasetCorrupt, DatasetManifest

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.types import Schema

# MLflow column types a category's codes fit, and the dtype each is given as
NUMBER_TYPES: dict[str, Any] = {"double": np.float64, "float": np.float32, "long": np.int64, "integer": np.int32}
STRING_TYPE = "string"
_OTHER_TYPES: dict[str, Any] = {"boolean": np.bool_, STRING_TYPE: object}


class InputMismatch(ValueError):
    """A model's signature asks for a column in a form the split cannot give (named in the message)."""


@dataclass(frozen=True)
class SignatureColumn:
    """One input of a column signature: the dataset feature it reads and its MLflow type (None: not known)."""

    name: str
    type: str | None = None


def category_vocabularies(manifest: DatasetManifest | None) -> dict[str, list[str]]:
    """Each category column's vocabulary in code order, as the manifest records it (format 1: none)."""
    columns = manifest.extra.get("columns", []) if manifest is not None else []
    return {
        str(c["name"]): [str(v) for v in c.get("vocabulary") or []]
        for c in columns
        if isinstance(c, dict) and c.get("type") == "category"
    }


def signature_columns(schema: Schema | None, features: Sequence[str]) -> tuple[SignatureColumn, ...] | None:
    """The inputs of a column signature, each named by the dataset feature it reads; None for a tensor signature
    or none. Unnamed columns are the dataset's features by position."""
    if schema is None or schema.is_tensor_spec():
        return None
    types = [str(getattr(spec.type, "name", spec.type)) for spec in schema.inputs]
    if schema.has_input_names():
        names = [str(n) for n in schema.input_names()]
    elif len(types) == len(features):
        names = list(features)
    else:
        raise InputMismatch(
            f"the model's signature takes {len(types)} unnamed columns; the dataset has {len(features)} features"
        )
    return tuple(SignatureColumn(name, kind) for name, kind in zip(names, types, strict=True))


def category_forms(columns: Sequence[SignatureColumn], vocabularies: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """How the model takes each category column it names: ``string`` (the vocabulary's values) or ``code``.

    Raises :class:`InputMismatch` for a type that fits neither, naming the column and both types.
    """
    forms = {}
    for column in columns:
        if column.name not in vocabularies:
            continue
        if column.type == STRING_TYPE:
            forms[column.name] = STRING_TYPE
        elif column.type is None or column.type in NUMBER_TYPES:
            forms[column.name] = "code"
        else:
            raise InputMismatch(
                f"the model's signature takes column {column.name!r} as {column.type}, but the dataset stores it as "
                f"a category (int32 codes of {_shown(vocabularies[column.name])}); expected string (the category's "
                f"values) or a number type ({', '.join(NUMBER_TYPES)}: its codes)"
            )
    return forms


def _shown(vocabulary: Sequence[str]) -> str:
    head = ", ".join(repr(v) for v in vocabulary[:5])
    return f"[{head}{', ...' if len(vocabulary) > 5 else ''}]"


def _decode(codes: np.ndarray, vocabulary: Sequence[str], name: str) -> np.ndarray:
    """Codes (float32, NaN for missing) as the vocabulary's values (None for missing), an object array."""
    present = ~np.isnan(codes)
    index = codes[present].astype(np.int64)
    if index.size and (int(index.min()) < 0 or int(index.max()) >= len(vocabulary)):
        raise DatasetCorrupt(
            f"category column {name!r} holds code {int(index.max())} outside its vocabulary of {len(vocabulary)}"
        )
    values = np.full(codes.shape[0], None, dtype=object)
    values[present] = np.asarray(vocabulary, dtype=object)[index]
    return values


def column_values(
    features: np.ndarray,
    feature_names: Sequence[str],
    columns: Sequence[SignatureColumn],
    vocabularies: Mapping[str, Sequence[str]],
) -> list[np.ndarray]:
    """Each signature column's values in its order: categories as the signature asks (see the module docstring),
    other columns cast to their type's dtype (float32 as stored when the type is not known)."""
    index = {name: j for j, name in enumerate(feature_names)}
    missing = [c.name for c in columns if c.name not in index]
    if missing:
        raise InputMismatch(
            f"the model's signature asks for column(s) {missing[:8]} that the dataset does not have; its features "
            f"are {list(feature_names)[:8]}{' ...' if len(feature_names) > 8 else ''}"
        )
    forms = category_forms(columns, vocabularies)
    out = []
    for column in columns:
        values = features[:, index[column.name]]
        if forms.get(column.name) == STRING_TYPE:
            out.append(_decode(values, vocabularies[column.name], column.name))
            continue
        dtype = {**NUMBER_TYPES, **_OTHER_TYPES}.get(column.type or "")
        out.append(values if dtype is None else values.astype(dtype))
    return out


def model_frame(
    features: np.ndarray,
    feature_names: Sequence[str],
    columns: Sequence[SignatureColumn],
    vocabularies: Mapping[str, Sequence[str]],
) -> pd.DataFrame:
    """The split's features as the DataFrame a column signature takes (its columns, in its order)."""
    import pandas as pd

    values = column_values(features, feature_names, columns, vocabularies)
    # dtype given: pandas would make text a str column, with a missing value as NaN rather than None
    return pd.DataFrame({c.name: pd.Series(v, dtype=v.dtype) for c, v in zip(columns, values, strict=True)})


def model_rows(
    features: np.ndarray,
    feature_names: Sequence[str],
    columns: Sequence[SignatureColumn] | None,
    vocabularies: Mapping[str, Sequence[str]],
) -> np.ndarray:
    """The split's features as request rows, for JSON: the float32 matrix as stored when the model takes numbers
    (a column signature's columns picked in its order), an object array of plain Python values (strings for
    categories taken as strings) when it takes some category as a string."""
    flat = np.ascontiguousarray(features, dtype=np.float32)
    if columns is None:
        return flat
    if STRING_TYPE not in category_forms(columns, vocabularies).values():
        index = {name: j for j, name in enumerate(feature_names)}
        if any(c.name not in index for c in columns):
            column_values(flat[:0], feature_names, columns, vocabularies)  # raises, naming the missing columns
        return np.ascontiguousarray(flat[:, [index[c.name] for c in columns]])
    values = column_values(flat, feature_names, columns, vocabularies)
    rows = np.empty((flat.shape[0], len(columns)), dtype=object)
    for j, column in enumerate(values):
        rows[:, j] = column.tolist() if column.dtype != object else column
    return rows


def request_form(
    columns: Sequence[SignatureColumn] | None, feature_names: Sequence[str], vocabularies: Mapping[str, Sequence[str]]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """What a request row holds for this signature: the columns in order and the categories sent as strings. Two
    models with the same form take the same rows (the canary sends stable and canary the same requests)."""
    if columns is None:
        return tuple(feature_names), ()
    forms = category_forms(columns, vocabularies)
    return tuple(c.name for c in columns), tuple(name for name, form in forms.items() if form == STRING_TYPE)
