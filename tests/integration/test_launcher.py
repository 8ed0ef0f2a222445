"""The launcher as a user runs it: a real process around real trainer programs, a real MLflow store and data store.

Each test runs ``python -m workloads.launcher ... -- COMMAND`` on a digits dataset and reads back what a user
would see: the exit code, the output, the run's metrics and tags, the store's checkpoint folder.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pytest
from mlflow import MlflowClient

from tests.conftest import ROOT
from tests.fixtures.datasets import write_digits_dataset
from tests.fixtures.flow_env import mlflow_db_template, sqlite_run  # noqa: F401
from workloads.dataset import load_manifest, read_split
from workloads.store import ObjectStore

TRAINERS = ROOT / "tests" / "fixtures" / "trainers"
COMMAND_TRAINER = (sys.executable, str(TRAINERS / "command_trainer.py"))
SDK = "tests.fixtures.trainers.sdk_trainers"


def entry_point(name: str) -> tuple[str, ...]:
    return (sys.executable, "-m", "workloads.launcher.entrypoint", name)


@dataclass(frozen=True)
class Setup:
    dataset_uri: str
    store: Path
    tracking_uri: str
    run_id: str

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            "MLFLOW_RUN_ID": self.run_id,
            "GPUFLOW_STORE_URI": str(self.store),
            "OMP_NUM_THREADS": "1",
        }

    def args(self, command: tuple[str, ...], hparams: dict | None, *options: str) -> list[str]:
        return [
            sys.executable, "-m", "workloads.launcher", "--dataset-uri", self.dataset_uri, "--training-id", "t1",
            "--hparams", json.dumps(hparams or {}), "--telemetry-interval", "0.1", *options, "--", *command,
        ]  # fmt: skip

    def launch(
        self, command: tuple[str, ...], hparams: dict | None = None, *options: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.args(command, hparams, *options),
            cwd=ROOT,
            env={**self.env(), **(env or {})},
            capture_output=True,
            text=True,
            timeout=240,
        )

    def client(self) -> MlflowClient:
        return MlflowClient(self.tracking_uri)

    def steps(self, key: str) -> list[int]:
        return sorted(m.step for m in self.client().get_metric_history(self.run_id, key))

    def tags(self) -> dict[str, str]:
        return self.client().get_run(self.run_id).data.tags


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    store = tmp_path_factory.mktemp("launcher-store")
    return store, write_digits_dataset(store)


@pytest.fixture
def setup(
    tmp_path: Path,
    mlflow_db_template: Path,  # noqa: F811
    dataset: tuple[Path, str],
    monkeypatch: pytest.MonkeyPatch,
) -> Setup:
    tracking_uri, _, run_id = sqlite_run(tmp_path, mlflow_db_template, "launcher")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)  # models:/ URIs resolve in this test's store
    store = tmp_path / "store"  # checkpoints of this test only; the dataset is shared
    return Setup(dataset_uri=dataset[1], store=store, tracking_uri=tracking_uri, run_id=run_id)


def alive(pid: int) -> bool:
    """A process that exists and is not a zombie (a killed orphan may wait for its reaper a while)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


# ------------------------------------------------------------------------------------------- good trainers


