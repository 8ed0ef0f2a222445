"""Load a prepared dataset into tensors: features as float32, labels as class indices in manifest order.

The manifest (written last by prepare) says which columns are features and which labels exist; the
label's position in ``schema.labels`` is the logit index of the trained model.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from workloads.store import ObjectNotFound, ObjectStore, StoreError, join
from workloads.trainer.config import DatasetError


@dataclass(frozen=True)
class Split:
    """One split in memory: ``x`` float32 [N, F], ``y`` int64 class indices [N]."""

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
    labels: list[Any]
    train: Split
    val: Split


def read_manifest(uri: str, store: ObjectStore) -> dict[str, Any]:
    """The dataset's manifest; its absence means the dataset was never (completely) published."""
    try:
        raw = store.read_bytes(join(uri, "manifest.json"))
    except ObjectNotFound as exc:
        raise DatasetError(f"no prepared dataset at {uri}: manifest.json is missing") from exc
    except StoreError as exc:
        raise DatasetError(f"could not read the manifest of {uri}: {exc}") from exc
    try:
        manifest = json.loads(raw)
        schema = manifest["schema"]
        features, label, labels = schema["features"], schema["label"], schema["labels"]
    except (ValueError, KeyError, TypeError) as exc:
        raise DatasetError(
            f"manifest of {uri} is not usable: expected JSON with schema.features, schema.label, schema.labels"
        ) from exc
    if not features or not labels or not isinstance(label, str):
        raise DatasetError(f"manifest of {uri} lists no features or no labels")
    return dict(manifest)


def _read_split(uri: str, split: str, store: ObjectStore, features: list[str], label: str, labels: list[Any]) -> Split:
    try:
        frame = pd.read_parquet(io.BytesIO(store.read_bytes(join(uri, f"{split}.parquet"))))
    except (StoreError, OSError, ValueError) as exc:
        raise DatasetError(f"could not read split {split!r} of {uri}: {exc}") from exc
    missing = [c for c in [*features, label] if c not in frame.columns]
    if missing:
        raise DatasetError(f"split {split!r} of {uri} lacks columns named in the manifest: {missing[:5]}")
    index = {value: i for i, value in enumerate(labels)}
    try:
        y = np.array([index[v] for v in frame[label].tolist()], dtype=np.int64)
    except KeyError as exc:
        raise DatasetError(f"split {split!r} of {uri} has label {exc.args[0]!r}, not in manifest labels") from exc
    x = frame[features].to_numpy(dtype=np.float32, copy=True)
    return Split(x=torch.from_numpy(x), y=torch.from_numpy(y))


def load_training_data(uri: str, store: ObjectStore) -> TrainingData:
    """Read manifest, train and val splits; raises :class:`DatasetError` on anything unusable."""
    manifest = read_manifest(uri, store)
    schema = manifest["schema"]
    features, label, labels = list(schema["features"]), schema["label"], list(schema["labels"])
    train = _read_split(uri, "train", store, features, label, labels)
    val = _read_split(uri, "val", store, features, label, labels)
    if len(train) == 0 or len(val) == 0:
        raise DatasetError(f"dataset {uri} has an empty train or val split")
    return TrainingData(
        uri=uri,
        name=str(manifest.get("name", "")),
        version=str(manifest.get("version", "")),
        features=features,
        labels=labels,
        train=train,
        val=val,
    )
