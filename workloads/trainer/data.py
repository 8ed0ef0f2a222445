"""Load a prepared dataset into tensors: features as float32; targets as class indices in manifest order, or
float32 values for regression.

Reading (manifest first, checksums verified) is :mod:`workloads.dataset`'s job; this module turns the
result into what the loop needs and the trainer's exit codes. A label's position in ``schema.labels`` is
its logit index in the trained model; the model's ``gpuflow.labels`` are the class *names* in that order
(for string classes the split stores indices, the manifest's ``target.classes`` the names).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from workloads.dataset import DatasetCorrupt, DatasetManifest, DatasetNotFound, load_manifest, read_split
from workloads.store import ObjectStore
from workloads.trainer.config import DatasetError


@dataclass(frozen=True)
class Split:
    """One split in memory: ``x`` float32 [N, F], ``y`` int64 class indices [N] (float32 values for regression)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.x.shape[0])


@dataclass(frozen=True)
class TrainingData:
    """The train and validation splits plus what the manifest says about them."""

    uri: str
    name: str
    version: str
    features: list[str]
    labels: list[Any]  # class names in output order; empty for regression
    train: Split
    val: Split
    task: str = "classification"


def _split(uri: str, split: str, store: ObjectStore, manifest: DatasetManifest) -> Split:
    x, raw = read_split(uri, split, store, manifest=manifest)
    if manifest.task == "regression":
        if not np.isfinite(raw).all():
            raise DatasetError(f"split {split!r} of {uri} has a missing or infinite regression target")
        return Split(x=torch.from_numpy(x), y=torch.from_numpy(raw.astype(np.float32)))
    index = {value: i for i, value in enumerate(manifest.labels)}
    try:
        y = np.fromiter((index[v] for v in raw.tolist()), dtype=np.int64, count=len(raw))
    except KeyError as exc:
        raise DatasetError(f"split {split!r} of {uri} has label {exc.args[0]!r}, not in the manifest's labels") from exc
    return Split(x=torch.from_numpy(x), y=torch.from_numpy(y))


def load_training_data(uri: str, store: ObjectStore) -> TrainingData:
    """Manifest, train and val splits; missing or inconsistent data raises :class:`DatasetError`.

    Other store errors (S3 unreachable) pass through: they are not the dataset's fault and may pass.
    """
    try:
        manifest = load_manifest(uri, store)
        if manifest.task not in ("classification", "regression"):
            raise DatasetError(f"dataset {uri} has task {manifest.task!r}; expected classification or regression")
        train, val = _split(uri, "train", store, manifest), _split(uri, "val", store, manifest)
    except (DatasetNotFound, DatasetCorrupt) as exc:
        raise DatasetError(str(exc)) from exc
    if len(train) == 0 or len(val) == 0:
        raise DatasetError(f"dataset {uri} has an empty train or val split")
    if manifest.task == "classification" and not manifest.labels:
        raise DatasetError(f"manifest of {uri} lists no labels")
    return TrainingData(
        uri=uri,
        name=manifest.name,
        version=manifest.version,
        features=manifest.features,
        labels=manifest.class_names if manifest.task == "classification" else [],
        train=train,
        val=val,
        task=manifest.task,
    )
