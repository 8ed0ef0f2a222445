"""The training loop: learns digits, is deterministic per seed, and resumes exactly where it stopped."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.fixtures.datasets import write_digits_dataset
from workloads.sdk.checkpoint import Checkpoint
from workloads.store import ObjectStore
from workloads.trainer.config import DatasetError, Hyperparameters
from workloads.trainer.data import TrainingData, load_training_data
from workloads.trainer.loop import Trainer

HYPER = Hyperparameters(epochs=4, batch_size=64, learning_rate=3e-3, hidden_size=32, dropout=0.1, seed=7)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> TrainingData:
    torch.set_num_threads(1)
    uri = write_digits_dataset(tmp_path_factory.mktemp("store"))
    return load_training_data(uri, ObjectStore())


def test_learns_digits_in_a_few_epochs(digits: TrainingData) -> None:
    trainer = Trainer(digits, HYPER, CPU)
    results = [trainer.run_epoch() for _ in range(HYPER.epochs)]
    assert [r.epoch for r in results] == [1, 2, 3, 4]
    assert results[-1].validation["val_accuracy"] > 0.9
    assert results[-1].train_loss < results[0].train_loss


def test_same_seed_gives_the_same_model(digits: TrainingData) -> None:
    def two_epochs() -> list[float]:  # one trainer at a time, as in a process: dropout uses torch's global RNG
        trainer = Trainer(digits, HYPER, CPU)
        return [trainer.run_epoch().validation["val_loss"] for _ in range(2)]

    assert two_epochs() == two_epochs()


def test_resumed_training_matches_an_uninterrupted_one(digits: TrainingData) -> None:
    straight = Trainer(digits, HYPER, CPU)
    expected = [straight.run_epoch() for _ in range(4)]

    first = Trainer(digits, HYPER, CPU)
    result = None
    for _ in range(2):
        result = first.run_epoch()
    assert result is not None
    saved = Checkpoint.from_bytes(first.checkpoint(result.metrics(), digits.uri).to_bytes())
    torch.manual_seed(12345)  # a restarted process starts from another random state
    second = Trainer(digits, HYPER, CPU)
    second.restore(saved)
    resumed = [second.run_epoch() for _ in range(2)]

    assert [r.epoch for r in resumed] == [3, 4]
    assert [r.validation["val_loss"] for r in resumed] == [r.validation["val_loss"] for r in expected[2:]]
    assert [r.train_loss for r in resumed] == [r.train_loss for r in expected[2:]]


def test_model_takes_raw_features(digits: TrainingData) -> None:
    trainer = Trainer(digits, HYPER, CPU)
    for _ in range(3):
        trainer.run_epoch()
    model = trainer.model.eval()
    with torch.no_grad():
        logits = model(digits.val.x)  # pixel values 0..16, not standardised by the caller
    assert logits.shape == (len(digits.val), len(digits.labels))
    accuracy = (logits.argmax(dim=1) == digits.val.y).float().mean().item()
    assert accuracy > 0.9


def test_missing_dataset_is_a_dataset_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no prepared dataset"):
        load_training_data(str(tmp_path / "nothing"), ObjectStore())


@pytest.fixture(scope="module")
def diabetes(tmp_path_factory: pytest.TempPathFactory) -> TrainingData:
    from tests.fixtures.spec_data import diabetes_csv, diabetes_spec, publish_by_spec

    folder = tmp_path_factory.mktemp("diabetes")
    uri = publish_by_spec(folder / "store", diabetes_csv(folder), diabetes_spec(), "diabetes")
    return load_training_data(uri, ObjectStore())


def test_a_regression_target_trains_a_regressor_that_beats_the_mean(diabetes: TrainingData) -> None:
    assert diabetes.task == "regression" and diabetes.labels == [] and diabetes.train.y.dtype == torch.float32
    hyper = Hyperparameters(epochs=12, batch_size=32, learning_rate=1e-3, hidden_size=32, dropout=0.0, seed=7)
    trainer = Trainer(diabetes, hyper, CPU)
    results = [trainer.run_epoch() for _ in range(hyper.epochs)]
    assert set(results[-1].metrics()) == {
        "train_loss", "val_loss", "val_rmse", "val_mae", "epoch_seconds", "samples_per_second",
    }  # fmt: skip
    spread = float(diabetes.val.y.std())  # the RMSE of always answering the mean
    assert results[-1].validation["val_rmse"] < 0.85 * spread
    assert "val_rmse=" in results[-1].progress_line(hyper.epochs)
    model = trainer.model.eval()
    with torch.no_grad():
        values = model(diabetes.val.x)  # raw features in, the target's own units out
    assert values.shape == (len(diabetes.val), 1)
    rmse = float(((values.squeeze(1) - diabetes.val.y) ** 2).mean().sqrt())
    assert rmse == pytest.approx(results[-1].validation["val_rmse"], rel=1e-4)


def test_regression_training_is_deterministic_for_a_seed(diabetes: TrainingData) -> None:
    hyper = Hyperparameters(epochs=2, batch_size=32, learning_rate=3e-3, hidden_size=16, dropout=0.1, seed=3)

    def losses() -> list[float]:
        trainer = Trainer(diabetes, hyper, CPU)
        return [trainer.run_epoch().validation["val_rmse"] for _ in range(2)]

    assert losses() == losses()
