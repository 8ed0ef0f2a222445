"""Batches of a prepared split streamed from its Parquet file one row group at a time, each rank its own share.

A split is never read whole: a loader holds one row group (32,768 rows as prepare writes them) plus one batch.
Every rank walks the same order (row groups shuffled, then the rows inside each, from a generator seeded with
``seed + epoch``, so :meth:`SplitLoader.set_epoch` plays ``DistributedSampler.set_epoch``'s part) and keeps the
rows at the positions ``rank, rank + world_size, ...`` of it. With ``pad`` (training) the order is padded from
its start to a multiple of ``world_size`` as ``DistributedSampler`` pads it, so every rank gets the same number
of batches (DDP needs that); without it (evaluation) each row is on exactly one rank, so sums over ranks count
each row once. The file's sha256 is checked against the manifest when the loader is made; the row groups are
read by ``workloads.dataset.SplitRowGroups``, the reader evaluation and the canary's replay share.

``order="global"`` (in memory; only for splits that fit) trades streaming for ``torch.utils.data``'s classic order,
the one gpuflow's built-in trainer has always trained in: the whole split is read once; epoch ``e`` shuffles with
the ``e``-th ``torch.randperm`` drawn from one generator seeded with ``seed`` (the generator is replayed, not
stored, so a resumed run gets the same batches without a saved state); ranks take ``DistributedSampler``'s cut of
it (:func:`~workloads.sdk.distributed.shard`), and without ``pad`` each rank a contiguous slice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from workloads.dataset import DatasetCorrupt, SplitRowGroups, rebatch
from workloads.sdk.distributed import shard, span
from workloads.sdk.errors import DatasetError

if TYPE_CHECKING:
    from workloads.dataset import DatasetManifest


class EpochOrder:
    """The classic training order of ``rows`` rows: epoch ``e`` (from 1) shuffles with the ``e``-th
    ``torch.randperm`` of one generator seeded with ``seed``. Replayed from the seed when an epoch is asked again
    or out of turn, so a resumed run needs no saved generator state (drawing epochs in turn costs one draw each)."""

    def __init__(self, rows: int, seed: int) -> None:
        self.rows, self.seed = rows, seed
        self._generator = torch.Generator()
        self._drawn = 0  # permutations drawn since the generator was seeded

    def permutation(self, epoch: int) -> torch.Tensor:
        """Epoch ``epoch``'s permutation of every row (epoch 0 is epoch 1's), the same in every process."""
        target = max(epoch, 1)
        if self._drawn == 0 or self._drawn >= target:
            self._generator.manual_seed(self.seed)
            self._drawn = 0
        order = torch.arange(0)
        while self._drawn < target:
            order = torch.randperm(self.rows, generator=self._generator)
            self._drawn += 1
        return order

    def share(self, epoch: int, rank: int, world_size: int, *, shuffle: bool = True, pad: bool = True) -> torch.Tensor:
        """One rank's indices: ``DistributedSampler``'s cut (:func:`~workloads.sdk.distributed.shard`) with
        ``pad``, else a contiguous slice (:func:`~workloads.sdk.distributed.span`), so each row is on one rank."""
        order = self.permutation(epoch) if shuffle else torch.arange(self.rows)
        if pad:
            return shard(order, rank, world_size)
        first, end = span(self.rows, rank, world_size)
        return order[first:end]


class SplitLoader:
    """``for x, y in loader``: x float32 ``[B, *input_shape]``, y int64 class indices (float32 regression targets)
    on ``device``; ``len(loader)`` is this rank's number of batches (the same on every rank when ``pad``)."""

    def __init__(
        self,
        dataset_dir: Path,
        manifest: DatasetManifest,
        split: str,
        batch_size: int,
        *,
        input_shape: tuple[int, ...],
        shuffle: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        pad: bool = True,
        drop_last: bool = False,
        device: torch.device | str = "cpu",
        on_batch: Callable[[str, int, int], None] | None = None,
        order: str = "stream",
    ) -> None:
        """``on_batch(split, epoch, index)`` is called as each batch is handed out (index from 1): where a rank
        is, should it fall behind (see :mod:`workloads.sdk.lag`). ``order`` is ``"stream"`` (row groups, the
        default) or ``"global"`` (in memory, one permutation of the whole split; see the module's docstring)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if order not in ("stream", "global"):
            raise ValueError(f"order must be 'stream' or 'global', got {order!r}")
        try:
            self.groups = SplitRowGroups.open(Path(dataset_dir), manifest, split)
        except DatasetCorrupt as exc:
            raise DatasetError(str(exc)) from exc
        self.path = self.groups.path
        self.manifest = manifest
        self.split, self.batch_size, self.input_shape = split, batch_size, input_shape
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0
        self.rank, self.world_size, self.pad, self.drop_last = rank, world_size, pad, drop_last
        self.device = torch.device(device)
        self.on_batch = on_batch
        self.group_rows, self.rows = self.groups.group_rows, self.groups.rows
        self._index: dict[object, int] = {v: i for i, v in enumerate(manifest.labels)}
        self.order = order
        self._whole: tuple[torch.Tensor, torch.Tensor] | None = None  # "global": the split, read once
        self._order = EpochOrder(self.rows, seed)

    def set_epoch(self, epoch: int) -> None:
        """Another order each epoch when shuffling (the same on every rank)."""
        self.epoch = epoch

    @property
    def rank_rows(self) -> int:
        """Rows this rank gets per epoch."""
        w, r, n = self.world_size, self.rank, self.rows
        if self.pad:
            return -(-n // w)
        first, end = span(n, r, w)
        return end - first if self.order == "global" else (n - r + w - 1) // w

    def __len__(self) -> int:
        rows = self.rank_rows
        return rows // self.batch_size if self.drop_last else -(-rows // self.batch_size)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole split on :attr:`device` (read once, then kept): what ``order="global"`` batches index into."""
        if self._whole is None:
            parts = [self._group(i) for i in range(len(self.group_rows))]
            x = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, 0), np.float32)
            y = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)
            self._whole = self._batch(x, y)
        return self._whole

    def indices(self) -> torch.Tensor:
        """``order="global"``: this rank's row indices for the current epoch, in the order they are batched."""
        return self._order.share(self.epoch, self.rank, self.world_size, shuffle=self.shuffle, pad=self.pad)

    def _group(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        try:
            x, raw = self.groups.arrays(index)
        except DatasetCorrupt as exc:
            raise DatasetError(str(exc)) from exc
        if self.manifest.task == "regression":
            return x, raw.astype(np.float32)
        values, inverse = np.unique(raw, return_inverse=True)
        try:
            lookup = np.array([self._index[v] for v in values.tolist()], dtype=np.int64)
        except KeyError as exc:
            label = exc.args[0]
            raise DatasetError(f"split {self.split!r} has label {label!r}, not in the manifest's classes") from None
        return x, lookup[inverse.reshape(-1)]

    def _rows(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """This rank's rows, one chunk per row group (then the padding)."""
        w, r = self.world_size, self.rank
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        groups = torch.randperm(len(self.group_rows), generator=generator).tolist() if self.shuffle else None
        order = groups if groups is not None else list(range(len(self.group_rows)))
        short = (-self.rows) % w if self.pad else 0  # positions padded at the end, taken from the start
        wanted = (r - self.rows) % w  # the padded position (as an offset from the start) that falls to this rank
        padding: tuple[np.ndarray, np.ndarray] | None = None
        position = 0
        for index in order:
            n = self.group_rows[index]
            rows = torch.randperm(n, generator=generator).numpy() if self.shuffle else np.arange(n)
            x, y = self._group(index)
            if short and wanted < short and padding is None and position <= wanted < position + n:
                at = rows[wanted - position]
                padding = (x[at : at + 1], y[at : at + 1])
            mine = rows[(r - position) % w :: w]
            position += n
            yield x[mine], y[mine]
        if padding is not None:
            yield padding

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.on_batch is None:
            yield from self._batches()
            return
        for index, batch in enumerate(self._batches(), start=1):
            self.on_batch(self.split, self.epoch, index)
            yield batch

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.order == "global":
            yield from self._global_batches()
            return
        for x, y in rebatch(self._rows(), self.batch_size):
            if len(x) < self.batch_size and self.drop_last:
                return
            yield self._batch(x, y)

    def _global_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        x, y = self.tensors()
        mine = self.indices()
        if not self.shuffle and not self.pad:  # a contiguous slice: views, no copy
            first = int(mine[0]) if len(mine) else 0
            for start in range(0, len(mine), self.batch_size):
                stop = min(start + self.batch_size, len(mine))
                if stop - start < self.batch_size and self.drop_last:
                    return
                yield x[first + start : first + stop], y[first + start : first + stop]
            return
        mine = mine.to(x.device)
        for start in range(0, len(mine), self.batch_size):
            idx = mine[start : start + self.batch_size]
            if len(idx) < self.batch_size and self.drop_last:
                return
            yield x[idx], y[idx]

    def _batch(self, x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        tx = torch.from_numpy(np.ascontiguousarray(x).reshape((x.shape[0], *self.input_shape)))
        ty = torch.from_numpy(np.ascontiguousarray(y))
        if self.device.type == "cpu":
            return tx, ty
        return tx.to(self.device, non_blocking=True), ty.to(self.device, non_blocking=True)
