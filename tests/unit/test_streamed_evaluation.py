"""Evaluation and the canary's replay read the test split a Parquet row group at a time, with the figures of the
split read whole: a split written in several row groups (not a multiple of the scoring batch) scores exactly as
before, and the replay keeps only the rows a step sends."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

from tasks.core.errors import DataValidationError
from tasks.evaluation.model_loading import LoadedModel, ModelInput
from tasks.evaluation.scoring import BATCH_ROWS, open_test_split, read_test_split, score_loaded
from tasks.rollout.replay import MAX_REPLAY_ROWS, MIN_REPLAY_ROWS, read_replay_split, replay_rows
from workloads.dataset import open_split, read_split, rebatch
from workloads.store import ObjectStore

ROWS, GROUP, FEATURES = 10_000, 1_500, 6  # 7 row groups; 10,000 rows = 2 full scoring batches + 1,808
CLASSES = ["cat", "dog", "eel"]
TIMINGS = {"inference_ms_per_sample", "latency_p50_ms"}


def write_dataset(folder: Path, task: str) -> str:
    """A test split of ROWS rows in row groups of GROUP; feature 0 is the row's number. String classes are
    stored as indices (the labels models answer are the names); a regression target is a float."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(ROWS, FEATURES)).astype(np.float32)
    x[:, 0] = np.arange(ROWS)
    columns: dict[str, Any] = {f"f{j}": x[:, j] for j in range(FEATURES)}
    if task == "classification":
        columns["y"] = rng.integers(0, len(CLASSES), ROWS).astype(np.int64)
        target = {"name": "y", "type": "class", "classes": CLASSES, "stored": "index"}
    else:
        columns["y"] = x[:, 1].astype(np.float64) * 2 + rng.normal(size=ROWS)
        target = {"name": "y", "type": "float"}
    pq.write_table(pa.table(columns), folder / "test.parquet", row_group_size=GROUP)
    data = (folder / "test.parquet").read_bytes()
    entry = {"file": "test.parquet", "rows": ROWS, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    manifest = {
        "format": 2, "name": "rows", "version": "v1", "task": task, "target": target,
        "rows": {"test": ROWS}, "splits": {"test": entry},
        "schema": {"features": [f"f{j}" for j in range(FEATURES)], "label": "y",
                   "labels": list(range(len(CLASSES))) if task == "classification" else []},
    }  # fmt: skip
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder.as_uri()


class Recording(nn.Module):
    """A seeded linear model that records the rows of every batch it is called on."""

    def __init__(self, outputs: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(FEATURES, outputs)
        self.calls: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(int(x.shape[0]))
        return self.linear(x / 1000.0)


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_a_split_in_several_row_groups_scores_exactly_as_read_whole(tmp_path: Path, task: str) -> None:
    uri = write_dataset(tmp_path, task)
    with open_split(uri, "test") as groups:
        assert len(groups.group_rows) == 7  # the file really is in several row groups
    outputs, labels = (len(CLASSES), CLASSES) if task == "classification" else (1, [])
    whole_model, streamed_model = Recording(outputs), Recording(outputs)
    whole = score_loaded(
        LoadedModel("m", "pytorch", ModelInput(), module=whole_model), read_test_split(ObjectStore(), uri), labels, task
    )
    split = open_test_split(ObjectStore(), uri)
    streamed = score_loaded(LoadedModel("m", "pytorch", ModelInput(), module=streamed_model), split, labels, task)

    quality = {k: v for k, v in whole.metrics.items() if k not in TIMINGS}
    assert quality == {k: v for k, v in streamed.metrics.items() if k not in TIMINGS}  # exactly, not approx
    assert (whole.confusion, whole.actual, whole.predicted, whole.rows) == (
        streamed.confusion, streamed.actual, streamed.predicted, streamed.rows,
    )  # fmt: skip
    assert set(streamed.metrics) >= TIMINGS and streamed.rows == ROWS
    # more than one batch, each at most BATCH_ROWS rows: the same batches as the whole split's
    batched = [n for n in streamed_model.calls if n > 1]
    assert batched == [BATCH_ROWS, BATCH_ROWS, ROWS - 2 * BATCH_ROWS] == [n for n in whole_model.calls if n > 1]
    assert max(len(x) for x, _ in split.batches(BATCH_ROWS)) == BATCH_ROWS


def test_streamed_labels_are_the_class_names_in_row_order(tmp_path: Path) -> None:
    uri = write_dataset(tmp_path, "classification")
    whole = read_test_split(ObjectStore(), uri)
    pieces = list(open_test_split(ObjectStore(), uri).batches(1_000))
    assert [len(x) for x, _ in pieces] == [1_000] * 10
    assert np.array_equal(np.concatenate([x for x, _ in pieces]), whole.features)
    assert np.concatenate([y for _, y in pieces]).tolist() == whole.labels.tolist()
    assert set(whole.labels.tolist()) == set(CLASSES)


def test_a_changed_test_split_fails_before_any_model_is_scored(tmp_path: Path) -> None:
    uri = write_dataset(tmp_path, "regression")
    table = pq.read_table(tmp_path / "test.parquet")
    pq.write_table(table.slice(0, ROWS - 1), tmp_path / "test.parquet", row_group_size=GROUP)
    with pytest.raises(DataValidationError, match="does not match the sha256 its manifest records"):
        open_test_split(ObjectStore(), uri)


def test_rebatch_gives_the_batches_of_the_whole_array() -> None:
    whole = np.arange(23)
    chunks = [(whole[a:b], -whole[a:b]) for a, b in [(0, 4), (4, 5), (5, 5), (5, 17), (17, 23)]]
    got = list(rebatch(chunks, 5))
    assert [x.tolist() for x, _ in got] == [whole[i : i + 5].tolist() for i in range(0, 23, 5)]
    assert all(np.array_equal(y, -x) for x, y in got)


def test_the_replay_keeps_a_split_that_fits_whole_and_samples_a_larger_one_in_file_order(tmp_path: Path) -> None:
    uri = write_dataset(tmp_path, "regression")
    x, y = read_split(uri, "test")
    whole = read_replay_split(ObjectStore(), uri, "regression", [], max_rows=ROWS)
    assert np.array_equal(whole.features, x) and whole.labels == y.tolist()  # same rows, order and labels
    sample = read_replay_split(ObjectStore(), uri, "regression", [], max_rows=700)
    assert sample.rows == 700 and sample.split_rows == ROWS
    ids = sample.features[:, 0].astype(int)
    assert (np.diff(ids) > 0).all() and ids.min() < GROUP and ids.max() >= ROWS - GROUP  # file order, all groups
    assert np.array_equal(sample.features, x[ids]) and sample.labels == y[ids].tolist()
    again = read_replay_split(ObjectStore(), uri, "regression", [], max_rows=700)
    assert np.array_equal(again.features, sample.features)  # seeded: the same sample every time


def test_the_replay_keeps_one_steps_requests_but_a_small_split_whole() -> None:
    assert replay_rows(12_000) == 12_000  # 200 req/s x 60 s
    assert replay_rows(300) == MIN_REPLAY_ROWS  # a short window still replays a small split whole, as before
    assert replay_rows(720_000) == MAX_REPLAY_ROWS
