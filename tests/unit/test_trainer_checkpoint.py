"""Checkpoints: atomic per-epoch files, newest complete one wins, only the last few are kept."""

from __future__ import annotations

from pathlib import Path

import torch

from workloads.sdk.checkpoint import Checkpoint, CheckpointStore
from workloads.store import ObjectStore


def make_checkpoint(epoch: int) -> Checkpoint:
    return Checkpoint(
        epoch=epoch,
        model_state={"w": torch.full((2, 2), float(epoch))},
        optimizer_state={"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]},
        rng={"torch": torch.get_rng_state(), "shuffle": torch.Generator().manual_seed(1).get_state()},
        metrics={"val_loss": 1.0 / epoch},
        hyper={"hidden_size": 8},
        dataset_uri="/data/digits/v1",
        training_seconds=epoch * 0.5,
    )


def test_round_trip_keeps_state_metrics_and_rng(tmp_path: Path) -> None:
    store = CheckpointStore(str(tmp_path / "ck"), ObjectStore())
    saved = make_checkpoint(3)
    store.save(saved)
    loaded = store.latest()
    assert loaded is not None
    assert loaded.epoch == 3
    assert torch.equal(loaded.model_state["w"], torch.full((2, 2), 3.0))
    assert loaded.metrics == {"val_loss": 1.0 / 3}
    assert torch.equal(loaded.rng["torch"], saved.rng["torch"])
    assert torch.equal(loaded.rng["shuffle"], saved.rng["shuffle"])
    assert loaded.training_seconds == 1.5


def test_only_the_newest_few_are_kept(tmp_path: Path) -> None:
    store = CheckpointStore(str(tmp_path / "ck"), ObjectStore(), keep=3)
    for epoch in range(1, 7):
        store.save(make_checkpoint(epoch))
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["epoch-0004.pt", "epoch-0005.pt", "epoch-0006.pt"]


def test_truncated_newest_checkpoint_is_skipped_with_a_warning(tmp_path: Path) -> None:
    warnings: list[str] = []
    store = CheckpointStore(str(tmp_path / "ck"), ObjectStore(), warn=warnings.append)
    store.save(make_checkpoint(1))
    store.save(make_checkpoint(2))
    newest = tmp_path / "ck" / "epoch-0002.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])

    loaded = store.latest()

    assert loaded is not None and loaded.epoch == 1
    assert len(warnings) == 1 and "epoch-0002.pt" in warnings[0]


def test_garbage_and_foreign_files_are_not_checkpoints(tmp_path: Path) -> None:
    folder = tmp_path / "ck"
    folder.mkdir()
    (folder / "epoch-0009.pt").write_bytes(b"not a checkpoint")
    (folder / "notes.txt").write_text("hello")
    warnings: list[str] = []
    assert CheckpointStore(str(folder), ObjectStore(), warn=warnings.append).latest() is None
    assert len(warnings) == 1


def test_no_folder_means_a_fresh_start(tmp_path: Path) -> None:
    assert CheckpointStore(str(tmp_path / "missing"), ObjectStore()).latest() is None
