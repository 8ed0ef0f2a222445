"""A spec-prepared dataset's version and its format-2 manifest, for an input read whole (:mod:`tasks.data.spec`) or
batch by batch (:mod:`tasks.data.streaming`)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import numpy as np

from tasks.core.dataset_spec import CategoryColumn, DatasetSpec, TensorColumn
from tasks.data.conform import Conformed, stored_classes
from tasks.data.publishing import PREPARE_FORMAT
from tasks.data.schema import PrepareParams, canonical_json
from workloads.dataset import DatasetManifest, SplitFile


def compute_spec_version(content_sha256: str, spec: DatasetSpec, params: PrepareParams) -> str:
    """16 hex chars of sha256 over the raw content hash, the spec's canonical JSON and the parameters."""
    recipe = {
        "prepare_format": PREPARE_FORMAT,
        "content_sha256": content_sha256,
        "spec": spec.canonical(),
        "parameters": params.canonical(),
    }
    return hashlib.sha256(canonical_json(recipe).encode()).hexdigest()[:16]


def spec_manifest(
    name: str,
    version: str,
    source: dict[str, Any],
    spec: DatasetSpec,
    params: PrepareParams,
    conformed: Conformed,
    splits: dict[str, np.ndarray],
    files: dict[str, SplitFile],
    created_by: str,
) -> DatasetManifest:
    """A format-2 manifest of a table read whole: class balance or target summary from its split rows."""
    position = (lambda rows: rows) if conformed.keep is None else (lambda rows: np.searchsorted(conformed.keep, rows))
    counts: dict[str, dict[Any, int]] = {}
    summary: dict[str, dict[str, float]] = {}
    for split, rows in splits.items():
        values = conformed.target[position(rows)]
        if spec.target.type == "class":
            counts[split] = {value: int(np.count_nonzero(values == value)) for value in stored_classes(spec)}
        elif len(values):
            summary[split] = {
                "mean": float(values.mean()),
                "std": float(values.std()),
                "min": float(values.min()),
                "max": float(values.max()),
            }
    return manifest_from(
        name,
        version,
        source,
        spec,
        params,
        rows={split: len(rows) for split, rows in splits.items()},
        counts=counts,
        summary=summary,
        vocabularies=conformed.vocabularies,
        duplicates=(conformed.duplicates_found, conformed.duplicates_dropped, conformed.duplicate_examples),
        files=files,
        created_by=created_by,
    )


def manifest_from(
    name: str,
    version: str,
    source: dict[str, Any],
    spec: DatasetSpec,
    params: PrepareParams,
    *,
    rows: dict[str, int],
    counts: dict[str, dict[Any, int]],
    summary: dict[str, dict[str, float]],
    vocabularies: dict[str, list[str]],
    duplicates: tuple[int, int, list[tuple[int, int]]],
    files: dict[str, SplitFile],
    created_by: str,
    more: dict[str, Any] | None = None,
) -> DatasetManifest:
    """A format-2 manifest: today's fields (``schema`` as readers use it) plus task, target, columns and spec.

    ``counts`` holds rows per stored class value per split (classification), ``summary`` the target's mean, std,
    min and max per split (regression); ``more`` adds fields (a multi-part input's ``parts``).
    """
    balance: dict[str, dict[str, int]] = {}
    if spec.target.type == "class":
        names = [str(c) for c in spec.target.classes or ()]
        for split, per_value in counts.items():
            balance[split] = {names[i]: int(per_value.get(value, 0)) for i, value in enumerate(stored_classes(spec))}
    target: dict[str, Any] = {"name": spec.target.name, "type": spec.target.type}
    if spec.target.type == "class":
        target["classes"] = list(spec.target.classes or ())
        target["stored"] = "index" if spec.target.string_classes else "value"
    columns = []
    for column in spec.columns:
        entry: dict[str, Any] = {"name": column.name, "type": column.type, "nullable": column.nullable}
        if isinstance(column, TensorColumn):
            entry["shape"] = list(column.shape)
            entry["columns"] = list(column.element_columns())
        if isinstance(column, CategoryColumn):
            entry["vocabulary"] = vocabularies.get(column.name, [])
        columns.append(entry)
    extra: dict[str, Any] = {
        "task": spec.task,
        "target": target,
        "columns": columns,
        "split_method": spec.split_method,
        "spec": spec.canonical(),
    }
    if summary:
        extra["target_summary"] = summary
    extra.update(more or {})
    repeated, dropped, examples = duplicates
    return DatasetManifest(
        name=name,
        version=version,
        source_uri=str(source["uri"]),
        source_sha256=str(source["sha256"]),
        source_bytes=int(source["bytes"]),
        source_format=str(source["format"]),
        schema={
            "features": list(spec.feature_columns()),
            "label": spec.target.name,
            "labels": stored_classes(spec),
            "dtype": spec.dtype,
            "value_range": None,
        },
        parameters={**params.canonical(), "duplicates": "drop" if params.drop_duplicates else spec.duplicates},
        rows=rows,
        class_balance=balance,
        splits=files,
        duplicates={
            "found": repeated,
            "dropped": dropped,
            "examples": [{"row": r, "repeats": f} for r, f in examples],
        },
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        created_by=created_by,
        format=2,
        extra=extra,
    )
