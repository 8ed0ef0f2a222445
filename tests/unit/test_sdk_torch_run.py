"""TorchRun in one process: reports once per step, checkpoints that bring everything back, stops when it should."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tests.fixtures.datasets import write_digits_dataset
from workloads.sdk import TrainerContext, TrainerFailed
from workloads.sdk.pytorch import TorchRun


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    return write_digits_dataset(tmp_path_factory.mktemp("sdk-store"), limit=300)


@pytest.fixture(autouse=True)
def nondeterministic_after() -> Iterator[None]:
    yield
    torch.use_deterministic_algorithms(False)  # the switch is process-wide: leave it as other tests expect


def context(folder: Path, dataset: str, **hparams: object) -> TrainerContext:
    (folder / "ckpt").mkdir(exist_ok=True)
    return TrainerContext(
        dataset_dir=Path(dataset), metrics_file=folder / "metrics.jsonl", failure_file=folder / "failure",
        stop_file=folder / "stop", checkpoint_dir=folder / "ckpt", tracking_uri="", run_id="r",
        hparams={"seed": 3, **hparams}, dataset_uri=dataset,
    )  # fmt: skip


def lines(ctx: TrainerContext) -> list[dict]:
    return [json.loads(line) for line in ctx.metrics_file.read_text().splitlines()]


def start(ctx: TrainerContext, **options: object) -> tuple[TorchRun, nn.Module, torch.optim.Optimizer, object]:
    run = TorchRun(ctx, seed=3, environ={}, **options).__enter__()  # type: ignore[arg-type]
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    run.wrap(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    return run, model, optimizer, scheduler


def one_epoch(run: TorchRun, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: object) -> float:
    for x, y in run.loader("train", batch_size=32):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
    scheduler.step()  # type: ignore[attr-defined]
    return float(loss.detach())


def test_a_checkpoint_brings_back_weights_optimizer_scheduler_random_streams_and_step(
    tmp_path: Path, dataset: str
) -> None:
    ctx = context(tmp_path, dataset, epochs=2)
    run, model, optimizer, scheduler = start(ctx, deterministic=True)
    assert torch.are_deterministic_algorithms_enabled()
    assert run.resume(model, optimizer, scheduler) == 0
    loss = one_epoch(run, model, optimizer, scheduler)
    assert run.report(1, {"train_loss": loss, "val_accuracy": 0.5}, checkpoint=True) is False
    after = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    weights = {k: v.clone() for k, v in model.state_dict().items()}

    again, model2, optimizer2, scheduler2 = start(ctx)
    assert again.resume(model2, optimizer2, scheduler2) == 1
    assert all(torch.equal(weights[k], v) for k, v in model2.state_dict().items())
    assert scheduler2.get_last_lr() == scheduler.get_last_lr() == [0.005]  # type: ignore[attr-defined]
    assert optimizer2.state_dict()["state"][0]["step"] == optimizer.state_dict()["state"][0]["step"]
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == after
    # step 1's line again (a kill may have come before it was written); the launcher keeps the first of each
    assert [line["step"] for line in lines(ctx)] == [1, 1] and lines(ctx)[0]["checkpoint"] is True


def test_each_step_is_reported_once_in_increasing_order(tmp_path: Path, dataset: str) -> None:
    ctx = context(tmp_path, dataset)
    run, model, optimizer, _ = start(ctx)
    run.resume(model, optimizer)
    run.report(1, {"val_accuracy": 0.5})
    with pytest.raises(ValueError, match="step 1 comes after step 1: report each step once"):
        run.report(1, {"val_accuracy": 0.6})
    with pytest.raises(ValueError, match="metric 'val_accuracy' must be a number"):
        run.report(2, {"val_accuracy": "high"})
    assert [line["step"] for line in lines(ctx)] == [1]


def test_it_stops_on_a_plateau_of_the_primary_metric_or_when_the_launcher_asks(tmp_path: Path, dataset: str) -> None:
    ctx = context(tmp_path, dataset)
    run, model, optimizer, _ = start(ctx, patience=2)
    run.resume(model, optimizer)
    assert [run.report(step, {"val_accuracy": value}) for step, value in enumerate([0.5, 0.7, 0.7], 1)] == [
        False, False, False,
    ]  # fmt: skip
    assert run.report(4, {"val_accuracy": 0.69}) and run.stop_reason.startswith("plateau: val_accuracy")

    other = tmp_path / "other"
    other.mkdir()
    ctx = context(other, dataset)
    run, model, optimizer, _ = start(ctx)
    run.resume(model, optimizer)
    ctx.stop_file.write_text("plateau: val_accuracy has not improved for 5 reports\n")
    assert (
        run.report(1, {"val_accuracy": 0.5})
        and run.stop_reason == "plateau: val_accuracy has not improved for 5 reports"
    )


def test_another_settings_checkpoint_is_refused_with_both_values(tmp_path: Path, dataset: str) -> None:
    ctx = context(tmp_path, dataset, learning_rate=0.1)
    with TorchRun(ctx, environ={}) as run:
        model = nn.Linear(64, 10)
        run.resume(model)
        run.report(1, {"val_accuracy": 0.5}, checkpoint=True)
    changed = context(tmp_path, dataset, learning_rate=0.2)
    with pytest.raises(TrainerFailed) as failed, TorchRun(changed, environ={}) as run:
        run.resume(nn.Linear(64, 10))
    assert failed.value.exit_code == 2
    assert "made with learning_rate=0.1 (now 0.2); use a new training id" in changed.failure_file.read_text()
    with pytest.raises(TrainerFailed, match="2"), TorchRun(context(tmp_path, dataset), environ={"WORLD_SIZE": "2"}):
        pass
    assert "RANK must be a non-negative integer" in changed.failure_file.read_text()


@pytest.mark.parametrize("timeout", [0, -5.0, float("nan"), "60", True])
def test_a_rank_timeout_that_is_not_a_positive_number_is_a_configuration_error(
    tmp_path: Path, dataset: str, timeout: object
) -> None:
    ctx = context(tmp_path, dataset)
    with pytest.raises(TrainerFailed) as failed, TorchRun(ctx, environ={}, rank_timeout_seconds=timeout):  # type: ignore[arg-type]
        pass
    assert failed.value.exit_code == 2
    assert (
        ctx.failure_file.read_text() == f"rank_timeout_seconds must be a positive number of seconds, got {timeout!r}\n"
    )
