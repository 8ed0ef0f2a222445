"""The dataset spec: what a team declares about its own data, so prepare can read, check and store it.

A spec lists typed feature columns (float, integer, boolean, category, fixed-shape numeric tensor), one
target (``class``: integer or string labels; ``float``: a regression value), how to split (stratified,
random, or by a group column) and what to do with duplicate rows. The task (classification or regression)
follows from the target. Its canonical JSON is part of the dataset version and is written into the manifest.

It lives in ``tasks.core`` because two layers share it: the ``DatasetSpec`` block (blocks/dataset_spec.py)
holds one, and the prepare stage (tasks/data/spec.py) reads data by it. Pure pydantic; no I/O here except
:func:`parse_spec_text`, which turns YAML or JSON text into a spec.

Every mistake in a spec is a :class:`SpecError` (a ``ConfigurationError``) raised before any data is read,
naming the field (``columns[2].shape``, ``target.classes``) and what was expected.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tasks.core.errors import ConfigurationError

COLUMN_TYPES = ("float", "integer", "boolean", "category", "tensor")
TARGET_TYPES = ("class", "float")
SPEC_FORMAT = 1


class SpecError(ConfigurationError):
    """A dataset spec that cannot be used: the message names the field and what was expected."""


class _Column(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, description="Column name in the raw file (for a tensor: the feature's name).")
    nullable: bool = Field(default=False, description="Whether empty values are allowed (kept as missing).")


class _Ranged(_Column):
    min: float | None = Field(default=None, description="Smallest allowed value (inclusive); empty: no bound.")
    max: float | None = Field(default=None, description="Largest allowed value (inclusive); empty: no bound.")

    @model_validator(mode="after")
    def _range(self) -> _Ranged:
        for bound in (self.min, self.max):
            if bound is not None and not math.isfinite(bound):
                raise ValueError(f"min and max must be finite numbers, got {bound}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is above max ({self.max})")
        return self


class FloatColumn(_Ranged):
    """A real-valued feature; NaN and infinity are rejected (NaN counts as missing when ``nullable``)."""

    type: Literal["float"] = "float"


class IntegerColumn(_Ranged):
    """A whole-number feature (a count, a code); stored as int64."""

    type: Literal["integer"] = "integer"


class BooleanColumn(_Column):
    """true/false (also 1/0, True/False); stored as 0/1."""

    type: Literal["boolean"] = "boolean"


class CategoryColumn(_Column):
    """String values from a vocabulary; stored as integer codes (the vocabulary's order), recorded in the manifest."""

    type: Literal["category"] = "category"
    categories: tuple[str, ...] | None = Field(
        default=None,
        description="The allowed values, in code order; empty: every value seen in the data, sorted.",
    )

    @model_validator(mode="after")
    def _vocabulary(self) -> CategoryColumn:
        if self.categories is not None:
            if not self.categories:
                raise ValueError("categories is empty: list the allowed values, or leave it out to learn them")
            doubled = sorted({c for c in self.categories if self.categories.count(c) > 1})
            if doubled:
                raise ValueError(f"categories listed twice: {doubled}")
        return self


class TensorColumn(_Ranged):
    """A fixed-shape numeric tensor (an image ``[1, 8, 8]``) stored as one float column per element, row-major.

    Its elements are the raw file's columns listed in ``columns``, or ``<prefix>0 .. <prefix>{n-1}`` for
    ``n = prod(shape)``, or the values of one Parquet list column (``column``, ``n`` numbers a row, row-major;
    stored as ``<name>_0 .. <name>_{n-1}``); ``min``/``max`` apply to every element.
    """

    type: Literal["tensor"] = "tensor"
    shape: tuple[int, ...] = Field(description="The tensor's shape, e.g. [1, 8, 8].")
    columns: tuple[str, ...] | None = Field(default=None, description="Raw columns holding the elements, row-major.")
    prefix: str | None = Field(default=None, description="Elements are the columns <prefix>0, <prefix>1, ...")
    column: str | None = Field(
        default=None, description="A Parquet list column holding every element of a row, row-major."
    )

    @model_validator(mode="after")
    def _elements(self) -> TensorColumn:
        if not self.shape or any(d < 1 for d in self.shape):
            raise ValueError(f"shape must be a list of positive sizes, got {list(self.shape)}")
        if sum(option is not None for option in (self.columns, self.prefix, self.column)) != 1:
            raise ValueError(
                "a tensor names its element columns with exactly one of 'columns' or 'prefix' (or 'column': a "
                "Parquet list column)"
            )
        size = math.prod(self.shape)
        if self.columns is not None and len(self.columns) != size:
            raise ValueError(
                f"shape {list(self.shape)} has {size} elements but {len(self.columns)} column(s) are listed"
            )
        return self

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def element_columns(self) -> tuple[str, ...]:
        """The stored element columns (for ``columns`` and ``prefix`` also the raw ones)."""
        if self.columns is not None:
            return self.columns
        if self.column is not None:
            return tuple(f"{self.name}_{i}" for i in range(self.size))
        return tuple(f"{self.prefix}{i}" for i in range(self.size))

    def raw_columns(self) -> tuple[str, ...]:
        """The raw file's columns this tensor reads: its element columns, or its one list column."""
        return (self.column,) if self.column is not None else self.element_columns()


ColumnSpec = Annotated[
    FloatColumn | IntegerColumn | BooleanColumn | CategoryColumn | TensorColumn, Field(discriminator="type")
]


class TargetSpec(BaseModel):
    """What the model predicts: a class (classification) or a float (regression)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, description="The target column in the raw file.")
    type: Literal["class", "float"] = Field(description="class: classification; float: regression.")
    classes: tuple[int, ...] | tuple[str, ...] | None = Field(
        default=None,
        description="class targets: the declared classes (integers or strings, at least two); a row with any "
        "other value is rejected. Their order is the model's output order.",
    )
    min: float | None = Field(default=None, description="float targets: smallest allowed value.")
    max: float | None = Field(default=None, description="float targets: largest allowed value.")

    @model_validator(mode="before")
    @classmethod
    def _no_bools(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("classes"), list | tuple):
            if any(isinstance(c, bool) for c in data["classes"]):
                raise ValueError("classes must be integers or strings, not true/false")
            kinds = {type(c) for c in data["classes"]}
            if len(kinds) > 1:
                raise ValueError("classes must be all integers or all strings, not a mix")
        return data

    @model_validator(mode="after")
    def _consistent(self) -> TargetSpec:
        if self.type == "class":
            if self.classes is None:
                raise ValueError("a class target declares its classes (at least two), e.g. classes: [0, 1]")
            if len(self.classes) < 2:
                raise ValueError(f"a class target needs at least two classes, got {list(self.classes)}")
            if len(set(self.classes)) != len(self.classes):
                raise ValueError(f"classes listed twice in {list(self.classes)}")
            if self.min is not None or self.max is not None:
                raise ValueError("min/max apply to float targets only")
        else:
            if self.classes is not None:
                raise ValueError("a float target (regression) has no classes; use type: class for classification")
            if self.min is not None and self.max is not None and self.min > self.max:
                raise ValueError(f"min ({self.min}) is above max ({self.max})")
        return self

    @property
    def string_classes(self) -> bool:
        return bool(self.classes) and isinstance(self.classes[0], str)  # type: ignore[index]


class SplitSpec(BaseModel):
    """How rows are divided into train/val/test (the fractions and the seed are preparation parameters)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: Literal["stratified", "random", "group"] | None = Field(
        default=None,
        description="stratified (by class), random, or group; empty: stratified for a class "
        "target, random for a float target.",
    )
    group_column: str | None = Field(
        default=None, description="group split: rows sharing this column's value land in the same split."
    )

    @model_validator(mode="after")
    def _group(self) -> SplitSpec:
        if self.method == "group" and not self.group_column:
            raise ValueError("a group split names its group_column")
        if self.method != "group" and self.group_column:
            raise ValueError("group_column is only used with method: group")
        return self


class DatasetSpec(BaseModel):
    """A declared dataset: feature columns, a target, a split and a duplicate policy."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    columns: tuple[ColumnSpec, ...] = Field(description="The feature columns, in the order the splits store them.")
    target: TargetSpec
    split: SplitSpec = Field(default_factory=SplitSpec)
    duplicates: Literal["reject", "drop", "allow"] = Field(
        default="reject", description="Rows identical in every stored column: reject the data, drop repeats, allow."
    )
    dtype: Literal["float32", "float64"] = Field(
        default="float32", description="Storage type of float and tensor features."
    )
    description: str = Field(default="", description="Free text for people; not part of the version.")

    @model_validator(mode="after")
    def _consistent(self) -> DatasetSpec:
        if not self.columns:
            raise ValueError("columns: a spec needs at least one feature column")
        seen: dict[str, str] = {}
        for i, column in enumerate(self.columns):
            names = column.element_columns() if isinstance(column, TensorColumn) else (column.name,)
            if isinstance(column, TensorColumn) and column.column is not None:
                names = (*names, column.column)
            for name in names:
                where = f"columns[{i}] ({column.name})"
                if name in seen:
                    raise ValueError(f"{where}: raw column {name!r} is already used by {seen[name]}")
                seen[name] = where
        if self.target.name in seen:
            raise ValueError(
                f"target: column {self.target.name!r} is also listed as a feature ({seen[self.target.name]}); "
                "the target must not be a feature"
            )
        method = self.split_method
        if method == "stratified" and self.target.type != "class":
            raise ValueError("split.method: stratified needs a class target; use random or group for regression")
        if self.split.group_column is not None and self.split.group_column == self.target.name:
            raise ValueError("split.group_column: the target cannot be the group column")
        return self

    @property
    def task(self) -> Literal["classification", "regression"]:
        return "classification" if self.target.type == "class" else "regression"

    @property
    def split_method(self) -> str:
        return self.split.method or ("stratified" if self.target.type == "class" else "random")

    def feature_columns(self) -> tuple[str, ...]:
        """The stored feature columns, flattened: every tensor contributes its element columns."""
        out: list[str] = []
        for column in self.columns:
            out.extend(column.element_columns() if isinstance(column, TensorColumn) else (column.name,))
        return tuple(out)

    def group_only(self) -> str | None:
        """The group column when it is read for the split only (not a feature)."""
        group = self.split.group_column
        return group if group and group not in self.feature_columns() else None

    def raw_columns(self) -> tuple[str, ...]:
        """Every column a raw file must have: features (flattened; a list tensor's list column), the target, a
        group-only column."""
        out: list[str] = []
        for column in self.columns:
            out.extend(column.raw_columns() if isinstance(column, TensorColumn) else (column.name,))
        group = self.group_only()
        return (*out, self.target.name, *((group,) if group else ()))

    def list_tensors(self) -> tuple[TensorColumn, ...]:
        """Tensors read from one Parquet list column each."""
        return tuple(c for c in self.columns if isinstance(c, TensorColumn) and c.column is not None)

    def canonical(self) -> dict[str, Any]:
        """JSON-ready, every default spelled out; equal specs give equal dicts (part of the dataset version)."""
        data = self.model_dump(mode="json", exclude={"description"})
        for column in data["columns"]:
            if column.get("type") == "tensor" and column.get("column") is None:
                column.pop("column", None)  # specs written before list tensors keep their canonical form
        data["format"] = SPEC_FORMAT
        return data


def spec_from_data(data: Any, where: str = "dataset spec") -> DatasetSpec:
    """A spec from a parsed dict; a mistake is a :class:`SpecError` naming each field and what was expected."""
    if isinstance(data, DatasetSpec):
        return data
    if not isinstance(data, dict):
        raise SpecError(f"{where}: expected a mapping with columns and target, got {type(data).__name__}")
    try:
        return DatasetSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(f"{where}: " + "; ".join(_describe(error, data) for error in exc.errors())) from None


def parse_spec_text(text: str, where: str = "dataset spec") -> DatasetSpec:
    """A spec from YAML or JSON text (JSON is YAML)."""
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError(f"{where} is not valid YAML or JSON: {exc}") from None
    return spec_from_data(data, where)


def _describe(error: Any, data: Any) -> str:
    loc = [part for part in error["loc"] if part not in COLUMN_TYPES]
    field = _field_path(loc, data)
    kind = error["type"]
    if kind == "union_tag_invalid":
        found = error.get("ctx", {}).get("tag", "?")
        return f"{field}.type: unknown column type {found!r}; expected one of {', '.join(COLUMN_TYPES)}"
    if kind == "union_tag_not_found":
        return f"{field}.type: missing; expected one of {', '.join(COLUMN_TYPES)}"
    if kind == "literal_error":
        return f"{field}: got {error.get('input')!r}; expected {error.get('ctx', {}).get('expected', '')}"
    if kind == "missing":
        return f"{field}: missing (required)"
    if kind == "extra_forbidden":
        return f"{field}: unknown field"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{field}: {message}" if field else message


def _field_path(loc: list[Any], data: Any) -> str:
    """``columns[2] (age).min``: indices in brackets, a column's name after its index when known."""
    out = ""
    node = data
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            node = node[part] if isinstance(node, list) and part < len(node) else None
            if isinstance(node, dict) and isinstance(node.get("name"), str):
                out += f" ({node['name']})"
        else:
            out += f".{part}" if out else str(part)
            node = node.get(part) if isinstance(node, dict) else None
    return out


def digits_spec() -> DatasetSpec:
    """The bundled demo as a spec: an 8x8 grey-level image ``[1, 8, 8]`` from ``pixel_0..pixel_63`` in [0, 16],
    integer classes 0..9 in ``label``. Its splits hold the same bytes as the digits schema's."""
    return DatasetSpec(
        columns=(TensorColumn(name="image", shape=(1, 8, 8), prefix="pixel_", min=0.0, max=16.0),),
        target=TargetSpec(name="label", type="class", classes=tuple(range(10))),
        description="scikit-learn's digits: 1,797 8x8 images of handwritten digits",
    )
