"""The test split of a published dataset, with what its manifest says about the task and the target.

Two forms, one interface (:meth:`batches`): :class:`LabelledSplit` holds the split in memory (read whole, or arrays
a caller has), :class:`StreamedSplit` reads it one Parquet row group at a time on every pass (from one local copy
when the store is S3), so scoring a split of any size holds one row group and one batch of features, never the
split.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, cast

import numpy as np

from tasks.core.errors import ConfigurationError, DataValidationError
from workloads.dataset import (
    DatasetCorrupt,
    DatasetManifest,
    DatasetNotFound,
    SplitRowGroups,
    download_split,
    load_manifest,
    open_split,
    read_split,
    rebatch,
)
from workloads.model_input import category_vocabularies
from workloads.store import ObjectStore, is_s3

__all__ = ["LabelledSplit", "ScoredSplit", "StreamedSplit", "open_test_split", "read_test_split"]


class _Described:
    """What both forms say from the manifest (``dataset_uri`` and ``manifest`` are their fields)."""

    dataset_uri: str
    manifest: DatasetManifest | None

    @property
    def task(self) -> str:
        """classification or regression, as the manifest says (format-1 manifests: classification)."""
        return self.manifest.task if self.manifest is not None else "classification"

    @property
    def class_names(self) -> list[str]:
        """The dataset's classes in output order, as text (empty for regression)."""
        return [str(c) for c in self.manifest.class_names] if self.manifest is not None else []

    def require_task(self, model_task: str, who: str) -> None:
        """A model of another task than the dataset's cannot be scored on it: ``ConfigurationError`` naming both."""
        if model_task != self.task:
            raise ConfigurationError(
                f"{who} is a {model_task} model (its gpuflow.task tag), but dataset {self.dataset_uri} is a "
                f"{self.task} dataset (its manifest's task); evaluate it on a {model_task} dataset, or train a "
                f"{self.task} model"
            )

    def tensor_shapes(self) -> dict[str, list[int]]:
        """Tensor columns the manifest declares (name -> shape), to name them when a model's input does not fit."""
        columns = self.manifest.extra.get("columns", []) if self.manifest is not None else []
        return {str(c["name"]): list(c["shape"]) for c in columns if isinstance(c, dict) and c.get("type") == "tensor"}

    def category_vocabularies(self) -> dict[str, list[str]]:
        """Category columns the manifest declares (name -> values in code order): a model may take them as strings."""
        return category_vocabularies(self.manifest)