def test_command_trainer_is_relayed_checked_and_tagged(setup: Setup, tmp_path: Path) -> None:
    result = setup.launch(COMMAND_TRAINER, {"steps": 4})

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # clean: nothing but the trainer's own output and the launcher's lines
    assert "step 1: {'train_loss'" in result.stdout.splitlines()[1]  # the trainer's lines, unprefixed
    assert "keeps contract gpuflow-trainer/1" in result.stdout
    for key in ("train_loss", "val_accuracy"):
        assert setup.steps(key) == [1, 2, 3, 4], key
    tags = setup.tags()
    assert tags["gpuflow.task"] == "classification"
    assert json.loads(tags["gpuflow.labels"]) == list(range(10))
    assert tags["gpuflow.stop_reason"] == "completed: the trainer exited 0 after step 4"
    params = setup.client().get_run(setup.run_id).data.params
    assert (params["device"], params["steps_run"]) == ("cpu", "4")  # where it ran and how far, as the built-in says
    manifest = load_manifest(setup.dataset_uri, ObjectStore())
    described = {
        key: params[key] for key in ("dataset_name", "dataset_version", "n_features", "train_rows", "val_rows")
    }
    assert described == {
        "dataset_name": "digits",
        "dataset_version": manifest.version,
        "n_features": "64",
        "train_rows": str(manifest.rows["train"]),
        "val_rows": str(manifest.rows["val"]),
    }
    assert "world_size" not in params  # one process
    assert params["stop_reason"] == tags["gpuflow.stop_reason"]
    # the model it names answers class probabilities for the dataset's rows
    model = mlflow.pyfunc.load_model(tags["gpuflow.model_uri"], dst_path=str(tmp_path))
    x, y = read_split(setup.dataset_uri, "val")
    accuracy = float((np.asarray(model.predict(x)).argmax(axis=1) == y).mean())
    run = setup.client().get_run(setup.run_id)
    assert accuracy == pytest.approx(run.data.metrics["val_accuracy"])
    # telemetry as the built-in trainer logs it: per step beside the figures, the whole launch at the end
    assert setup.steps("cumulative_gpu_seconds")[-1] == 4
    assert setup.steps("gpu.gpuflow_duration_seconds") == [4]
    downloaded = setup.client().download_artifacts(setup.run_id, "telemetry/summary.json", str(tmp_path))
    summary = json.loads(Path(downloaded).read_text())
    assert summary["stage"] == "train" and "setup" in summary["segments"] and "finish" in summary["segments"]
    assert summary["run"]["duration_s"] > 0
    # the checkpoint folder was mirrored to the store
    assert json.loads((setup.store / "checkpoints" / "t1" / "state.json").read_text()) == {"step": 4}


