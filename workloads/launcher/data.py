"""The dataset as the trainer sees it: its manifest (checked first) and a local folder with its files.

A local store's dataset folder is handed over as it is (nothing copied); a remote one (s3://) is downloaded into
the launch's work folder a split at a time, in chunks (a split is never whole in memory), and removed when the
launcher ends. Split files are checked against the manifest's sha256 on the way, so a trainer never reads a file
that was changed after publishing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from workloads.dataset import (
    MANIFEST,
    DatasetCorrupt,
    DatasetManifest,
    DatasetNotFound,
    download_split,
    load_manifest,
)
from workloads.sdk.contract import TASKS
from workloads.store import ObjectStore, is_s3, join, local_path
from workloads.trainer.config import DatasetError


@dataclass(frozen=True)
class LocalDataset:
    """A dataset's manifest and the local folder holding ``manifest.json`` and its split files."""

    uri: str
    manifest: DatasetManifest
    folder: Path
    downloaded: bool


def open_dataset(uri: str, store: ObjectStore, work: Path) -> LocalDataset:
    """Read the manifest and make the files local; a missing or corrupt dataset is a :class:`DatasetError`.

    Other store errors (S3 unreachable) pass through: a retry may pass.
    """
    try:
        manifest = load_manifest(uri, store)
    except (DatasetNotFound, DatasetCorrupt) as exc:
        raise DatasetError(str(exc)) from exc
    if manifest.task not in TASKS:
        raise DatasetError(f"dataset {uri} has task {manifest.task!r}; expected one of {', '.join(TASKS)}")
    if manifest.task == "classification" and not manifest.class_names:
        raise DatasetError(f"manifest of {uri} declares no classes")
    if not is_s3(uri):
        folder = local_path(uri)
        missing = [s.file for s in manifest.splits.values() if not (folder / s.file).is_file()]
        if missing:
            raise DatasetError(f"dataset {uri} lists {', '.join(missing)} but the folder lacks them")
        return LocalDataset(uri, manifest, folder, downloaded=False)
    folder = work / "dataset"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).write_bytes(store.read_bytes(join(uri, MANIFEST)))
    for split in manifest.splits:
        try:  # in chunks to a file, checked against the manifest's sha256: never a whole split in memory
            download_split(uri, split, folder, store, manifest=manifest)
        except DatasetCorrupt as exc:
            raise DatasetError(str(exc)) from exc
    return LocalDataset(uri, manifest, folder, downloaded=True)
