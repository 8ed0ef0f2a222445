"""The trainer under torchrun: 2 gloo processes on CPU train one model, logged once, as the Kubernetes pods run it.

Each test starts real torchrun processes (``--standalone`` for one node; two invocations with the same
``--master-addr``/``--master-port`` and ``--node-rank`` 0/1 for two nodes, exactly the pods' command line) on the
digits dataset and reads back what a user would see: exit codes, stdout lines, the MLflow run and its model.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import mlflow.pytorch
import pytest
import torch
from mlflow import MlflowClient

from tests.conftest import ROOT, free_port
from tests.fixtures.datasets import write_digits_dataset
from tests.fixtures.fake_nvml.script import Device, Script, Step
from tests.fixtures.flow_env import mlflow_db_template, sqlite_run  # noqa: F401
from tests.fixtures.nodes import kill_node
from workloads.dataset import read_split

pytest_plugins = ("tests.fixtures.fake_nvml.plugin",)

METRICS = ("train_loss", "val_loss", "val_accuracy", "epoch_seconds", "samples_per_second")
TRAIN = ("--hidden-size", "64", "--learning-rate", "0.01", "--batch-size", "32", "--seed", "5")
# Wide and small-batched: epochs last long enough to kill the group inside the next one.
SLOW = ("--hidden-size", "256", "--learning-rate", "0.003", "--batch-size", "8", "--seed", "5", "--dropout", "0.1")


@dataclass(frozen=True)
class Setup:
    dataset_uri: str
    store: Path
    tracking_uri: str
    experiment_id: str
    run_id: str
    scratch: Path  # the nodes' TMPDIR, as a pod has a /tmp of its own: torchrun's torchelastic_* logs go there

    def env(self, run_id: str | None = None) -> dict[str, str]:
        return {
            **os.environ,
            "TMPDIR": str(self.scratch),
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            "MLFLOW_RUN_ID": run_id or self.run_id,
            "GPUFLOW_STORE_URI": str(self.store),
            "GPUFLOW_TORCH_THREADS": "1",
            "OMP_NUM_THREADS": "1",
            "GPUFLOW_DIST_TIMEOUT_SECONDS": "60",  # a broken test fails in a minute, not ten
        }

    def command(self, launcher: Sequence[str], *args: str, training_id: str = "dist-1") -> list[str]:
        return [
            sys.executable, "-m", *launcher, "-m", "workloads.trainer", "--dataset-uri", self.dataset_uri,
            "--training-id", training_id, "--device", "cpu", *args,
        ]  # fmt: skip

    def client(self) -> MlflowClient:
        return MlflowClient(self.tracking_uri)

    def steps(self, key: str, run_id: str | None = None) -> list[int]:
        return sorted(m.step for m in self.client().get_metric_history(run_id or self.run_id, key))


def standalone(processes: int = 2) -> list[str]:
    return ["torch.distributed.run", "--standalone", "--nnodes=1", f"--nproc-per-node={processes}"]


def node(rank: int, port: int, module: str = "torch.distributed.run") -> list[str]:
    """One pod's torchrun: 2 nodes of 1 process, rendezvous at node 0 (static, as the Indexed Job does it)."""
    return [
        module, "--nnodes=2", "--nproc-per-node=1", f"--node-rank={rank}",
        "--master-addr=127.0.0.1", f"--master-port={port}",
    ]  # fmt: skip


@pytest.fixture
def setup(tmp_path: Path, mlflow_db_template: Path) -> Setup:  # noqa: F811
    store = tmp_path / "store"
    uri = write_digits_dataset(store)
    tracking_uri, experiment, run_id = sqlite_run(tmp_path, mlflow_db_template, "distributed")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    return Setup(
        dataset_uri=uri,
        store=store,
        tracking_uri=tracking_uri,
        experiment_id=experiment,
        run_id=run_id,
        scratch=scratch,
    )


def run(setup: Setup, command: list[str], timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, env=setup.env(), capture_output=True, text=True, timeout=timeout)


