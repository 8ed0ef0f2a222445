"""SplitLoader: a split streamed a Parquet row group at a time, each rank its own share (as two ranks would see it)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from workloads.dataset import DatasetManifest, load_manifest
from workloads.sdk.errors import DatasetError
from workloads.sdk.loaders import SplitLoader

ROWS, GROUP = 103, 20  # 6 row groups, the last of 3 rows; 103 rows do not split evenly over 2 or 4 ranks


def write_dataset(folder: Path, rows: int = ROWS, group: int = GROUP, task: str = "classification") -> DatasetManifest:
    """A 2-feature dataset whose feature ``row_id`` names each row, written in row groups of ``group`` rows."""
    ids = np.arange(rows, dtype=np.float32)
    label = (np.arange(rows) % 3).astype(np.int64) if task == "classification" else ids * 2.0
    table = pa.table({"row_id": ids, "other": -ids, "label": label})
    pq.write_table(table, folder / "train.parquet", row_group_size=group)
    data = (folder / "train.parquet").read_bytes()
    labels = [0, 1, 2] if task == "classification" else []
    entry = {"file": "train.parquet", "rows": rows, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    manifest = {
        "format": 2, "name": "rows", "version": "v1", "task": task, "rows": {"train": rows}, "splits": {"train": entry},
        "schema": {"features": ["row_id", "other"], "label": "label", "labels": labels},
    }  # fmt: skip
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return load_manifest(str(folder))


def loader(folder: Path, manifest: DatasetManifest, **kwargs: object) -> SplitLoader:
    options: dict = {"batch_size": 8, "input_shape": (2,), **kwargs}
    return SplitLoader(folder, manifest, "train", **options)


def row_ids(batches: SplitLoader) -> list[int]:
    return [int(v) for x, _ in batches for v in x[:, 0].tolist()]


def test_one_process_gets_every_row_once_in_file_order_without_shuffling(tmp_path: Path) -> None:
    manifest = write_dataset(tmp_path)
    batches = list(loader(tmp_path, manifest))
    assert [len(x) for x, _ in batches] == [8] * 12 + [7] and len(batches) == len(loader(tmp_path, manifest))
    x, y = batches[0]
    assert x.dtype == torch.float32 and x.shape == (8, 2) and y.dtype == torch.int64
    assert row_ids(loader(tmp_path, manifest)) == list(range(ROWS))
    assert y.tolist() == [0, 1, 2, 0, 1, 2, 0, 1]


@pytest.mark.parametrize("world", [2, 4])
def test_ranks_share_a_shuffled_epoch_padded_to_equal_batches(tmp_path: Path, world: int) -> None:
    manifest = write_dataset(tmp_path)
    ranks = [loader(tmp_path, manifest, shuffle=True, seed=7, rank=r, world_size=world) for r in range(world)]
    for each in ranks:
        each.set_epoch(3)
    shares = [row_ids(each) for each in ranks]
    per_rank = -(-ROWS // world)
    assert [len(share) for share in shares] == [per_rank] * world  # equal: DDP's ranks take the same steps
    assert len({len(each) for each in ranks}) == 1
    seen = [row for share in shares for row in share]
    assert sorted(set(seen)) == list(range(ROWS))  # every row, the padding repeats a few from the start
    assert len(seen) - ROWS == per_rank * world - ROWS
    again = loader(tmp_path, manifest, shuffle=True, seed=7, rank=0, world_size=world)
    again.set_epoch(3)
    assert row_ids(again) == shares[0]  # the same order for the same epoch, on any process
    again.set_epoch(4)
    assert row_ids(again) != shares[0]


def test_without_padding_each_row_is_on_exactly_one_rank(tmp_path: Path) -> None:
    manifest = write_dataset(tmp_path)
    shares = [row_ids(loader(tmp_path, manifest, rank=r, world_size=2, pad=False)) for r in range(2)]
    assert sorted(shares[0] + shares[1]) == list(range(ROWS))
    assert len(shares[0]) == 52 and len(shares[1]) == 51


def test_batches_take_the_declared_tensor_shape_and_regression_targets_stay_floats(tmp_path: Path) -> None:
    manifest = write_dataset(tmp_path, task="regression")
    x, y = next(iter(loader(tmp_path, manifest, input_shape=(1, 2, 1), drop_last=True)))
    assert x.shape == (8, 1, 2, 1) and y.dtype == torch.float32 and y.tolist() == [2.0 * i for i in range(8)]
    assert len(loader(tmp_path, manifest, drop_last=True)) == ROWS // 8


def test_a_changed_file_or_unknown_label_is_a_data_error(tmp_path: Path) -> None:
    manifest = write_dataset(tmp_path)
    table = pq.read_table(tmp_path / "train.parquet")
    pq.write_table(table.set_column(2, "label", pa.array(np.full(ROWS, 9, dtype=np.int64))), tmp_path / "train.parquet")
    with pytest.raises(DatasetError, match="does not match the sha256 its manifest records"):
        loader(tmp_path, manifest)
    no_checksum = {"train": {"file": "train.parquet", "rows": ROWS}}
    unchecked = DatasetManifest.from_dict({**manifest.to_dict(), "splits": no_checksum})
    with pytest.raises(DatasetError, match="label 9, not in the manifest's classes"):
        list(loader(tmp_path, unchecked))
    with pytest.raises(DatasetError, match="no split 'test'"):
        SplitLoader(tmp_path, manifest, "test", 8, input_shape=(2,))


@pytest.mark.parametrize("world", [1, 2, 4])
def test_global_order_is_the_classic_per_epoch_permutation_cut_as_distributed_sampler_cuts_it(
    tmp_path: Path, world: int
) -> None:
    """``order="global"``: epoch e trains in the e-th randperm of one seeded generator, each rank its sampler share."""
    manifest = write_dataset(tmp_path)
    shuffle = torch.Generator().manual_seed(7)
    classic = [torch.randperm(ROWS, generator=shuffle) for _ in range(3)]
    ranks = [
        loader(tmp_path, manifest, shuffle=True, seed=7, rank=r, world_size=world, order="global") for r in range(world)
    ]
    per_rank = -(-ROWS // world)
    for epoch, order in enumerate(classic, start=1):
        padded = order.repeat(2)[: per_rank * world]
        for rank, each in enumerate(ranks):
            each.set_epoch(epoch)
            assert row_ids(each) == padded[rank::world].tolist()
            assert len(each) == -(-per_rank // 8)
    resumed = loader(tmp_path, manifest, shuffle=True, seed=7, rank=world - 1, world_size=world, order="global")
    resumed.set_epoch(3)  # a restarted process, straight at epoch 3: no generator state needed
    assert row_ids(resumed) == row_ids(ranks[-1])
    resumed.set_epoch(2)  # an epoch again (a redone epoch) gives its order again
    assert row_ids(resumed) == classic[1].repeat(2)[: per_rank * world][world - 1 :: world].tolist()


def test_global_order_without_padding_gives_each_rank_a_contiguous_slice_of_every_row_once(tmp_path: Path) -> None:
    manifest = write_dataset(tmp_path, task="regression")
    shares = [row_ids(loader(tmp_path, manifest, rank=r, world_size=2, pad=False, order="global")) for r in range(2)]
    assert shares == [list(range(51)), list(range(51, ROWS))]
    every = loader(tmp_path, manifest, pad=False, order="global")
    x, y = every.tensors()
    assert x.shape == (ROWS, 2) and y.dtype == torch.float32 and y.tolist() == [2.0 * i for i in range(ROWS)]
    with pytest.raises(ValueError, match="order must be 'stream' or 'global', got 'random'"):
        loader(tmp_path, manifest, order="random")
