"""Read a dataset published by the prepare stage: its manifest and its splits as numpy arrays.

Layout: ``<store>/datasets/<name>/<version>/{train,val,test}.parquet`` and ``manifest.json``, written
last. A folder without a manifest is not a dataset (a crashed or running prepare), so every reader starts
from the manifest. Split files are checked against the sha256 the manifest records, so a trainer never
trains on a file that was changed or cut short after publishing. No Prefect import: trainer and server
images use this module.

Two ways to read a split: whole (:func:`read_split`, :func:`read_split_table`: the built-in trainer, small
splits) or one Parquet row group at a time (:func:`open_split`: :class:`SplitRowGroups`, which the SDK's
``SplitLoader``, evaluation and the canary's replay use), so a reader holds one row group, not the split.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from workloads.store import ObjectNotFound, ObjectStore, StoreError, is_s3, join, local_path, store_from_env

MANIFEST = "manifest.json"
SPLITS: tuple[str, ...] = ("train", "val", "test")
# 1: classification only, integer labels stored as values. 2 adds ``task``, ``target`` (classes in output
# order; ``stored`` says whether the label column holds the class values or their indices), ``columns``
# (types, tensor shapes, category vocabularies), ``split_method`` and ``spec``. Both are read.
MANIFEST_FORMAT = 2


class DatasetNotFound(ObjectNotFound):
    """No published dataset at the URI (no manifest.json there)."""


class DatasetCorrupt(StoreError):
    """A published dataset does not match its manifest (bad JSON, missing split, wrong checksum)."""


@dataclass(frozen=True)
class SplitFile:
    """One split file as the manifest records it (``sha256`` empty only in hand-made manifests)."""

    file: str
    rows: int
    sha256: str
    bytes: int


@dataclass(frozen=True)
class DatasetManifest:
    """What ``manifest.json`` says: the contract between prepare and the stages that read datasets.

    JSON keys (one per field): ``format``, ``name``, ``version``, ``source_uri``, ``source_sha256``,
    ``source_bytes``, ``source_format``, ``schema`` (``features``, ``label``, ``labels``, ``dtype``,
    ``value_range``), ``parameters`` (``val_fraction``, ``test_fraction``, ``seed``, ``drop_duplicates``),
    ``rows`` (split -> rows), ``class_balance`` (split -> label -> rows), ``splits`` (split -> ``file``,
    ``rows``, ``sha256``, ``bytes``), ``duplicates`` (``found``, ``dropped``, ``examples``),
    ``created_at`` (ISO 8601, UTC) and ``created_by`` (gpuflow version).
    """

    name: str
    version: str
    source_uri: str
    source_sha256: str
    source_bytes: int
    source_format: str
    schema: dict[str, Any]
    parameters: dict[str, Any]
    rows: dict[str, int]
    class_balance: dict[str, dict[str, int]]
    splits: dict[str, SplitFile]
    duplicates: dict[str, Any]
    created_at: str
    created_by: str = ""
    format: int = MANIFEST_FORMAT
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def features(self) -> list[str]:
        return list(self.schema["features"])

    @property
    def label(self) -> str:
        return str(self.schema["label"])

    @property
    def labels(self) -> list[Any]:
        """The values the split's label column holds for each class, in output order (empty for regression)."""
        return list(self.schema["labels"])

    @property
    def task(self) -> str:
        """``classification`` or ``regression``; format-1 manifests are classification."""
        return str(self.extra.get("task", "classification"))

    @property
    def target(self) -> dict[str, Any]:
        """``name``, ``type`` (class or float) and, for classes, ``classes`` (names) and ``stored``."""
        found = self.extra.get("target")
        if isinstance(found, dict):
            return dict(found)
        return {"name": self.label, "type": "class", "classes": self.labels, "stored": "value"}

    @property
    def class_names(self) -> list[Any]:
        """The declared classes in output order (string classes by name); empty for regression."""
        return list(self.target.get("classes") or [])

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": self.format,
            "name": self.name,
            "version": self.version,
            "source_uri": self.source_uri,
            "source_sha256": self.source_sha256,
            "source_bytes": self.source_bytes,
            "source_format": self.source_format,
            "schema": self.schema,
            "parameters": self.parameters,
            "rows": self.rows,
            "class_balance": self.class_balance,
            "splits": {
                name: {"file": s.file, "rows": s.rows, "sha256": s.sha256, "bytes": s.bytes}
                for name, s in self.splits.items()
            },
            "duplicates": self.duplicates,
            "created_at": self.created_at,
            "created_by": self.created_by,
        }
        out.update(self.extra)
        return out

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False).encode()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetManifest:
        known = {
            "format", "name", "version", "source_uri", "source_sha256", "source_bytes", "source_format",
            "schema", "parameters", "rows", "class_balance", "splits", "duplicates", "created_at", "created_by",
        }  # fmt: skip
        schema = dict(data["schema"])
        for key in ("features", "label", "labels"):
            if key not in schema:
                raise KeyError(f"schema.{key}")
        return cls(
            format=int(data.get("format", 1)),
            name=str(data["name"]),
            version=str(data["version"]),
            source_uri=str(data.get("source_uri", "")),
            source_sha256=str(data.get("source_sha256", "")),
            source_bytes=int(data.get("source_bytes", 0)),
            source_format=str(data.get("source_format", "")),
            schema=schema,
            parameters=dict(data.get("parameters", {})),
            rows={str(k): int(v) for k, v in data["rows"].items()},
            class_balance={
                str(split): {str(label): int(n) for label, n in counts.items()}
                for split, counts in data.get("class_balance", {}).items()
            },
            splits={
                str(k): SplitFile(str(v["file"]), int(v["rows"]), str(v.get("sha256", "")), int(v.get("bytes", 0)))
                for k, v in data["splits"].items()
            },
            duplicates=dict(data.get("duplicates", {})),
            created_at=str(data.get("created_at", "")),
            created_by=str(data.get("created_by", "")),
            extra={k: v for k, v in data.items() if k not in known},
        )


