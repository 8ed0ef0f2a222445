"""Per-epoch checkpoints in the data store, so a killed trainer resumes instead of starting over.

Layout: ``<checkpoint uri>/epoch-0003.pt`` (``torch.save`` of plain tensors and containers, loaded with
``weights_only=True``). Each holds model and optimizer state, the epoch, the RNG states (so a resumed run
continues the same random sequence) and the epoch's metrics. Writes are atomic; a newest file that
still fails to load (truncated, corrupt) is skipped with a warning and the one before it is used.
Only the newest ``keep`` checkpoints are kept. A distributed training writes the same format (rank 0 writes;
``rng["ranks"]`` and ``extra["world_size"]`` are added), so either kind of run resumes from the other's files.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from workloads.store import ObjectStore, StoreError, is_s3, join, local_path, split_s3

FORMAT = "gpuflow.checkpoint/1"
_NAME = re.compile(r"^epoch-(\d{4,})\.pt$")


def checkpoint_name(epoch: int) -> str:
    return f"epoch-{epoch:04d}.pt"


@dataclass
class Checkpoint:
    """The state after ``epoch`` completed epochs."""

    epoch: int
    model_state: dict[str, Any]
    optimizer_state: dict[str, Any]
    rng: dict[str, Any]
    metrics: dict[str, float]
    hyper: dict[str, Any]
    dataset_uri: str
    training_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        torch.save(
            {
                "format": FORMAT,
                "epoch": self.epoch,
                "model": self.model_state,
                "optimizer": self.optimizer_state,
                "rng": self.rng,
                "metrics": self.metrics,
                "hyper": self.hyper,
                "dataset_uri": self.dataset_uri,
                "training_seconds": self.training_seconds,
                "extra": self.extra,
            },
            buffer,
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Checkpoint:
        """Parse a checkpoint; raises ``ValueError`` when the bytes are not a complete one."""
        try:
            raw = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated zip, bad pickle, ...: all mean "not usable"
            raise ValueError(f"not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} checkpoint")
        try:
            return cls(
                epoch=int(raw["epoch"]),
                model_state=raw["model"],
                optimizer_state=raw["optimizer"],
                rng=raw["rng"],
                metrics={k: float(v) for k, v in raw["metrics"].items()},
                hyper=dict(raw["hyper"]),
                dataset_uri=str(raw["dataset_uri"]),
                training_seconds=float(raw.get("training_seconds", 0.0)),
                extra=dict(raw.get("extra", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"checkpoint lacks {exc}") from exc


class CheckpointStore:
    """The checkpoints of one training id under one URI."""

    def __init__(self, uri: str, store: ObjectStore, *, keep: int = 3, warn: Callable[[str], None] = print) -> None:
        self.uri = uri.rstrip("/")
        self.store = store
        self.keep = keep
        self.warn = warn

    def epochs(self) -> list[int]:
        """Epochs that have a checkpoint file, oldest first (complete or not)."""
        found = []
        for name in self.store.list(self.uri):
            match = _NAME.match(name)
            if match:
                found.append(int(match.group(1)))
        return sorted(found)

    def save(self, checkpoint: Checkpoint) -> str:
        """Write atomically, then drop all but the newest ``keep``; returns the checkpoint's URI."""
        uri = join(self.uri, checkpoint_name(checkpoint.epoch))
        self.store.write_bytes(uri, checkpoint.to_bytes())
        for old in self.epochs()[: -self.keep]:
            self._delete(join(self.uri, checkpoint_name(old)))
        return uri

    def load(self, epoch: int) -> Checkpoint:
        """The checkpoint of ``epoch``; raises ``ValueError`` or ``StoreError`` when it is missing or broken.

        Distributed ranks load the epoch rank 0 chose with :meth:`latest`, so all restore the same state.
        """
        uri = join(self.uri, checkpoint_name(epoch))
        checkpoint = Checkpoint.from_bytes(self.store.read_bytes(uri))
        if checkpoint.epoch != epoch:
            raise ValueError(f"{uri} holds epoch {checkpoint.epoch}")
        return checkpoint

    def latest(self) -> Checkpoint | None:
        """The newest checkpoint that loads; broken newer ones are reported and skipped."""
        for epoch in reversed(self.epochs()):
            uri = join(self.uri, checkpoint_name(epoch))
            try:
                checkpoint = Checkpoint.from_bytes(self.store.read_bytes(uri))
            except (ValueError, StoreError) as exc:
                self.warn(f"warning: skipping checkpoint {uri}: {exc}")
                continue
            if checkpoint.epoch != epoch:
                self.warn(f"warning: skipping checkpoint {uri}: it holds epoch {checkpoint.epoch}")
                continue
            return checkpoint
        return None

    def _delete(self, uri: str) -> None:
        # ObjectStore has no single-object delete yet; pruning is best effort either way.
        try:
            if is_s3(uri):
                bucket, key = split_s3(uri)
                self.store.s3.delete_object(Bucket=bucket, Key=key)
            else:
                local_path(uri).unlink(missing_ok=True)
        except Exception as exc:
            self.warn(f"warning: could not delete old checkpoint {uri}: {exc}")
