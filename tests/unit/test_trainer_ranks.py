"""Distributed training's pure parts: torchrun's environment, the data shards, exit codes, telemetry devices."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DistributedSampler, TensorDataset

from tests.fixtures.datasets import write_digits_dataset
from workloads.sdk.checkpoint import Checkpoint, CheckpointStore
from workloads.sdk.distributed import Comm, shard
from workloads.store import ObjectStore, StoreError
from workloads.trainer.config import ConfigError, GroupError, Hyperparameters, Ranks, parse_config, parse_ranks
from workloads.trainer.data import load_training_data
from workloads.trainer.launch import group_exit_code
from workloads.trainer.loop import Trainer
from workloads.trainer.telemetry import own_device_environ

TORCHRUN = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "MASTER_ADDR": "job-0.job", "MASTER_PORT": "29500"}
ENV = {"MLFLOW_TRACKING_URI": "sqlite:///x.db", "MLFLOW_RUN_ID": "abc", "GPUFLOW_STORE_URI": "/store"}


def test_no_torchrun_environment_is_a_single_process() -> None:
    assert parse_ranks({}) == Ranks()
    assert parse_ranks({**TORCHRUN, "WORLD_SIZE": "1", "RANK": "0"}) == Ranks()  # torchrun with one process
    assert not Ranks().distributed and Ranks().is_main


def test_torchrun_environment_gives_rank_local_rank_world_and_timeout() -> None:
    ranks = parse_config(["--dataset-uri", "/d", "--training-id", "t"], {**ENV, **TORCHRUN}).ranks
    assert ranks == Ranks(rank=3, local_rank=1, world_size=4, timeout_s=600.0)
    assert ranks.distributed and not ranks.is_main
    assert parse_ranks({**TORCHRUN, "GPUFLOW_DIST_TIMEOUT_SECONDS": "90"}).timeout_s == 90.0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"RANK": "4"}, "RANK must be below WORLD_SIZE=4, got 4"),
        ({"LOCAL_RANK": "one"}, "LOCAL_RANK must be a non-negative integer under torchrun"),
        ({"MASTER_ADDR": ""}, "MASTER_ADDR is not set"),
        ({"GPUFLOW_DIST_TIMEOUT_SECONDS": "0"}, "GPUFLOW_DIST_TIMEOUT_SECONDS must be a positive number"),
        ({"GPUFLOW_DIST_TIMEOUT_SECONDS": "soon"}, "GPUFLOW_DIST_TIMEOUT_SECONDS must be a number of seconds"),
    ],
)
def test_broken_torchrun_environment_is_a_config_error(change: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_ranks({**TORCHRUN, **change})


@pytest.mark.parametrize(("n", "world"), [(10, 2), (11, 2), (1257, 4), (3, 5)])
def test_shards_cut_a_permutation_as_distributed_sampler_does(n: int, world: int) -> None:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(n))
    shards = [shard(order, rank, world) for rank in range(world)]
    rows = TensorDataset(torch.arange(n))
    for rank, part in enumerate(shards):
        sampler: DistributedSampler[int] = DistributedSampler(rows, num_replicas=world, rank=rank, shuffle=False)
        assert part.tolist() == [int(order[i]) for i in sampler]
    assert len({len(part) for part in shards}) == 1  # same number of batches on every rank
    assert set(torch.cat(shards).tolist()) == set(range(n))


def test_single_process_comm_is_the_identity() -> None:
    comm = Comm(Ranks(), torch.device("cpu"))
    with comm:
        assert comm.sum([1.5, 2]) == [1.5, 2.0]
        assert comm.broadcast([3]) == [3]
        assert comm.gather("x") == ["x"]
        assert comm.agree(0) == 0
        with pytest.raises(ConfigError), comm.together("testing"):
            raise ConfigError("bad")


@pytest.mark.parametrize(
    ("codes", "expected"),
    [
        ([3, -15], 3),  # the trainer's own code beats torchrun's SIGTERM of the survivor
        ([1, 2], 2),  # a permanent code is not hidden by a peer's 1
        ([-15, -9], 137),  # killed (e.g. out of memory), then the rest stopped
        ([-15], 143),
        ([], 1),
    ],
)
def test_launcher_ends_with_the_workers_own_code(codes: list[int], expected: int) -> None:
    assert group_exit_code(codes) == expected


def test_group_error_carries_the_failing_rank_code() -> None:
    assert GroupError("another rank failed", 3).exit_code == 3


@pytest.mark.parametrize(
    ("visible", "local_rank", "expected"),
    [(None, 1, "1"), ("2,3", 1, "3"), ("GPU-aa, GPU-bb", 0, "GPU-aa"), ("0", 2, "0")],
)
def test_each_rank_samples_only_its_own_gpu(visible: str | None, local_rank: int, expected: str) -> None:
    environ = {"PATH": "/bin"} if visible is None else {"PATH": "/bin", "CUDA_VISIBLE_DEVICES": visible}
    narrowed = own_device_environ(environ, local_rank)
    assert narrowed["CUDA_VISIBLE_DEVICES"] == expected and narrowed["PATH"] == "/bin"


def test_a_distributed_checkpoint_resumes_a_single_process(tmp_path: Path) -> None:
    """The format is shared: rank 0 adds every rank's RNG and the world size, a single process ignores them."""
    torch.set_num_threads(1)
    store = ObjectStore()
    data = load_training_data(write_digits_dataset(tmp_path / "store", limit=300), store)
    hyper = Hyperparameters(epochs=2, batch_size=32, learning_rate=3e-3, hidden_size=16, dropout=0.1, seed=1)
    trainer = Trainer(data, hyper, torch.device("cpu"))
    result = trainer.run_epoch()
    made = trainer.checkpoint(result.metrics(), data.uri)
    made.rng["ranks"] = [{"torch": torch.get_rng_state()}, {"torch": torch.get_rng_state()}]
    made.extra["world_size"] = 2
    checkpoints = CheckpointStore(str(tmp_path / "checkpoints"), store)
    checkpoints.save(made)

    loaded = checkpoints.load(1)
    assert loaded.extra == {"world_size": 2} and len(loaded.rng["ranks"]) == 2
    again = Trainer(data, hyper, torch.device("cpu"))
    again.restore(loaded)
    assert again.run_epoch().epoch == 2


def test_other_ranks_refuse_a_checkpoint_that_is_not_the_one_rank_0_chose(tmp_path: Path) -> None:
    checkpoints = CheckpointStore(str(tmp_path), ObjectStore())
    with pytest.raises(StoreError):
        checkpoints.load(3)  # not in this store: a node that does not share it
    moved = Checkpoint(1, {}, {}, {}, {}, {}, "/d")
    (tmp_path / "epoch-0005.pt").write_bytes(moved.to_bytes())
    with pytest.raises(ValueError, match="holds epoch 1"):
        checkpoints.load(5)
