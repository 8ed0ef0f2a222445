"""What raw data must look like, and the parameters of a preparation: both are part of a dataset's version.

The schema is declared, not inferred: a file with an extra, missing or retyped column is rejected with a
message that names it, instead of silently producing a different dataset. Field names match the
``schema`` object in ``manifest.json`` (see ``workloads/dataset.py``), which readers rely on.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tasks.core.errors import ConfigurationError


class DatasetSchema(BaseModel):
    """Columns, types, labels and value range a raw file must have to become a dataset."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    features: tuple[str, ...] = Field(description="Feature columns, in the order splits store them.")
    label: str = Field(description="The label column (integer class labels).")
    labels: tuple[int, ...] = Field(description="Allowed label values; any other value is rejected.")
    dtype: Literal["float32", "float64"] = Field(
        default="float32", description="Storage type of the (numeric) feature columns in the splits."
    )
    value_range: tuple[float, float] | None = Field(
        default=None, description="Inclusive (min, max) every feature value must lie in; None: any finite value."
    )

    @field_validator("features")
    @classmethod
    def _features_unique(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("a schema needs at least one feature column")
        doubled = sorted({c for c in value if value.count(c) > 1})
        if doubled:
            raise ValueError(f"feature columns listed twice: {doubled}")
        return value

    @field_validator("labels")
    @classmethod
    def _labels_sorted(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if len(value) < 2:
            raise ValueError("a classification schema needs at least two labels")
        if len(set(value)) != len(value):
            raise ValueError("labels listed twice")
        return tuple(sorted(value))

    @model_validator(mode="after")
    def _consistent(self) -> DatasetSchema:
        if self.label in self.features:
            raise ValueError(f"label column {self.label!r} is also listed as a feature")
        if self.value_range is not None:
            low, high = self.value_range
            if not (low <= high) or low in (float("inf"), float("-inf")) or high in (float("inf"), float("-inf")):
                raise ValueError(f"value_range must be finite with min <= max, got {self.value_range}")
        return self

    @property
    def columns(self) -> tuple[str, ...]:
        """Every column a raw file must have: features, then the label."""
        return (*self.features, self.label)

    def describe_columns(self) -> str:
        """A compact form of the expected columns for error messages, e.g. ``pixel_0..pixel_63, label``."""
        return f"{compact_names(self.features)}, {self.label}"

    def describe_labels(self) -> str:
        """``0..9`` for a contiguous label set, else the values."""
        values = self.labels
        if values == tuple(range(values[0], values[-1] + 1)):
            return f"{values[0]}..{values[-1]}"
        return ", ".join(str(v) for v in values)

    def describe_range(self) -> str:
        if self.value_range is None:
            return "any finite value"
        low, high = self.value_range
        return f"[{_num(low)}, {_num(high)}]"

    def canonical(self) -> dict[str, Any]:
        """A JSON-ready form; identical schemas give identical dicts (part of the dataset version)."""
        return {
            "features": list(self.features),
            "label": self.label,
            "labels": list(self.labels),
            "dtype": self.dtype,
            "value_range": list(self.value_range) if self.value_range is not None else None,
        }


class PrepareParams(BaseModel):
    """How a raw file is turned into splits; every field is part of the dataset version."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    val_fraction: float = Field(default=0.15, description="Share of each class that goes to the val split.")
    test_fraction: float = Field(default=0.15, description="Share of each class that goes to the test split.")
    seed: int = Field(default=42, description="Seed of the (stratified) split.")
    drop_duplicates: bool = Field(
        default=False, description="Drop repeated rows (keeping the first) instead of rejecting the file."
    )

    @model_validator(mode="after")
    def _fractions(self) -> PrepareParams:
        # ConfigurationError is not a ValueError, so pydantic lets it through unwrapped.
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ConfigurationError(f"{name} must be between 0 and 1 (exclusive), got {value}")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ConfigurationError(
                f"val_fraction + test_fraction must leave rows for training (< 1), got "
                f"{self.val_fraction} + {self.test_fraction} = {self.val_fraction + self.test_fraction}"
            )
        return self

    def canonical(self) -> dict[str, Any]:
        return {
            "val_fraction": float(self.val_fraction),
            "test_fraction": float(self.test_fraction),
            "seed": int(self.seed),
            "drop_duplicates": bool(self.drop_duplicates),
        }


def canonical_json(value: Any) -> str:
    """Stable JSON (sorted keys, no spaces) so equal inputs always hash the same."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def compact_names(names: tuple[str, ...]) -> str:
    """``pixel_0..pixel_63`` when names are a numbered run, else a comma list."""
    if len(names) > 3:
        stem = names[0].rstrip("0123456789")
        if stem and all(n == f"{stem}{i}" for i, n in enumerate(names, start=int(names[0][len(stem) :] or 0))):
            return f"{names[0]}..{names[-1]}"
    return ", ".join(names)
