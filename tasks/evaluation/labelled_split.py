"""The test split of a published dataset as arrays, with what its manifest says about the task and the target."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tasks.core.errors import ConfigurationError, DataValidationError
from workloads.dataset import DatasetCorrupt, DatasetManifest, DatasetNotFound, load_manifest, read_split
from workloads.model_input import category_vocabularies
from workloads.store import ObjectStore


@dataclass(frozen=True)
class LabelledSplit:
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


def read_test_split(store: ObjectStore, dataset_uri: str) -> LabelledSplit:
    """The test split of a published dataset, read through its manifest (checksums verified).

    No manifest means "not a published dataset" (``ConfigurationError`` naming the URI); a manifest
    that does not match its files is a ``DataValidationError``.
    """
    base = dataset_uri.rstrip("/")
    try:
        manifest = load_manifest(base, store)
        features, labels = read_split(base, "test", store, manifest=manifest)
    except DatasetNotFound as exc:
        raise ConfigurationError(f"{exc} (run prepare first, or check dataset_uri)") from exc
    except DatasetCorrupt as exc:
        raise DataValidationError(str(exc)) from exc
    if manifest.task == "classification" and manifest.target.get("stored") == "index":
        labels = _class_names(manifest, labels, base)  # string classes are stored as indices; models know names
    return LabelledSplit(
        dataset_uri=base,
        version=manifest.version,
        features=features,
        labels=labels,
        feature_names=manifest.features,
        manifest=manifest,
    )


def _class_names(manifest: DatasetManifest, indices: np.ndarray, uri: str) -> np.ndarray:
    names = manifest.class_names
    if indices.size and (int(indices.min()) < 0 or int(indices.max()) >= len(names)):
        raise DataValidationError(f"the test split of {uri} stores class indices outside 0..{len(names) - 1}")
    return np.asarray(names, dtype=object)[indices]