@dataclass(frozen=True)
class LabelledSplit(_Described):
    """One split of a prepared dataset as arrays: float32 features [N, F] and the true labels [N]: class values
    (names for string classes, whose label column stores indices), or floats for a regression target."""

    dataset_uri: str
    version: str
    features: np.ndarray
    labels: np.ndarray
    feature_names: list[str]
    manifest: DatasetManifest | None = None

    @property
    def rows(self) -> int:
        return int(self.features.shape[0])

    def batches(self, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Features and labels ``[i : i + size]``, in order."""
        for first in range(0, self.rows, size):
            yield self.features[first : first + size], self.labels[first : first + size]


@dataclass(frozen=True)
class StreamedSplit(_Described):
    """The test split of a published dataset, read a row group at a time on every pass; labels as
    :class:`LabelledSplit` has them.

    A local split is read in place (checksum verified on each pass); an S3 split is read from ``copy``, the one
    local copy :func:`open_test_split` downloaded and verified, so every pass (challenger, champion) reads the
    same bytes and S3 serves the split once per evaluation.
    """

    dataset_uri: str
    version: str
    feature_names: list[str]
    manifest: DatasetManifest
    store: ObjectStore
    rows: int
    copy: Path | None = None

    def batches(self, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Features and labels in batches of exactly ``size`` rows (the last fewer), the batches of the split read
        whole: one row group in memory at a time."""
        try:
            with self._row_groups() as groups:
                chunks = ((x, _labels(self.manifest, y, self.dataset_uri)) for x, y in groups)
                yield from cast("Iterator[tuple[np.ndarray, np.ndarray]]", rebatch(chunks, size))
        except DatasetCorrupt as exc:
            raise DataValidationError(str(exc)) from exc

    @contextmanager
    def _row_groups(self) -> Iterator[SplitRowGroups]:
        if self.copy is not None:
            yield SplitRowGroups(self.copy, self.manifest, "test")
            return
        with open_split(self.dataset_uri, "test", self.store, manifest=self.manifest) as groups:
            yield groups


class ScoredSplit(Protocol):
    """What scoring needs of a split, in memory or streamed."""

    @property
    def dataset_uri(self) -> str: ...

    @property
    def feature_names(self) -> list[str]: ...

    @property
    def rows(self) -> int: ...

    @property
    def task(self) -> str: ...

    def tensor_shapes(self) -> dict[str, list[int]]: ...

    def category_vocabularies(self) -> dict[str, list[str]]: ...

    def batches(self, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]: ...


def _manifest(store: ObjectStore, base: str) -> DatasetManifest:
    try:
        return load_manifest(base, store)
    except DatasetNotFound as exc:
        raise ConfigurationError(f"{exc} (run prepare first, or check dataset_uri)") from exc
    except DatasetCorrupt as exc:
        raise DataValidationError(str(exc)) from exc


def read_test_split(store: ObjectStore, dataset_uri: str) -> LabelledSplit:
    """The test split of a published dataset read whole, through its manifest (checksums verified).

    No manifest means "not a published dataset" (``ConfigurationError`` naming the URI); a manifest
    that does not match its files is a ``DataValidationError``.
    """
    base = dataset_uri.rstrip("/")
    manifest = _manifest(store, base)
    try:
        features, labels = read_split(base, "test", store, manifest=manifest)
    except DatasetCorrupt as exc:
        raise DataValidationError(str(exc)) from exc
    return LabelledSplit(
        dataset_uri=base,
        version=manifest.version,
        features=features,
        labels=_labels(manifest, labels, base),
        feature_names=manifest.features,
        manifest=manifest,
    )


def open_test_split(store: ObjectStore, dataset_uri: str, scratch: Path | None = None) -> StreamedSplit:
    """The test split of a published dataset, to be streamed; its file is checked now (checksum, Parquet footer),
    so a bad split fails before any model is scored. Errors as :func:`read_test_split`'s.

    An S3 split is downloaded once, into ``scratch`` (a folder the caller removes when the evaluation ends), and
    every pass reads that copy; without ``scratch`` each pass downloads it again into a folder of its own.
    """
    base = dataset_uri.rstrip("/")
    manifest = _manifest(store, base)
    try:
        if scratch is not None and is_s3(base):
            copy = download_split(base, "test", Path(scratch), store, manifest=manifest)
            rows = SplitRowGroups(copy, manifest, "test").rows
            return StreamedSplit(base, manifest.version, manifest.features, manifest, store, rows, copy)
        with open_split(base, "test", store, manifest=manifest) as groups:
            rows = groups.rows
    except DatasetCorrupt as exc:
        raise DataValidationError(str(exc)) from exc
    return StreamedSplit(base, manifest.version, manifest.features, manifest, store, rows)


def _labels(manifest: DatasetManifest, stored: np.ndarray, uri: str) -> np.ndarray:
    """Labels as models know them: string classes are stored as indices, models answer their names."""
    if manifest.task != "classification" or manifest.target.get("stored") != "index":
        return stored
    names = manifest.class_names
    if stored.size and (int(stored.min()) < 0 or int(stored.max()) >= len(names)):
        raise DataValidationError(f"the test split of {uri} stores class indices outside 0..{len(names) - 1}")
    return np.asarray(names, dtype=object)[stored]