def test_sdk_entry_point_trains_torch_and_logs_pt2(setup: Setup, tmp_path: Path) -> None:
    result = setup.launch(entry_point(f"{SDK}:train_torch"), {"epochs": 3})

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert setup.steps("val_accuracy") == [1, 2, 3]
    uri = setup.tags()["gpuflow.model_uri"]
    assert json.loads(result.stdout.splitlines()[1])["model_uri"] == uri
    info = mlflow.models.get_model_info(uri)
    assert "pytorch" in info.flavors and tuple(info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == (-1, 64)
    files = [f.path for f in setup.client().list_logged_model_artifacts(uri.split("/")[-1], "data")]
    assert any(path.endswith("model.pt2") for path in files), files  # exported, not pickled
    x, _ = read_split(setup.dataset_uri, "val")
    assert np.asarray(mlflow.pyfunc.load_model(uri, dst_path=str(tmp_path)).predict(x[:7])).shape == (7, 10)


def test_a_pt2_model_passes_the_checks_on_a_node_where_mlflow_predicts_on_cuda(setup: Setup) -> None:
    """On a GPU node MLflow's pyfunc loads torch models onto CUDA (MLFLOW_DEFAULT_PREDICTION_DEVICE says so here,
    as CUDA would) and refuses an exported model whose weights are on the CPU: the launcher's load check must not
    fail every SDK trainer on a GPU for it (seen on a real H200). The check loads on the CPU; serving picks the
    device itself."""
    result = setup.launch(
        entry_point(f"{SDK}:train_torch"), {"epochs": 1}, env={"MLFLOW_DEFAULT_PREDICTION_DEVICE": "cuda"}
    )

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert setup.tags()["gpuflow.model_uri"]


def test_sdk_scikit_learn_estimator_answers_probabilities(setup: Setup, tmp_path: Path) -> None:
    result = setup.launch(entry_point(f"{SDK}:train_sklearn"))

    assert result.returncode == 0, result.stderr
    model = mlflow.pyfunc.load_model(setup.tags()["gpuflow.model_uri"], dst_path=str(tmp_path))
    x, _ = read_split(setup.dataset_uri, "val")
    probabilities = np.asarray(model.predict(x[:4]))
    assert probabilities.shape == (4, 10) and np.allclose(probabilities.sum(axis=1), 1.0)


# ------------------------------------------------------------------------------------------- bad input


def test_command_not_found_is_a_configuration_error(setup: Setup) -> None:
    result = setup.launch(("gpuflow-no-such-trainer", "--epochs", "3"))

    assert result.returncode == 2
    assert last_line(result.stderr) == (
        "error: trainer command 'gpuflow-no-such-trainer' was not found on PATH: install it or give its full path"
    )
    assert "Traceback" not in result.stderr


def test_import_error_in_user_code_shows_its_traceback_once(setup: Setup) -> None:
    result = setup.launch(entry_point("tests.fixtures.trainers.broken_import:train"))

    assert result.returncode == 2
    assert result.stderr.count("Traceback") == 1
    assert 'broken_import.py", line 3' in result.stderr  # the user's own frame
    assert "workloads/launcher" not in result.stderr.split("Traceback")[1].split("ModuleNotFoundError")[0]
    assert last_line(result.stderr).startswith("error: trainer exited 2: entry point 'tests.fixtures.trainers.")
    assert "No module named 'gpuflow_missing_dependency_for_tests'" in last_line(result.stderr)


def test_missing_entry_point_module_or_function_is_one_line(setup: Setup) -> None:
    missing_module = setup.launch(entry_point("no_such_package.trainer:train"))
    missing_function = setup.launch(entry_point(f"{SDK}:no_such_function"))

    assert missing_module.returncode == missing_function.returncode == 2
    assert missing_module.stderr.splitlines() == [
        "error: entry point 'no_such_package.trainer:train': no module named 'no_such_package' "
        "(is its package installed, or on PYTHONPATH?)",
        "error: trainer exited 2: entry point 'no_such_package.trainer:train': no module named 'no_such_package' "
        "(is its package installed, or on PYTHONPATH?)",
    ]
    assert f"module {SDK} has no attribute 'no_such_function'" in last_line(missing_function.stderr)


def test_exit_0_without_a_model_names_the_missing_point(setup: Setup) -> None:
    result = setup.launch(COMMAND_TRAINER, {"steps": 2, "no_model": True})

    assert result.returncode == 2
    assert last_line(result.stderr) == (
        f"error: contract gpuflow-trainer/1: exited 0 but logged no model to run {setup.run_id}: log one with "
        f"mlflow.<flavor>.log_model(..., name='model', signature=...) into MLFLOW_RUN_ID"
    )
    assert "gpuflow.model_uri" not in setup.tags()
    assert setup.steps("val_accuracy") == [1, 2]  # what it reported is still there


def test_signature_that_does_not_fit_the_dataset_names_both_shapes(setup: Setup) -> None:
    result = setup.launch(COMMAND_TRAINER, {"steps": 1, "wrong_features": True})

    assert result.returncode == 2
    line = last_line(result.stderr)
    assert line.startswith("error: contract gpuflow-trainer/1: model models:/m-")
    assert "signature takes a tensor [N, 10]; the dataset's features are [N, 64]" in line
    assert "gpuflow.model_uri" not in setup.tags()


def test_sdk_log_model_refuses_a_model_with_the_wrong_number_of_classes(setup: Setup) -> None:
    result = setup.launch(entry_point(f"{SDK}:wrong_classes"))

    assert result.returncode == 2
    assert last_line(result.stderr) == (
        "error: trainer exited 2: the module Linear answers 5 rows with shape [5, 3]; the dataset has 10 classes: "
        "expected [5, 10] in the order of ctx.class_names"
    )


def test_no_primary_metric_is_a_contract_failure(setup: Setup) -> None:
    result = setup.launch(COMMAND_TRAINER, {"steps": 2, "no_primary": True})

    assert result.returncode == 2
    assert last_line(result.stderr).startswith(
        "error: contract gpuflow-trainer/1: exited 0 but never reported val_accuracy, the classification task's "
        "primary metric"
    )


def test_stalled_trainer_is_stopped_after_the_stall_timeout(setup: Setup) -> None:
    started = time.monotonic()
    result = setup.launch(COMMAND_TRAINER, {"steps": 3, "stall_after": 1}, "--stall-timeout", "4")

    assert result.returncode == 1
    assert "the trainer wrote no metrics line for 4 s (--stall-timeout); it was stopped" in result.stderr
    assert time.monotonic() - started < 120  # not the 600 s the trainer would sleep
    assert setup.steps("val_accuracy") == [1]


def test_early_stop_is_honoured_through_the_stop_file(setup: Setup) -> None:
    result = setup.launch(
        COMMAND_TRAINER,
        {"steps": 30, "step_seconds": 0.4, "plateau": True},
        "--early-stop",
        "plateau",
        "--patience",
        "2",
    )

    assert result.returncode == 0, result.stderr
    assert "stopping early after step 3: plateau: val_accuracy has not improved for 2 epochs" in result.stdout
    assert "stopping: plateau: val_accuracy has not improved" in result.stdout  # the trainer read the stop file
    assert setup.steps("val_accuracy")[-1] < 6
    assert setup.tags()["gpuflow.stop_reason"].startswith("plateau: ")
    assert setup.client().get_run(setup.run_id).data.params["steps_run"] == str(setup.steps("val_accuracy")[-1])


def test_trainer_that_ignores_the_stop_file_is_terminated_after_the_grace(setup: Setup) -> None:
    result = setup.launch(
        COMMAND_TRAINER,
        {"steps": 100, "step_seconds": 0.4, "plateau": True, "ignore_stop": True},
        "--early-stop",
        "plateau",
        "--patience",
        "1",
        "--stop-grace",
        "2",
    )

    assert result.returncode == 128 + signal.SIGTERM
    assert "did not exit within --stop-grace 2 s of the stop request; it was sent SIGTERM" in result.stderr
    assert setup.steps("val_accuracy")[-1] < 40


def test_trainer_failure_passes_its_code_and_line_through(setup: Setup) -> None:
    result = setup.launch(COMMAND_TRAINER, {"fail_with": 3})

    assert result.returncode == 3
    assert "checking the data..." in result.stdout
    assert last_line(result.stderr) == "error: trainer exited 3: the label column holds values outside the manifest"


TORCHRUN_RANK_1 = {"RANK": "1", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}


def test_a_launcher_torchrun_started_as_rank_1_runs_its_trainer_and_leaves_every_output_to_rank_0(
    setup: Setup,
) -> None:
    # one launcher per rank (a multi-node Job's pods): this one's trainer reports, checkpoints and logs nothing
    # of its own in the SDK's ranks, so nothing it writes is relayed, synced or checked, and it cannot stall
    args = setup.args(COMMAND_TRAINER, {"steps": 2, "step_seconds": 0.5, "no_model": True}, "--stall-timeout", "0.2")
    run = subprocess.run(args, cwd=ROOT, env={**setup.env(), **TORCHRUN_RANK_1}, capture_output=True, text=True)

    assert run.returncode == 0, run.stderr
    assert "launcher: rank 1: starting " in run.stdout and "keeps contract" not in run.stdout
    assert setup.steps("val_accuracy") == [] and setup.tags().get("gpuflow.model_uri") is None
    assert setup.client().get_run(setup.run_id).data.params == {}
    assert not (setup.store / "checkpoints").exists()

    failing = setup.args(COMMAND_TRAINER, {"fail_with": 3})
    failed = subprocess.run(failing, cwd=ROOT, env={**setup.env(), **TORCHRUN_RANK_1}, capture_output=True, text=True)
    assert failed.returncode == 3  # its code ends its torchrun worker, and so the group
    assert last_line(failed.stderr) == "error: trainer exited 3: the label column holds values outside the manifest"


def test_missing_dataset_is_a_data_error(setup: Setup) -> None:
    setup = Setup(setup.dataset_uri + "-gone", setup.store, setup.tracking_uri, setup.run_id)
    result = setup.launch(COMMAND_TRAINER)

    assert result.returncode == 3
    assert last_line(result.stderr) == (
        f"error: no prepared dataset at {setup.dataset_uri}: manifest.json does not exist"
    )


def test_a_run_id_mlflow_does_not_know_is_a_configuration_error(setup: Setup) -> None:
    unknown = "0" * 32
    setup = Setup(setup.dataset_uri, setup.store, setup.tracking_uri, unknown)
    launched = setup.launch(COMMAND_TRAINER)
    trained = subprocess.run(
        [sys.executable, "-m", "workloads.trainer", "--dataset-uri", setup.dataset_uri, "--training-id", "t1"],
        cwd=ROOT, env=setup.env(), capture_output=True, text=True, timeout=240,
    )  # fmt: skip

    for result in (launched, trained):
        assert result.returncode == 2, result.stderr
        assert f"MLflow run {unknown!r} does not exist at {setup.tracking_uri}" in last_line(result.stderr)
        assert "Traceback" not in result.stderr


def test_hyperparameter_name_mlflow_refuses_is_a_configuration_error(setup: Setup) -> None:
    result = setup.launch(COMMAND_TRAINER, {"learning rate?": 0.1})

    assert result.returncode == 2
    assert last_line(result.stderr).startswith("error: MLflow refused the hyperparameters as params: ")
    assert "Traceback" not in result.stderr and result.stdout == ""  # refused before the trainer started


def test_sdk_fail_ends_with_its_code_and_line(setup: Setup) -> None:
    result = setup.launch(entry_point(f"{SDK}:gives_up"))

    assert result.returncode == 2
    assert last_line(result.stderr) == "error: trainer exited 2: learning_rate must be below 1"


# ------------------------------------------------------------------------------------------- restarts and signals


def test_metrics_are_relayed_once_when_a_restarted_trainer_rewrites_steps(setup: Setup) -> None:
    first = setup.launch(COMMAND_TRAINER, {"steps": 3})
    assert first.returncode == 0, first.stderr

    # The same training again: restored from the store's checkpoint (step 3), it starts over from step 2.
    second = setup.launch(COMMAND_TRAINER, {"steps": 5, "rewrite_from": 2})

    assert second.returncode == 0, second.stderr
    assert "resuming after step 3, from step 2" in second.stdout
    assert "1 checkpoint file(s) restored" in second.stdout
    for key in ("train_loss", "val_accuracy"):
        assert setup.steps(key) == [1, 2, 3, 4, 5], key
    for key in ("gpu_seconds", "cumulative_gpu_seconds"):
        steps = setup.steps(key)
        assert steps == sorted(set(steps)), key  # telemetry of a rewritten step is not logged twice either


def test_signal_stops_the_trainer_and_everything_it_started(setup: Setup) -> None:
    proc = subprocess.Popen(
        setup.args(COMMAND_TRAINER, {"steps": 200, "step_seconds": 0.3, "child": True}),
        cwd=ROOT,
        env=setup.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    grandchild = 0
    for line in proc.stdout:
        if line.startswith("child "):
            grandchild = int(line.split()[1])
        if line.startswith("step 2:"):
            break
    assert alive(grandchild)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)

    assert proc.returncode == 128 + signal.SIGTERM
    assert not alive(grandchild)
