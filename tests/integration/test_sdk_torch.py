"""TorchRun under the launcher as a user runs it: one process, a killed and resumed one, and 2 ranks on gloo (one
of which may fall behind or fail).

Every test starts ``python -m workloads.launcher ... -- python [-m workloads.trainer.launch ...] -m
workloads.launcher.entrypoint tests.fixtures.trainers.torch_run_trainers:mlp`` on the digits dataset and reads
back what a user sees: exit codes, each rank's last line, the MLflow run's metric history and its model.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import ROOT, free_port
from tests.fixtures.datasets import write_digits_dataset
from tests.fixtures.flow_env import mlflow_db_template  # noqa: F401
from tests.fixtures.nodes import kill_node
from tests.fixtures.sdk_launch import Setup, history, rank_lines

HPARAMS = {"epochs": 3, "seed": 42, "learning_rate": 0.01, "batch_size": 32}


def alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (FileNotFoundError, IndexError):
        return not stat.parent.parent.is_dir()  # no /proc (not Linux): kill(0) said it runs


def rank_pids(folder: Path) -> list[int]:
    return sorted(int(path.name) for path in folder.iterdir())


@pytest.fixture
def setup(tmp_path: Path, mlflow_db_template: Path) -> Setup:  # noqa: F811
    store = tmp_path / "store"
    return Setup(tmp_path, write_digits_dataset(store), store, mlflow_db_template)


def test_a_killed_training_resumes_to_the_same_figures_as_an_uninterrupted_one(setup: Setup) -> None:
    straight = setup.new_run("straight")
    result = setup.launch(straight, HPARAMS, training_id="straight")
    assert result.returncode == 0, result.stderr
    assert [line["steps"] for line in rank_lines(result.stdout)] == [[1, 2, 3]]
    assert MlflowClient(straight[0]).get_run(straight[1]).data.tags["gpuflow.model_uri"]

    interrupted = setup.new_run("interrupted")
    killed = setup.launch(interrupted, HPARAMS, training_id="again", crash_at=2)
    assert killed.returncode == 1, killed.stderr
    assert [step for step, _ in history(interrupted, "train_loss")] == [1, 2]
    resumed = setup.launch(interrupted, HPARAMS, training_id="again")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from the checkpoint of step 2" in resumed.stdout
    assert [line["steps"] for line in rank_lines(resumed.stdout)] == [[3]]
    for key in ("train_loss", "val_accuracy"):  # model, optimizer, scheduler, RNG and step all came back
        assert history(interrupted, key) == history(straight, key), key

    # relaunched after it finished (a pod restarted, a flow retried): nothing to train, the checked model is kept
    client = MlflowClient(interrupted[0])
    model_uri = client.get_run(interrupted[1]).data.tags["gpuflow.model_uri"]
    again = setup.launch(interrupted, HPARAMS, training_id="again")
    assert again.returncode == 0, again.stderr
    assert f"training was already complete after step 3; model {model_uri}" in again.stdout
    assert client.get_run(interrupted[1]).data.tags["gpuflow.model_uri"] == model_uri
    experiment = client.get_run(interrupted[1]).info.experiment_id
    logged = client.search_logged_models([experiment], filter_string=f"source_run_id = '{interrupted[1]}'")
    assert [m.model_uri for m in logged] == [model_uri]  # one model, not one per launch

    changed = setup.launch(interrupted, {**HPARAMS, "learning_rate": 0.1}, training_id="again")
    assert changed.returncode == 2
    assert "was made with learning_rate=0.01 (now 0.1)" in changed.stderr.splitlines()[-1]


def test_two_ranks_on_gloo_log_each_step_once_and_stop_together(setup: Setup) -> None:
    run = setup.new_run("two")
    # learning rate 0: the accuracy never improves, so patience 1 stops after step 2 on every rank
    hparams = {**HPARAMS, "learning_rate": 0.0, "patience": 1, "epochs": 6}
    result = setup.launch(run, hparams, training_id="two", ranks=2)
    assert result.returncode == 0, result.stderr
    lines = rank_lines(result.stdout)
    assert [line["rank"] for line in lines] == [0, 1]
    assert lines[0]["steps"] == lines[1]["steps"] == [1, 2]
    assert lines[0]["batches"] == lines[1]["batches"] == 20  # 629 of the 1,257 train rows each (one padded), 32 a batch
    assert lines[0]["stop"].startswith("plateau: val_accuracy has not improved for 1")
    assert lines[1]["stop"] == lines[0]["stop"]
    assert [step for step, _ in history(run, "train_loss")] == [1, 2]  # once each, though two ranks report
    tags = MlflowClient(run[0]).get_run(run[1]).data.tags
    assert tags["gpuflow.model_uri"] and tags["gpuflow.task"] == "classification"


@pytest.mark.parametrize(
    ("where", "seen", "waited"),
    [
        # stuck before its first batch of step 2: rank 0 waits in DDP's gradient all-reduce of its first batch
        ("load", "last seen after 'the end of reporting step 1'", "rank 0 gave up on a collective after 8 s"),
        # stuck after its batches of step 2: rank 0 waits where the sums over the ranks are taken
        ("report", "last seen at batch 3 of 'val' after step 1", "rank 0 waited 8 s at 'summing after step 1'"),
    ],
)
def test_a_rank_that_falls_behind_is_named_and_the_group_ends_retryable(
    setup: Setup, where: str, seen: str, waited: str
) -> None:
    run = setup.new_run(f"lag-{where}")
    pids = setup.folder / f"pids-{where}"
    pids.mkdir()
    started = time.monotonic()
    result = setup.launch(
        run,
        {**HPARAMS, "rank_timeout_seconds": 8},
        training_id=f"lag-{where}",
        ranks=2,
        extra_env={"GPUFLOW_TEST_HANG_AT": f"2:{where}", "GPUFLOW_TEST_PID_DIR": str(pids)},
    )
    took = time.monotonic() - started
    assert result.returncode == 1, result.stderr  # retryable: the lagging rank may be fine on another node
    last = result.stderr.splitlines()[-1]
    assert last.startswith("error: trainer exited 1: [rank 0] rank 1 is behind: "), result.stderr
    assert seen in last and waited in last, last
    assert "Traceback" not in result.stderr
    assert took < 150, took  # rank 1 sleeps an hour: the group ended on the rank timeout, not on it
    assert len(rank_pids(pids)) == 2 and not [pid for pid in rank_pids(pids) if alive(pid)]
    assert [step for step, _ in history(run, "train_loss")] == [1]
    assert "gpuflow.model_uri" not in MlflowClient(run[0]).get_run(run[1]).data.tags


def test_one_rank_failing_ends_the_group_with_its_exit_code(setup: Setup) -> None:
    run = setup.new_run("fail")
    pids = setup.folder / "pids"
    pids.mkdir()
    result = setup.launch(
        run,
        HPARAMS,
        training_id="fail",
        ranks=2,
        extra_env={"GPUFLOW_TEST_FAIL_AT": "2", "GPUFLOW_TEST_PID_DIR": str(pids)},
    )
    assert result.returncode == 3, result.stderr  # rank 1's data error, permanent, though rank 0 was fine
    last = result.stderr.splitlines()[-1]
    assert last.startswith("error: trainer exited 3: "), result.stderr
    assert "rank 1 could not read its shard for step 2" in last, last
    assert "Traceback" not in result.stderr
    assert len(rank_pids(pids)) == 2 and not [pid for pid in rank_pids(pids) if alive(pid)]
    assert [step for step, _ in history(run, "train_loss")] == [1]


def test_a_lost_node_ends_the_other_in_seconds_not_after_the_rank_timeout(
    setup: Setup, nodes_left: list[subprocess.Popen[str]]
) -> None:
    run = setup.new_run("lost-node")
    pids = setup.folder / "pids-lost"
    pids.mkdir()
    # Rank 1 stops after its batches of step 2, so rank 0 waits for it at the sync point where the sums are taken;
    # then node 1's pod is lost (torchrun, its launcher and its trainer killed): no rank says goodbye.
    env = setup.env(run, {"GPUFLOW_TEST_HANG_AT": "2:report", "GPUFLOW_TEST_PID_DIR": str(pids)})
    hparams = {**HPARAMS, "epochs": 4, "rank_timeout_seconds": 600}
    port = free_port()
    for rank in (0, 1):
        command = setup.node(rank, port, hparams, training_id="lost-node")
        nodes_left.append(
            subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    survivor, lost = nodes_left
    deadline = time.monotonic() + 120
    while not history(run, "train_loss") and time.monotonic() < deadline:  # step 1 relayed: step 2 under way
        time.sleep(0.5)
    time.sleep(3)  # rank 0 is at the sync point, rank 1 asleep before it
    kill_node(lost)
    killed = time.monotonic()
    _, err = survivor.communicate(timeout=120)

    assert survivor.returncode == 1, err  # retryable: the Job replaces the pod and resumes
    assert time.monotonic() - killed < 60  # ten missed heartbeats, not the 600 s rank timeout
    assert err.splitlines()[-1] == "error: training group failed (rank 0 exited 1); exit 1"  # the pod's last line
    said = next(line for line in err.splitlines() if line.startswith("error: trainer exited 1: "))  # the launcher's
    assert said.startswith("error: trainer exited 1: [rank 0] lost contact with rank 1: no heartbeat for 10 s"), err
    assert "(rank 1 last seen at batch 3 of 'val' after step 1)" in said
    assert said.endswith("rank 0 stopped waiting at 'summing after step 1'")
    assert "Traceback" not in err
    assert not [pid for pid in rank_pids(pids) if alive(pid)]
    assert [step for step, _ in history(run, "train_loss")] == [1]
    assert "gpuflow.model_uri" not in MlflowClient(run[0]).get_run(run[1]).data.tags
