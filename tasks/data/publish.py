"""Turn a raw file into a published, immutable dataset version: the prepare stage's logic, without Prefect.

The version is a hash of the raw bytes and of everything that shapes the output (schema, fractions,
seed, duplicate policy), so the same input always maps to the same folder and a second run finds the
manifest and writes nothing. Publishing is all-or-nothing (:mod:`tasks.data.publishing`). When the labels pass
by themselves, the splits are written while the feature values and duplicates are checked (a failed check
deletes them, and its message is the one a check before writing would give). An input in parts (a glob, an S3
prefix) is read batch by batch by the spec this schema amounts to (:mod:`tasks.data.streaming`).
"""

from __future__ import annotations

import hashlib
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import numpy as np

from tasks.data.parts import open_parts
from tasks.data.publishing import (
    PREPARE_FORMAT,
    Log,
    PrepareResult,
    Rows,
    _Clock,
    cached_result,
    check_dataset_name,
    publish_result,
    write_while_checking,
)
from tasks.data.schema import DatasetSchema, PrepareParams, canonical_json
from tasks.data.schema_reader import feature_type, read_table
from tasks.data.split import class_counts, stratified_split
from tasks.data.streaming import prepare_parts, spec_from_schema
from tasks.data.validation import Checked, check_values, labels_ahead, validate
from workloads.dataset import DatasetManifest, SplitFile, dataset_uri
from workloads.store import ObjectStore


def compute_version(content_sha256: str, schema: DatasetSchema, params: PrepareParams) -> str:
    """16 hex chars of sha256 over the raw content hash and every parameter that shapes the output."""
    recipe = {
        "prepare_format": PREPARE_FORMAT,
        "content_sha256": content_sha256,
        "schema": schema.canonical(),
        "parameters": params.canonical(),
    }
    return hashlib.sha256(canonical_json(recipe).encode()).hexdigest()[:16]


def prepare_dataset(
    source_uri: str,
    *,
    store: ObjectStore,
    root: str,
    name: str,
    schema: DatasetSchema,
    params: PrepareParams,
    log: Log | None = None,
    created_by: str = "",
) -> PrepareResult:
    """Hash, check the cache, read, validate, split and publish; see the module docstring for the guarantees."""
    log = log or logging.getLogger("gpuflow.prepare")
    check_dataset_name(name)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    clock = _Clock(timings)
    with open_parts(source_uri, store) as parts:
        clock.lap("hash")
        if not parts.single:  # several parts: read batch by batch, by the spec this schema amounts to
            return prepare_parts(
                parts, store=store, root=root, name=name, spec=spec_from_schema(schema), params=params, log=log,
                created_by=created_by, clock=clock, started=started,
            )  # fmt: skip
        raw = parts.files[0]
        version = compute_version(raw.sha256, schema, params)
        uri = dataset_uri(root, name, version)
        if (cached := cached_result(uri, store, name, version, raw.uri, timings, started, log)) is not None:
            return cached
        log.info("preparing dataset %s version %s from %s (%d bytes, %s)", name, version, raw.uri, raw.size, raw.format)
        table = read_table(raw, schema)
        clock.lap("read")
        ahead = labels_ahead(table, schema, params, raw.uri)
        if ahead is None:  # everything checked first, in order: the split may depend on it (dropped duplicates)
            table, checked = validate(table, schema, params, raw.uri)
            clock.lap("validate")
            if checked.dropped:
                log.info(
                    "dropped %d duplicate row(s), e.g. data rows %s", checked.dropped, checked.duplicates.examples()
                )
            labels, keep, done = checked.labels, checked.keep, checked
        else:  # the split needs only the labels: the rest is checked on a thread while the splits are written
            (table, labels), keep, done = ahead, None, None
        del ahead  # held the table too
        source = {"uri": raw.uri, "sha256": raw.sha256, "bytes": raw.size, "format": raw.format}
    unchecked = [table] if done is None else []  # the check takes it, so the writer frees each batch behind it

    def check() -> Checked:
        began = time.perf_counter()
        found = check_values(unchecked.pop(), schema, labels, str(source["uri"]))
        clock.timings["validate"] = round(time.perf_counter() - began, 4)  # overlapping "split" and "write"
        return found

    with ThreadPoolExecutor(1, thread_name_prefix="gpuflow-check") as pool:
        if done is None:
            checking: Future[Checked] = pool.submit(check)  # on the core the writer thread leaves idle
        else:
            checking = Future()
            checking.set_result(done)
        splits = _split(labels, keep, params)
        clock.lap("split")
        rows = Rows(table, splits, schema.features, feature_type(schema))
        del table  # ``rows`` holds the data now, and the writer frees it batch by batch
        results: list[Checked] = []

        def write(folder: str) -> dict[str, SplitFile]:
            files, result = write_while_checking(rows, folder, store, checking)
            results.append(result)
            return files

        def manifest_for(files: dict[str, SplitFile]) -> DatasetManifest:
            return _manifest(name, version, source, schema, params, results[0], splits, files, created_by)

        return publish_result(write, uri, store, manifest_for, name, version, str(source["uri"]), clock, started, log)


def _split(labels: np.ndarray, keep: np.ndarray | None, params: PrepareParams) -> dict[str, np.ndarray]:
    return stratified_split(
        labels, val_fraction=params.val_fraction, test_fraction=params.test_fraction, seed=params.seed, row_ids=keep
    )


def _manifest(
    name: str,
    version: str,
    source: dict[str, Any],
    schema: DatasetSchema,
    params: PrepareParams,
    checked: Checked,
    splits: dict[str, np.ndarray],
    files: dict[str, SplitFile],
    created_by: str,
) -> DatasetManifest:
    balance: dict[str, dict[str, int]] = {}
    for split, rows in splits.items():
        # labels align with keep (ascending), or with the rows themselves when nothing was dropped
        labels = checked.labels[rows if checked.keep is None else np.searchsorted(checked.keep, rows)]
        balance[split] = {str(k): v for k, v in class_counts(labels, schema.labels).items()}
    return DatasetManifest(
        name=name,
        version=version,
        source_uri=str(source["uri"]),
        source_sha256=str(source["sha256"]),
        source_bytes=int(source["bytes"]),
        source_format=str(source["format"]),
        schema=schema.canonical(),
        parameters=params.canonical(),
        rows={split: len(rows) for split, rows in splits.items()},
        class_balance=balance,
        splits=files,
        duplicates={
            "found": checked.duplicates.count,
            "dropped": checked.dropped,
            "examples": [{"row": r, "repeats": f} for r, f in checked.duplicates.examples()],
        },
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        created_by=created_by,
        extra={
            "task": "classification",
            "target": {"name": schema.label, "type": "class", "classes": list(schema.labels), "stored": "value"},
        },
    )
