"""The labelled rows the canary replays: the dataset's test split, read through workloads/dataset.py.

Features are sent as the split stores them (float32 rows; a tensor column's elements flattened, which the
server reshapes; a category column's codes). Labels are put in the model's answer space: a classifier
answers the values of its ``gpuflow.labels`` tag, which are either the split's stored label values or, for a
dataset whose label column stores class indices (string classes), the class names from the manifest. A
regressor's labels are the float targets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from blocks.data_store import DataStore
from tasks.core.errors import ConfigurationError, DataValidationError
from workloads.dataset import DatasetCorrupt, DatasetManifest, DatasetNotFound, load_manifest, read_split
from workloads.store import ObjectStore

__all__ = ["ReplaySplit", "load_replay_split", "read_replay_split"]


@dataclass(frozen=True)
class ReplaySplit:
    """The test split as replayed traffic: float32 rows and each row's label in the model's answer space."""

    dataset_uri: str
    version: str
    task: str
    features: np.ndarray
    labels: list[Any]  # str for classification (compared as text), float for regression

    @property
    def rows(self) -> int:
        return int(self.features.shape[0])


def _class_labels(stored: np.ndarray, manifest: DatasetManifest, model_labels: Sequence[Any]) -> list[str]:
    """Labels as the model answers them: stored values, or class names when the split stores indices."""
    values = [str(v) for v in stored.tolist()]
    target = manifest.target
    names = [str(name) for name in manifest.class_names]
    answers = {str(label) for label in model_labels}
    if target.get("stored") == "index" and names and answers and answers <= set(names) and not answers <= set(values):
        return [names[int(v)] for v in stored.tolist()]
    return values


def read_replay_split(
    store: ObjectStore, dataset_uri: str, model_task: str, model_labels: Sequence[Any]
) -> ReplaySplit:
    """The test split of a published dataset for a model of ``model_task``; a task that differs from the
    dataset's is a ConfigurationError (a regressor cannot be judged on class labels, nor the reverse)."""
    base = dataset_uri.rstrip("/")
    try:
        manifest = load_manifest(base, store)
        features, stored = read_split(base, "test", store, manifest=manifest)
    except DatasetNotFound as exc:
        raise ConfigurationError(f"{exc} (run prepare first, or check dataset_uri)") from exc
    except DatasetCorrupt as exc:
        raise DataValidationError(str(exc)) from exc
    if manifest.task != model_task:
        raise ConfigurationError(
            f"dataset {base} is a {manifest.task} dataset but the model is a {model_task} model (its gpuflow.task "
            "tag): replay the dataset the model was trained and evaluated on"
        )
    if model_task == "regression":
        labels: list[Any] = [float(v) for v in stored.tolist()]
    else:
        labels = _class_labels(stored, manifest, model_labels)
    return ReplaySplit(base, manifest.version, manifest.task, features, labels)


@task(name="read-replay-split", cache_policy=NO_CACHE)
def load_replay_split(store: DataStore, dataset_uri: str, model_task: str, model_labels: list[Any]) -> ReplaySplit:
    """The dataset's test split as the canary's labelled traffic."""
    return read_replay_split(store.object_store(), dataset_uri, model_task, model_labels)