def dataset_uri(root: str, name: str, version: str) -> str:
    """Where a dataset version lives under a store root."""
    return join(root, "datasets", name, version)


def dataset_exists(uri: str, store: ObjectStore | None = None) -> bool:
    """True once the manifest is there, i.e. the dataset was published completely."""
    return (store or store_from_env()).exists(join(uri, MANIFEST))


def load_manifest(uri: str, store: ObjectStore | None = None) -> DatasetManifest:
    """The manifest of the dataset at ``uri``; raises :class:`DatasetNotFound` when it was never published."""
    store = store or store_from_env()
    manifest_uri = join(uri, MANIFEST)
    try:
        raw = store.read_bytes(manifest_uri)
    except ObjectNotFound as exc:
        raise DatasetNotFound(f"no prepared dataset at {uri}: {MANIFEST} does not exist") from exc
    try:
        return DatasetManifest.from_dict(json.loads(raw))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DatasetCorrupt(f"{manifest_uri} is not a gpuflow dataset manifest: {exc!r}") from exc


def read_split_table(
    uri: str,
    split: str,
    store: ObjectStore | None = None,
    *,
    manifest: DatasetManifest | None = None,
    verify: bool = True,
) -> pa.Table:
    """One split as an Arrow table, its bytes checked against the manifest's sha256 when ``verify``."""
    store = store or store_from_env()
    manifest = manifest or load_manifest(uri, store)
    entry = _entry(uri, manifest, split)
    file_uri = join(uri, entry.file)
    try:
        data = store.read_bytes(file_uri)
    except ObjectNotFound as exc:
        raise DatasetCorrupt(f"{file_uri} is listed in the manifest but missing") from exc
    if verify and entry.sha256:  # manifests written by prepare always carry it
        digest = hashlib.sha256(data).hexdigest()
        if digest != entry.sha256:
            raise DatasetCorrupt(f"{file_uri} has sha256 {digest}, the manifest expects {entry.sha256}")
    try:
        return pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError) as exc:
        raise DatasetCorrupt(f"{file_uri} is not readable Parquet: {exc}") from exc


