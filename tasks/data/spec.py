"""Prepare data by a dataset spec: choose the spec, check a file against it, publish it, or infer a first spec.

The spec model is ``tasks.core.dataset_spec.DatasetSpec``; reading and checking by it is
``tasks.data.conform``; publishing reuses ``tasks.data.publish`` (same staging, same all-or-nothing rule).
A spec-prepared dataset's version hashes the raw bytes, the spec's canonical JSON and the parameters, and
its manifest (format 2) records the task, the target (classes in output order), category vocabularies and
tensor shapes, so every later stage can read them.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from tasks.core.dataset_spec import (
    DatasetSpec,
    SpecError,
    parse_spec_text,
    spec_from_data,
)
from tasks.core.errors import DataNotFoundError, DataValidationError
from tasks.core.spec_files import looks_like_file, read_spec_file, spec_path
from tasks.data.conform import conform, split_rows
from tasks.data.ingest import DATA_SUFFIXES, detect_format, normalize_uri, open_raw
from tasks.data.parts import Parts, is_pattern, local_parts, open_parts
from tasks.data.publishing import (
    Log,
    PrepareResult,
    Rows,
    _Clock,
    cached_result,
    check_dataset_name,
    publish_result,
)
from tasks.data.raw_file import ExpectedColumns, RawFile, check_columns, csv_header
from tasks.data.schema import PrepareParams
from tasks.data.spec_manifest import compute_spec_version, spec_manifest
from tasks.data.spec_reader import read_by_spec
from tasks.data.streaming import Stream, prepare_parts, with_vocabularies
from workloads.dataset import DatasetManifest, SplitFile, dataset_uri
from workloads.store import ObjectStore, is_s3, local_path

SpecRef = str | DatasetSpec | dict[str, Any] | None


def resolve_spec(ref: SpecRef) -> DatasetSpec | None:
    """A spec from a file (path or file://, YAML or JSON), a saved DatasetSpec block name, a dict, or None.

    A reference that looks like a file (a known suffix, a path separator, or an existing file) is read as
    one; anything else is a block name. Every mistake is a ``SpecError`` before any data is read.
    """
    if ref is None or isinstance(ref, DatasetSpec):
        return ref
    if isinstance(ref, dict):
        return spec_from_data(ref)
    text = ref.strip()
    if not text:
        return None
    if looks_like_file(text):
        if (path := spec_path(text)).suffix.lower() in DATA_SUFFIXES:  # refused unread: it may be gigabytes
            raise SpecError(
                f"dataset spec {path} is a data file, not a spec: a spec is YAML or JSON "
                f"(`gpuflow spec infer {path}` writes one to start from)"
            )
        path, content = read_spec_file(text, "dataset spec", SpecError)
        return parse_spec_text(content, f"dataset spec {path}")
    from blocks.dataset_spec import load_spec_block

    return load_spec_block(text)


def quick_check_spec(data_uri: str, ref: str) -> None:
    """What ``gpuflow run`` checks before any server boots: a spec file parses, a local file's columns fit it.

    A spec given by block name is left to prepare (loading it needs the Prefect API), as is ``s3://`` data.
    """
    if not looks_like_file(ref):
        return
    spec = resolve_spec(ref)
    if spec is None or data_uri.strip() == "demo":
        return
    uri = normalize_uri(data_uri)
    if is_s3(uri):
        return
    paths = [path for _, path in local_parts(uri)] if is_pattern(uri) else [local_path(uri)]
    for path in paths:
        _quick_check_file(str(path) if len(paths) > 1 else uri, path, spec)


def _quick_check_file(uri: str, path: Path, spec: DatasetSpec) -> None:
    if not path.is_file():
        raise DataNotFoundError(f"raw data not found: no file at {path}")
    if path.stat().st_size == 0:
        raise DataValidationError(f"{uri} is empty (0 bytes); expected CSV or Parquet with a header and data rows")
    names = _header_names(uri, path)
    if names is not None:
        check_columns(names, ExpectedColumns(spec.raw_columns()), uri)


def _header_names(uri: str, path: Path) -> list[str] | None:
    import pyarrow.parquet as pq

    raw = RawFile(uri=uri, path=path, sha256="", size=path.stat().st_size, format=detect_format(uri, path))
    if raw.format == "csv":
        return csv_header(raw)
    try:
        return list(pq.read_schema(path).names)
    except (pa.ArrowException, OSError):
        return None  # unreadable: prepare says exactly how


def prepare_with_spec(
    source_uri: str,
    *,
    store: ObjectStore,
    root: str,
    name: str,
    spec: DatasetSpec,
    params: PrepareParams,
    log: Log | None = None,
    created_by: str = "",
) -> PrepareResult:
    """Hash, check the cache, read and check by the spec, split and publish (``tasks.data.publish``'s rules)."""
    log = log or logging.getLogger("gpuflow.prepare")
    check_dataset_name(name)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    clock = _Clock(timings)
    with open_parts(source_uri, store) as parts:
        clock.lap("hash")
        if not parts.single:
            return prepare_parts(
                parts, store=store, root=root, name=name, spec=spec, params=params, log=log,
                created_by=created_by, clock=clock, started=started,
            )  # fmt: skip
        raw = parts.files[0]
        version = compute_spec_version(raw.sha256, spec, params)
        uri = dataset_uri(root, name, version)
        if (cached := cached_result(uri, store, name, version, raw.uri, timings, started, log)) is not None:
            return cached
        log.info(
            "preparing dataset %s version %s (%s) from %s (%d bytes, %s)",
            name, version, spec.task, raw.uri, raw.size, raw.format,
        )  # fmt: skip
        table = read_by_spec(raw, spec)
        clock.lap("read")
        conformed = conform(table, spec, params, raw.uri)
        del table
        clock.lap("validate")
        splits = split_rows(conformed, spec, params, raw.uri)
        clock.lap("split")
        source = {"uri": raw.uri, "sha256": raw.sha256, "bytes": raw.size, "format": raw.format}
    if conformed.duplicates_dropped:
        log.info(
            "dropped %d duplicate row(s), e.g. data rows %s", conformed.duplicates_dropped, conformed.duplicate_examples
        )

    def manifest_for(files: dict[str, SplitFile]) -> DatasetManifest:
        return spec_manifest(name, version, source, spec, params, conformed, splits, files, created_by)

    rows = Rows(conformed.table, splits, (), pa.float32())
    return publish_result(rows, uri, store, manifest_for, name, version, str(source["uri"]), clock, started, log)


def check_file(source_uri: str, spec: DatasetSpec, params: PrepareParams, store: ObjectStore) -> dict[str, Any]:
    """Read and check a file (or parts) against a spec, split it, publish nothing; what a prepare would produce."""
    with open_parts(source_uri, store) as parts:
        if not parts.single:
            return _check_parts(parts, spec, params)
        raw = parts.files[0]
        version = compute_spec_version(raw.sha256, spec, params)
        conformed = conform(read_by_spec(raw, spec), spec, params, raw.uri)
        splits = split_rows(conformed, spec, params, raw.uri)
        uri = raw.uri
    return {
        "source_uri": uri,
        "task": spec.task,
        "version": version,
        "rows": {split: len(rows) for split, rows in splits.items()},
        "duplicates_found": conformed.duplicates_found,
        "duplicates_dropped": conformed.duplicates_dropped,
    }


def _check_parts(parts: Parts, spec: DatasetSpec, params: PrepareParams) -> dict[str, Any]:
    """The streamed pass of a prepare, its split files written to a temp folder and thrown away."""
    stream = Stream(parts, with_vocabularies(spec, parts), params)
    with tempfile.TemporaryDirectory(prefix="gpuflow-check-") as tmp:
        stream.write(tmp, ObjectStore())
    return {
        "source_uri": parts.uri,
        "task": spec.task,
        "version": compute_spec_version(parts.content_sha256, spec, params),
        "rows": dict(stream.rows),
        "duplicates_found": stream.duplicates_found,
        "duplicates_dropped": stream.dropped,
        "parts": len(parts.files),
    }


# --------------------------------------------------------------------------- infer

_TARGET_NAMES = ("target", "label", "labels", "class", "y")
_MAX_CLASSES = 20
_MAX_CATEGORIES = 100


def infer_spec(source_uri: str, store: ObjectStore, target: str | None = None) -> dict[str, Any]:
    """A starting spec (as a dict, ready for YAML) from a data file: types, observed ranges, label kind.

    The target is ``target``, else a column named target/label/class/y, else the last column. Text and
    boolean targets and integers with at most 20 distinct values become class targets; other numbers a
    float (regression) target. Review it: ranges are what this file holds, not what the data may hold.
    """
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    with open_raw(source_uri, store) as raw:
        if raw.size == 0:
            raise SpecError(f"{raw.uri} is empty: nothing to infer a spec from")
        try:
            if raw.format == "parquet":
                table = pq.read_table(raw.path)
            else:
                table = pcsv.read_csv(
                    raw.path, convert_options=pcsv.ConvertOptions(null_values=[""], strings_can_be_null=True)
                )
        except (pa.ArrowException, OSError) as exc:
            raise SpecError(f"{raw.uri} cannot be read as {raw.format}: {exc}") from exc
    names = list(table.column_names)
    if target is None:
        lowered = {n.lower(): n for n in names}
        target = next((lowered[t] for t in _TARGET_NAMES if t in lowered), names[-1])
    if target not in names:
        raise SpecError(f"--target {target!r} is not a column of {source_uri} (columns: {', '.join(names[:20])})")
    if len(names) < 2:
        raise SpecError(f"{source_uri} has one column: a spec needs at least one feature besides the target")
    columns = [_infer_column(name, table.column(name)) for name in names if name != target]
    spec: dict[str, Any] = {"columns": columns, "target": _infer_target(target, table.column(target))}
    if pc.any(pc.is_null(table.column(target))).as_py():
        spec["description"] = f"review: the target {target!r} has missing values, which prepare rejects"
    spec_from_data(spec, f"spec inferred from {source_uri}")  # what we write must load
    return spec


def _bounds(values: pa.ChunkedArray) -> dict[str, float]:
    finite = pc.filter(values, pc.is_finite(values)) if pa.types.is_floating(values.type) else values
    extremes = pc.min_max(finite).as_py()
    out: dict[str, float] = {}
    for key in ("min", "max"):
        value = extremes.get(key)
        if value is not None and math.isfinite(float(value)):
            out[key] = int(value) if isinstance(value, int) else float(value)
    return out


def _infer_column(name: str, values: pa.ChunkedArray) -> dict[str, Any]:
    kind = values.type
    entry: dict[str, Any] = {"name": name}
    if pa.types.is_boolean(kind):
        entry["type"] = "boolean"
    elif pa.types.is_integer(kind):
        entry.update({"type": "integer", **_bounds(values)})
    elif pa.types.is_floating(kind):
        entry.update({"type": "float", **_bounds(values)})
    else:
        distinct = sorted(str(v) for v in pc.unique(values).to_pylist() if v is not None)
        entry["type"] = "category"
        if len(distinct) <= _MAX_CATEGORIES:
            entry["categories"] = distinct
    has_nan = pa.types.is_floating(kind) and pc.any(pc.is_nan(values)).as_py()
    if values.null_count or has_nan:
        entry["nullable"] = True
    return entry


def _infer_target(name: str, values: pa.ChunkedArray) -> dict[str, Any]:
    kind = values.type
    distinct = [v for v in pc.unique(values).to_pylist() if v is not None]
    whole = pa.types.is_floating(kind) and all(float(v).is_integer() for v in distinct if v == v)
    if whole and 2 <= len(distinct) <= _MAX_CLASSES:
        return {"name": name, "type": "class", "classes": sorted(int(v) for v in distinct if v == v)}
    if pa.types.is_integer(kind) and 2 <= len(distinct) <= _MAX_CLASSES:
        return {"name": name, "type": "class", "classes": sorted(int(v) for v in distinct)}
    if pa.types.is_boolean(kind):
        return {"name": name, "type": "class", "classes": sorted(str(v).lower() for v in distinct)}
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return {"name": name, "type": "class", "classes": sorted(str(v) for v in distinct)}
    return {"name": name, "type": "float"}
