"""The trainer's checkpoint folder, mirrored to ``<checkpoint root>/<training id>/`` in the store.

Restored before the trainer starts (so a restarted pod resumes), mirrored after each metrics line with
``"checkpoint": true`` and when the trainer exits: new and changed files are uploaded, files the trainer
deleted are deleted in the store too (a trainer that keeps its newest three keeps three there). Files and
folders whose name starts with ``.`` are not synced: write a checkpoint to a hidden name and rename it into
place, and a half-written file is never uploaded. Changes are found by size and modification time, so an
unchanged file costs one ``stat``.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from workloads.store import ObjectStore, StoreError, is_s3, join, local_path, split_s3

Stamp = tuple[int, int]  # size, mtime in ns


def _visible(relative: str) -> bool:
    return not any(part.startswith(".") for part in relative.split("/"))


def list_tree(store: ObjectStore, uri: str) -> list[str]:
    """Every object under ``uri``, as paths relative to it (sub-folders included), sorted."""
    if is_s3(uri):
        bucket, key = split_s3(uri.rstrip("/") + "/")
        names: list[str] = []
        try:
            for page in store.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
                names.extend(obj["Key"][len(key) :] for obj in page.get("Contents", []))
        except Exception as exc:
            raise StoreError(f"could not list {uri}: {exc}") from exc
        return sorted(n for n in names if n and _visible(n))
    root = local_path(uri)
    if not root.is_dir():
        return []
    return sorted(
        rel for path in root.rglob("*") if path.is_file() and _visible(rel := path.relative_to(root).as_posix())
    )


class CheckpointSync:
    """Keeps ``uri`` in the store equal to the local ``folder`` at each :meth:`sync`."""

    def __init__(self, store: ObjectStore, uri: str, folder: Path) -> None:
        self.store = store
        self.uri = uri
        self.folder = folder
        self._synced: dict[str, Stamp] = {}

    def _scan(self) -> dict[str, Stamp]:
        found: dict[str, Stamp] = {}
        for path in self.folder.rglob("*"):
            rel = path.relative_to(self.folder).as_posix()
            if not _visible(rel):
                continue
            try:
                stat = path.stat()
            except FileNotFoundError:  # deleted while we looked
                continue
            if path.is_file():
                found[rel] = (stat.st_size, stat.st_mtime_ns)
        return found

    def restore(self) -> int:
        """Download what the store holds for this training into the (empty) folder; returns how many files."""
        self.folder.mkdir(parents=True, exist_ok=True)
        names = list_tree(self.store, self.uri)
        for name in names:
            target = self.folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self.store.read_bytes(join(self.uri, name)))
        self._synced = {name: stamp for name, stamp in self._scan().items() if name in names}
        return len(names)

    def sync(self) -> tuple[int, int]:
        """Upload new and changed files, delete removed ones; returns (uploaded, deleted)."""
        current = self._scan()
        uploaded = 0
        for name, stamp in current.items():
            if self._synced.get(name) == stamp:
                continue
            path = self.folder / name
            try:
                data = path.read_bytes()
                after = path.stat()
            except FileNotFoundError:
                continue
            self.store.write_bytes(join(self.uri, name), data)
            uploaded += 1
            if (after.st_size, after.st_mtime_ns) == stamp:  # else it changed while read: upload it again next time
                self._synced[name] = stamp
        gone = [name for name in self._synced if name not in current]
        for name in gone:
            self._delete(join(self.uri, name))
            del self._synced[name]
        return uploaded, len(gone)

    def _delete(self, uri: str) -> None:
        if is_s3(uri):
            bucket, key = split_s3(uri)
            try:
                self.store.s3.delete_object(Bucket=bucket, Key=key)
            except Exception as exc:
                raise StoreError(f"could not delete {uri}: {exc}") from exc
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(local_path(uri))
