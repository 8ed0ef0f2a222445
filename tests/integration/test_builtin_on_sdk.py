"""The built-in MLP as an SDK trainer (``workloads.trainer.entry:train`` under the launcher) against the built-in
trainer (``python -m workloads.trainer``): the same figures for the same seed, and one checkpoint format.

Both run as a user runs them, as real processes into real MLflow runs (SQLite stores), on the digits dataset.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import ROOT
from tests.fixtures import sdk_launch
from tests.fixtures.datasets import write_digits_dataset
from tests.fixtures.flow_env import mlflow_db_template  # noqa: F401

ENTRY = ("-m", "workloads.launcher.entrypoint", "workloads.trainer.entry:train")
HYPER = {"epochs": 3, "hidden_size": 32, "dropout": 0.1, "seed": 3, "batch_size": 32}
FIGURES = ("train_loss", "val_loss", "val_accuracy")


@dataclass(frozen=True)
class Setup(sdk_launch.Setup):
    """The SDK tests' set-up (a dataset, a store, fresh MLflow runs) with both trainers' command lines."""

    @property
    def temp(self) -> Path:
        """The trainers' TMPDIR: what they leave in it is what they would leave in a user's /tmp."""
        return self.folder / "tmp"

    def env(self, run: tuple[str, str], extra_env: dict[str, str] | None = None) -> dict[str, str]:
        self.temp.mkdir(exist_ok=True)
        extra = {"GPUFLOW_TORCH_THREADS": "1", "TMPDIR": str(self.temp), **(extra_env or {})}
        return super().env(run, extra)  # both trainers cap torch alike

    def builtin(
        self, run: tuple[str, str], hyper: dict, training_id: str, ranks: int = 1
    ) -> subprocess.CompletedProcess[str]:
        flags = [f"--{key.replace('_', '-')}={value}" for key, value in hyper.items()]
        torchrun = ["-m", "workloads.trainer.launch", "--standalone", "--nnodes=1", f"--nproc-per-node={ranks}"]
        command = [
            sys.executable, *(torchrun if ranks > 1 else []), "-m", "workloads.trainer", "--dataset-uri",
            self.dataset_uri, "--training-id", training_id, "--device", "cpu", *flags,
        ]  # fmt: skip
        return subprocess.run(command, cwd=ROOT, env=self.env(run), capture_output=True, text=True, timeout=300)

    def sdk(
        self, run: tuple[str, str], hyper: dict, training_id: str, ranks: int = 1
    ) -> subprocess.CompletedProcess[str]:
        torchrun = ("-m", "workloads.trainer.launch", "--standalone", "--nnodes=1", f"--nproc-per-node={ranks}")
        command = [
            sys.executable, "-m", "workloads.launcher", *self.launcher_args(hyper, training_id),
            "python", *(torchrun if ranks > 1 else ()), *ENTRY,
        ]  # fmt: skip
        return subprocess.run(command, cwd=ROOT, env=self.env(run), capture_output=True, text=True, timeout=300)


def figures(run: tuple[str, str]) -> dict[str, list[tuple[int, float]]]:
    client = MlflowClient(run[0])
    return {key: sorted((m.step, m.value) for m in client.get_metric_history(run[1], key)) for key in FIGURES}


def progress(stdout: str) -> list[str]:
    """The epoch lines without their timing (``(0.21s, 8123 samples/s)``)."""
    return [line.rsplit(" (", 1)[0] for line in stdout.splitlines() if line.startswith("epoch ")]


@pytest.fixture
def setup(tmp_path: Path, mlflow_db_template: Path) -> Setup:  # noqa: F811
    store = tmp_path / "store"
    return Setup(tmp_path, write_digits_dataset(store), store, mlflow_db_template)


def test_the_sdk_trainer_reports_the_builtin_figures_for_the_same_seed(setup: Setup) -> None:
    builtin, sdk = setup.new_run("builtin"), setup.new_run("sdk")

    old = setup.builtin(builtin, HYPER, "builtin-1")
    new = setup.sdk(sdk, HYPER, "sdk-1")

    assert old.returncode == 0, old.stderr
    assert new.returncode == 0, new.stderr
    expected = figures(builtin)
    assert [step for step, _ in expected["val_accuracy"]] == [1, 2, 3]
    assert figures(sdk) == expected  # bit-identical, every epoch
    assert progress(new.stdout) == progress(old.stdout)
    tags = MlflowClient(sdk[0]).get_run(sdk[1]).data.tags
    assert tags["gpuflow.model_uri"] and json.loads(tags["gpuflow.labels"]) == list(range(10))
    saved = sorted(p.name for p in (setup.store / "checkpoints" / "sdk-1").iterdir())
    assert saved == ["epoch-0001.pt", "epoch-0002.pt", "epoch-0003.pt"]


def test_each_trainer_resumes_the_others_checkpoints_to_the_same_figures(setup: Setup) -> None:
    straight = setup.new_run("straight")
    assert setup.builtin(straight, HYPER, "straight").returncode == 0
    expected = figures(straight)

    # Two epochs on the SDK, the third resumed by the built-in trainer from the SDK's checkpoint; and the other way.
    sdk_first, builtin_first = setup.new_run("sdk-first"), setup.new_run("builtin-first")
    first = setup.sdk(sdk_first, {**HYPER, "epochs": 2}, "sdk-first")
    assert first.returncode == 0, first.stderr
    then = setup.builtin(sdk_first, HYPER, "sdk-first")
    assert then.returncode == 0, then.stderr
    assert "resuming after epoch 2" in then.stdout
    assert figures(sdk_first) == expected

    first = setup.builtin(builtin_first, {**HYPER, "epochs": 2}, "builtin-first")
    assert first.returncode == 0, first.stderr
    then = setup.sdk(builtin_first, HYPER, "builtin-first")
    assert then.returncode == 0, then.stderr
    assert "resumed from the checkpoint of step 2" in then.stdout
    assert figures(builtin_first) == expected


def test_other_settings_and_unknown_hyperparameters_are_refused(setup: Setup) -> None:
    run = setup.new_run("refused")
    assert setup.sdk(run, {**HYPER, "epochs": 1}, "other").returncode == 0

    other = setup.sdk(run, {**HYPER, "hidden_size": 64}, "other")
    assert other.returncode == 2
    assert "hidden_size=32 (now 64)" in other.stderr

    unknown = setup.sdk(setup.new_run("unknown"), {"hiden_size": 64}, "unknown")
    assert unknown.returncode == 2
    assert "unknown hyperparameter hiden_size" in unknown.stderr


def test_two_ranks_on_the_sdk_report_the_builtin_two_rank_figures(setup: Setup) -> None:
    builtin, sdk = setup.new_run("builtin"), setup.new_run("sdk")
    hyper = {**HYPER, "epochs": 2}

    old = setup.builtin(builtin, hyper, "builtin-2", ranks=2)
    new = setup.sdk(sdk, hyper, "sdk-2", ranks=2)

    assert old.returncode == 0, old.stderr
    assert new.returncode == 0, new.stderr
    assert figures(sdk) == figures(builtin)
    # torchrun's log folders (torchelastic_*) went with it; only torch's compile cache stays, as it is meant to
    assert [p.name for p in setup.temp.iterdir() if not p.name.startswith("torchinductor_")] == []