def start_two_nodes(
    setup: Setup, port: int, *trainer_args: str, cleanup: list[subprocess.Popen[str]]
) -> list[subprocess.Popen[str]]:
    """Node ranks 0 and 1 as two torchrun invocations meeting at 127.0.0.1:port, as two Job pods would; added to
    ``cleanup`` (the nodes_left fixture)."""
    procs = [
        subprocess.Popen(
            setup.command(node(rank, port), *trainer_args),
            cwd=ROOT,
            env=setup.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    cleanup.extend(procs)
    return procs


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:") or "Traceback" in line]


def model_accuracy(setup: Setup, model_uri: str, monkeypatch: pytest.MonkeyPatch) -> float:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", setup.tracking_uri)
    model = mlflow.pytorch.load_model(model_uri, dst_path=str(setup.scratch))
    x, y = read_split(setup.dataset_uri, "val")
    with torch.no_grad():
        return float((model(torch.tensor(x)).argmax(dim=1) == torch.tensor(y)).float().mean().item())


def assert_one_model(setup: Setup, epochs: int) -> str:
    """One run in the experiment, every epoch logged once, one logged model; returns its URI."""
    client = setup.client()
    assert [r.info.run_id for r in client.search_runs([setup.experiment_id])] == [setup.run_id]
    for key in METRICS:
        assert setup.steps(key) == list(range(1, epochs + 1)), key
    assert len(client.search_logged_models(experiment_ids=[setup.experiment_id])) == 1
    return str(client.get_run(setup.run_id).data.tags["gpuflow.model_uri"])


def test_two_processes_train_one_model_that_rank_0_logs_once(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    done = run(setup, setup.command(standalone(), "--epochs", "2", *TRAIN))

    assert done.returncode == 0, done.stderr
    assert errors(done.stderr) == []
    lines = done.stdout.splitlines()
    assert "training dist-1 on cpu (rank 0 of 2, gloo): 1257 train / 270 val rows" in lines[0]
    assert [line.split()[1] for line in lines if line.startswith("epoch ")] == ["1/2", "2/2"]
    # Rank 1 took part: one short line per epoch, its half of the 1257 rows (padded to 629 like DistributedSampler).
    assert [line for line in lines if line.startswith("[rank 1]")] == [
        "[rank 1] epoch 1/2: 629 samples",
        "[rank 1] epoch 2/2: 629 samples",
    ]
    assert sum(line.startswith("logged model ") for line in lines) == 1
    model_uri = assert_one_model(setup, epochs=2)
    run_data = setup.client().get_run(setup.run_id).data
    assert run_data.params["world_size"] == "2" and run_data.params["global_batch_size"] == "64"
    assert run_data.tags["gpuflow.stop_reason"] == "completed: ran all 2 epochs"
    assert run_data.metrics["val_accuracy"] > 0.85
    # Validation is split across the ranks and summed: the logged accuracy is the model's on the whole split.
    assert model_accuracy(setup, model_uri, monkeypatch) == pytest.approx(run_data.metrics["val_accuracy"])
    assert sorted(p.name for p in (setup.store / "checkpoints" / "dist-1").iterdir()) == [
        "epoch-0001.pt",
        "epoch-0002.pt",
    ]


def test_killed_group_resumes_from_rank_0_checkpoint_into_the_same_run(setup: Setup) -> None:
    epochs = 3
    args = ("--epochs", str(epochs), *SLOW)
    first = subprocess.Popen(
        setup.command(standalone(), *args),
        cwd=ROOT,
        env=setup.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert first.stdout is not None
    seen: list[str] = []
    for line in first.stdout:
        seen.append(line.rstrip())
        if line.startswith(f"epoch 1/{epochs} "):  # rank 0 prints it after the checkpoint and the metrics
            kill_node(first)
            break
    assert first.returncode == -signal.SIGKILL, seen
    saved = sorted(p.name for p in (setup.store / "checkpoints" / "dist-1").iterdir() if p.name.endswith(".pt"))
    done = int(saved[-1][len("epoch-") : -len(".pt")])
    assert 1 <= done < epochs, saved

    second = run(setup, setup.command(standalone(), *args))

    assert second.returncode == 0, second.stderr
    assert errors(second.stderr) == []
    assert f"resuming after epoch {done}" in second.stdout
    later = [f"{e}/{epochs}" for e in range(done + 1, epochs + 1)]
    assert [line.split()[1] for line in second.stdout.splitlines() if line.startswith("epoch ")] == later
    assert [line.split()[3][:-1] for line in second.stdout.splitlines() if line.startswith("[rank 1]")] == later
    assert_one_model(setup, epochs)
    assert setup.client().get_run(setup.run_id).data.tags["gpuflow.resumed_from_epoch"] == str(done)

    # Every rank restored its own state (weights, optimizer, shuffle, its dropout stream): the resumed epochs
    # match an uninterrupted run of the same settings exactly.
    client = setup.client()
    straight = client.create_run(setup.experiment_id).info.run_id
    whole = subprocess.run(
        setup.command(standalone(), *args, training_id="dist-straight"),
        cwd=ROOT,
        env=setup.env(straight),
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert whole.returncode == 0, whole.stderr
    for key in ("train_loss", "val_loss", "val_accuracy"):
        resumed = [m.value for m in sorted(client.get_metric_history(setup.run_id, key), key=lambda m: m.step)]
        expected = [m.value for m in sorted(client.get_metric_history(straight, key), key=lambda m: m.step)]
        assert resumed == expected, key


def test_two_nodes_rendezvous_at_node_0_and_both_exit_0(setup: Setup, nodes_left: list[subprocess.Popen[str]]) -> None:
    port = free_port()
    nodes = start_two_nodes(setup, port, "--epochs", "1", *TRAIN, cleanup=nodes_left)
    outputs = [proc.communicate(timeout=90) for proc in nodes]

    assert [proc.returncode for proc in nodes] == [0, 0], [err for _, err in outputs]
    (out0, _), (out1, _) = outputs
    assert "(rank 0 of 2, gloo)" in out0 and "epoch 1/1 " in out0 and "logged model " in out0
    assert out1.splitlines() == ["[rank 1] epoch 1/1: 629 samples"]  # node 1 says little and logs nothing
    assert_one_model(setup, epochs=1)


def test_a_lost_node_ends_the_other_instead_of_hanging(setup: Setup, nodes_left: list[subprocess.Popen[str]]) -> None:
    port = free_port()
    procs = start_two_nodes(setup, port, "--epochs", "20", *SLOW, cleanup=nodes_left)
    survivor, lost = procs
    assert lost.stdout is not None
    for line in lost.stdout:
        if line.startswith("[rank 1] epoch 1/"):
            kill_node(lost)  # the node's pod is gone, torchrun and worker with it
            break
    started = time.monotonic()
    _, err = survivor.communicate(timeout=60)

    assert survivor.returncode == 1
    assert time.monotonic() - started < 30  # a dead peer breaks the next collective, long before the timeout
    assert "error: [rank 0] lost contact with the other ranks" in err


def test_a_permanent_error_ends_every_rank_and_the_launcher_with_its_code(setup: Setup) -> None:
    missing = setup.command(["workloads.trainer.launch", *standalone()[1:]], "--epochs", "1")
    missing[missing.index("--dataset-uri") + 1] = str(setup.store / "datasets" / "nothing" / "v1")

    done = run(setup, missing)

    assert done.returncode == 3  # plain torchrun would end with 1, hiding that no retry can help
    lines = errors(done.stderr)
    assert any("no prepared dataset" in line for line in lines)
    # Once the first rank has ended, torchrun may SIGTERM the other before it says so itself (CI saw it).
    ended = re.fullmatch(
        r"error: training group failed \(rank 0 exited (3|-15), rank 1 exited (3|-15)\); exit 3", lines[-1]
    )
    assert ended is not None and "3" in ended.groups(), lines[-1]
    # One clear message: torchrun's own log lines ("W... Sending process ... closing signal", "E... failed
    # (exitcode: 3)") say nothing the launcher's last line does not.
    assert "torch/distributed/elastic" not in done.stderr, done.stderr


def test_each_rank_samples_its_own_gpu_and_rank_0_logs_its_figures(
    setup: Setup, fake_nvml_lib: Path, tmp_path: Path
) -> None:
    # Two fake H100s told apart by their load: rank 0 trains on (and must sample only) the first.
    gpus = [Device(steps=[Step(util=73, mem=3 * 2**30, power_mw=180_000)]), Device(steps=[Step(util=20)])]
    script = Script(devices=gpus).write(tmp_path / "two-gpus.txt")
    env = {**setup.env(), "LD_LIBRARY_PATH": str(fake_nvml_lib), "FAKE_NVML_SCRIPT": str(script)}
    env["GPUFLOW_TELEMETRY_INTERVAL"] = "0.1"

    done = subprocess.run(
        setup.command(standalone(), "--epochs", "1", *TRAIN),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )

    assert done.returncode == 0, done.stderr
    metrics = setup.client().get_run(setup.run_id).data.metrics
    assert metrics["gpu.gpuflow_gpu_count"] == metrics["epoch_gpu.gpuflow_gpu_count"] == 1.0
    assert metrics["gpu.DCGM_FI_DEV_GPU_UTIL_mean"] == 73.0  # rank 0's device alone, not the mean of both
    summary = Path(setup.client().download_artifacts(setup.run_id, "telemetry/summary.json", str(tmp_path)))
    ranks = json.loads(summary.read_text())["ranks"]
    assert ranks["world_size"] == 2 and all(seconds > 0 for seconds in ranks["gpu_seconds"])
    assert metrics["all_ranks_gpu_seconds"] == pytest.approx(sum(ranks["gpu_seconds"]))