def table_to_arrays(table: pa.Table, features: list[str], label: str) -> tuple[np.ndarray, np.ndarray]:
    """Features as a C-contiguous float32 matrix [N, F] (missing values as NaN) and labels as int64 [N]
    (float64 for a regression target), one copy each."""
    missing = [c for c in [*features, label] if c not in table.column_names]
    if missing:
        raise DatasetCorrupt(f"split lacks column(s) named in the manifest: {missing[:5]}")
    x = np.empty((table.num_rows, len(features)), dtype=np.float32)
    for j, name in enumerate(features):
        x[:, j] = table.column(name).to_numpy()  # nulls (nullable columns) come back as NaN
    target = table.column(label)
    kind = np.float64 if pa.types.is_floating(target.type) else np.int64
    y = np.ascontiguousarray(target.to_numpy(), dtype=kind)
    return x, y


def read_split(
    uri: str,
    split: str,
    store: ObjectStore | None = None,
    *,
    manifest: DatasetManifest | None = None,
    verify: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Features float32 [N, F] (manifest column order) and raw labels int64 [N] of one split."""
    manifest = manifest or load_manifest(uri, store)
    table = read_split_table(uri, split, store, manifest=manifest, verify=verify)
    return table_to_arrays(table, manifest.features, manifest.label)


# --------------------------------------------------------------------------- one row group at a time


def file_sha256(path: Path) -> str:
    """The sha256 of a file, read 1 MiB at a time (never whole in memory)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class SplitRowGroups:
    """A split's Parquet file opened to be read one row group at a time (prepare writes 32,768 rows per group).

    Made by :func:`open_split` (any store) or :meth:`open` (a local dataset folder); the file is checked
    against the manifest's sha256 when opened with ``verify``. Errors are :class:`DatasetCorrupt` naming the file.
    """

    def __init__(self, path: Path, manifest: DatasetManifest, split: str) -> None:
        self.path, self.manifest, self.split = path, manifest, split
        try:
            self.file = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as exc:
            raise DatasetCorrupt(f"{path} is not readable Parquet: {exc}") from exc
        self.group_rows = [self.file.metadata.row_group(i).num_rows for i in range(self.file.num_row_groups)]
        self.rows = sum(self.group_rows)

    @classmethod
    def open(cls, folder: Path, manifest: DatasetManifest, split: str, *, verify: bool = True) -> SplitRowGroups:
        """The split of the dataset in a local ``folder``."""
        entry = _entry(str(folder), manifest, split)
        path = Path(folder) / entry.file
        if not path.is_file():
            raise DatasetCorrupt(f"{path} is listed in the manifest but missing")
        if verify:
            _verify(path, entry)
        return cls(path, manifest, split)

    def table(self, index: int) -> pa.Table:
        """Row group ``index``: the manifest's feature columns and its label column."""
        try:
            return self.file.read_row_group(index, columns=[*self.manifest.features, self.manifest.label])
        except (pa.ArrowException, OSError) as exc:
            raise DatasetCorrupt(f"{self.path}: row group {index} is not readable: {exc}") from exc

    def arrays(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Row group ``index`` as :func:`table_to_arrays` gives it: float32 features, raw labels."""
        table = self.table(index)
        try:
            x, y = table_to_arrays(table, self.manifest.features, self.manifest.label)
        except (DatasetCorrupt, pa.ArrowException, ValueError, TypeError) as exc:
            raise DatasetCorrupt(f"{self.path}: {exc}") from exc
        # labels of their own: a view into Arrow's buffer would keep the row group's whole read buffer alive
        return x, y.copy()

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every row group in file order, as arrays."""
        for index in range(len(self.group_rows)):
            yield self.arrays(index)


def _entry(uri: str, manifest: DatasetManifest, split: str) -> SplitFile:
    entry = manifest.splits.get(split)
    if entry is None:
        raise DatasetCorrupt(f"dataset {uri} has no split {split!r}; it has {sorted(manifest.splits)}")
    return entry


def _verify(path: Path, entry: SplitFile, source: str = "") -> None:
    """``source``: what to name in the error when ``path`` is a local copy of it."""
    if entry.sha256:  # manifests written by prepare always carry it
        digest = file_sha256(path)
        if digest != entry.sha256:
            raise DatasetCorrupt(
                f"{source or path} does not match the sha256 its manifest records: changed or cut short "
                f"(sha256 {digest}, the manifest expects {entry.sha256})"
            )


@contextmanager
def open_split(
    uri: str,
    split: str,
    store: ObjectStore | None = None,
    *,
    manifest: DatasetManifest | None = None,
    verify: bool = True,
) -> Iterator[SplitRowGroups]:
    """One split of the dataset at ``uri``, to read a row group at a time. A local file is read in place; an S3
    object is first copied in chunks to a temporary file, removed when the block ends."""
    store = store or store_from_env()
    manifest = manifest or load_manifest(uri, store)
    entry = _entry(uri, manifest, split)
    file_uri = join(uri, entry.file)
    if not is_s3(file_uri):
        yield SplitRowGroups.open(local_path(uri), manifest, split, verify=verify)
        return
    with tempfile.TemporaryDirectory(prefix="gpuflow-split-") as folder:
        path = download_split(uri, split, Path(folder), store, manifest=manifest, verify=verify)
        yield SplitRowGroups(path, manifest, split)


def download_split(
    uri: str,
    split: str,
    folder: Path,
    store: ObjectStore | None = None,
    *,
    manifest: DatasetManifest | None = None,
    verify: bool = True,
) -> Path:
    """Copy one split's file into a local ``folder`` in chunks (checked against the manifest's sha256 when
    ``verify``) and return its path: for readers that pass over an S3 split more than once."""
    store = store or store_from_env()
    manifest = manifest or load_manifest(uri, store)
    entry = _entry(uri, manifest, split)
    file_uri = join(uri, entry.file)
    path = Path(folder) / Path(entry.file).name
    try:
        store.download(file_uri, path)
    except ObjectNotFound as exc:
        raise DatasetCorrupt(f"{file_uri} is listed in the manifest but missing") from exc
    if verify:
        _verify(path, entry, source=file_uri)
    return path


def rebatch(chunks: Iterable[tuple[np.ndarray, ...]], size: int) -> Iterator[tuple[np.ndarray, ...]]:
    """Chunks of aligned arrays (row groups) regrouped into batches of exactly ``size`` rows, the last fewer.

    Batches are those a slice of the whole split ``[i : i + size]`` would give, so a model scores a streamed split
    on the very batches it would score the split read whole.
    """
    if size < 1:
        raise ValueError(f"batch size must be at least 1, got {size}")
    carry: tuple[np.ndarray, ...] | None = None  # fewer than ``size`` rows left over from the chunks before
    for chunk in chunks:
        start = 0
        if carry is not None:
            start = min(size - len(carry[0]), len(chunk[0]))
            carry = tuple(np.concatenate([c, a[:start]]) for c, a in zip(carry, chunk, strict=True))
            if len(carry[0]) < size:
                continue
            yield carry
            carry = None
        end = start + (len(chunk[0]) - start) // size * size
        for first in range(start, end, size):
            yield tuple(a[first : first + size] for a in chunk)
        if end < len(chunk[0]):
            carry = tuple(a[end:] for a in chunk)
    if carry is not None:
        yield carry
