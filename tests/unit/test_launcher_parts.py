"""The launcher's and the SDK's pure parts: the metrics line, the tail, options, schema checks, checkpoint mirror."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow.models import infer_signature

from tests.conftest import ROOT
from workloads.dataset import DatasetManifest
from workloads.launcher.checkpoints import CheckpointSync
from workloads.launcher.checks import check_output, check_schema
from workloads.launcher.config import parse_config
from workloads.launcher.entrypoint import EntryPointError, resolve
from workloads.launcher.relay import MetricsTail
from workloads.launcher.run import completed_reason
from workloads.launcher.telemetry import LaunchTelemetry
from workloads.sdk.contract import MetricsLineError, parse_metrics_line, tensor_shape
from workloads.store import ObjectStore
from workloads.trainer.config import ConfigError

ENV = {"MLFLOW_TRACKING_URI": "sqlite:///x.db", "MLFLOW_RUN_ID": "r1", "GPUFLOW_STORE_URI": "/store"}


def manifest(task: str = "classification", features: int = 64, shape: list[int] | None = None) -> DatasetManifest:
    names = [f"pixel_{i}" for i in range(features)]
    extra: dict = {"task": task}
    if task == "classification":
        extra["target"] = {"name": "label", "type": "class", "classes": list(range(10)), "stored": "value"}
    if shape:
        extra["columns"] = [{"name": "image", "type": "tensor", "shape": shape, "columns": names}]
    return DatasetManifest.from_dict(
        {
            "name": "d", "version": "v", "source_uri": "", "source_sha256": "", "source_bytes": 0,
            "source_format": "csv", "rows": {}, "splits": {}, "created_at": "",
            "schema": {"features": names, "label": "label", "labels": list(range(10)) if task != "regression" else []},
            "parameters": {}, "class_balance": {}, "duplicates": {}, **extra,
        }
    )  # fmt: skip


# ------------------------------------------------------------------------------------------- the metrics line


def test_metrics_line_round_trip_and_numbers_of_any_kind() -> None:
    line = parse_metrics_line('{"step": 3, "metrics": {"val_accuracy": 0.93, "loss": NaN}, "checkpoint": true}')
    assert line.step == 3 and line.checkpoint and line.metrics["val_accuracy"] == 0.93
    assert np.isnan(line.metrics["loss"])
    again = parse_metrics_line(line.to_json())  # what the SDK writes, the launcher reads back
    assert (again.step, again.checkpoint, again.metrics["val_accuracy"]) == (3, True, 0.93)
    assert np.isnan(again.metrics["loss"])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("step 3 loss 0.4", "not JSON"),
        ('{"step": 3}', 'expected an object {"step": N, "metrics": {...}}'),
        ('{"step": 0, "metrics": {"a": 1}}', "step must be a positive integer, got 0"),
        ('{"step": 2.5, "metrics": {"a": 1}}', "step must be a positive integer, got 2.5"),
        ('{"step": 1, "metrics": {"a": "high"}}', "metric 'a' must be a number, got 'high'"),
        ('{"step": 1, "metrics": {}}', "metrics must be a non-empty object"),
        ('{"step": 1, "metrics": {"a": 1}, "checkpoint": "yes"}', "checkpoint must be true or false"),
    ],
)
def test_bad_metrics_lines_name_what_was_expected(text: str, message: str) -> None:
    with pytest.raises(MetricsLineError, match=message.replace("{", r"\{").replace("}", r"\}").replace(".", r"\.")):
        parse_metrics_line(text)


def test_tail_returns_complete_lines_only_and_rereads_a_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    tail = MetricsTail(path)
    assert tail.read() == []  # no file yet
    path.write_text('{"a": 1}\n{"b"')
    assert tail.read() == ['{"a": 1}'] and tail.rest() == '{"b"'
    with path.open("a") as handle:
        handle.write(": 2}\n")
    assert tail.read() == ['{"b": 2}']
    path.write_text('{"c": 3}\n')  # replaced by a shorter file
    assert tail.read() == ['{"c": 3}']


# ------------------------------------------------------------------------------------------- options


def test_options_and_command_are_split_at_the_double_dash() -> None:
    config = parse_config(
        ["--dataset-uri", "/d/", "--training-id", "t1", "--hparams", '{"lr": 0.1}', "--", "python", "train.py", "--x"],
        ENV,
    )
    assert config.command == ("python", "train.py", "--x") and config.dataset_uri == "/d"
    assert config.hparams == {"lr": 0.1} and config.checkpoint_uri == "/store/checkpoints/t1"
    assert config.rank == 0  # not under torchrun: the launcher owns the outputs


def test_under_torchrun_the_launcher_knows_its_rank() -> None:
    torchrun = {"RANK": "1", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "29500"}
    config = parse_config(["--dataset-uri", "/d", "--training-id", "t", "--", "x"], {**ENV, **torchrun})
    assert (config.rank, config.world_size) == (1, 2)


@pytest.mark.parametrize(
    ("last_step", "hparams", "reason"),
    [
        (20, {"epochs": 20}, "completed: ran all 20 epochs"),  # one step per epoch: the built-in MLP's wording
        (300, {"epochs": 3}, "completed: the trainer exited 0 after step 300"),  # steps are batches
        (4, {"steps": 4}, "completed: the trainer exited 0 after step 4"),
        (1, {"epochs": True}, "completed: the trainer exited 0 after step 1"),  # a bool is not a count
    ],
)
def test_a_completed_training_says_how_far_it_got(last_step: int, hparams: dict[str, object], reason: str) -> None:
    assert completed_reason(last_step, hparams) == reason


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--dataset-uri", "/d", "--training-id", "t"], ENV, "no trainer command: give it after '--'"),
        (["--dataset-uri", "/d", "--training-id", "t", "--"], ENV, "no trainer command after '--'"),
        (["--dataset-uri", "/d", "--training-id", "t", "--hparams", "[1]", "--", "x"], ENV, "must be a JSON object"),
        (["--dataset-uri", "/d", "--training-id", "t", "--stall-timeout", "-1", "--", "x"], ENV, "non-negative"),
        (["--dataset-uri", "/d", "--training-id", "t", "--early-stop", "soon", "--", "x"], ENV, "--early-stop must"),
        (["--dataset-uri", "/d", "--training-id", "t", "--", "x"], {}, "MLFLOW_TRACKING_URI is not set"),
        (["--dataset-uri", "/d", "--training-id", "a b", "--", "x"], ENV, "--training-id must be"),
        (["--dataset-uri", "/d", "--training-id", "t", "--", "x"], {**ENV, "WORLD_SIZE": "2"}, "RANK must be"),
    ],
)
def test_bad_options_are_configuration_errors(argv: list[str], env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("-", r"\-")):
        parse_config(argv, env)


# ------------------------------------------------------------------------------------------- signature and output


def test_tensor_shape_only_for_one_tensor_column_covering_the_features() -> None:
    assert tensor_shape(manifest(shape=[1, 8, 8])) == (1, 8, 8)
    assert tensor_shape(manifest()) is None
    assert tensor_shape(manifest(shape=[2, 8, 8])) is None  # does not cover the 64 features


def test_signature_checks_name_both_shapes() -> None:
    flat = infer_signature(np.zeros((5, 64), np.float32), np.zeros((5, 10), np.float32)).inputs
    image = infer_signature(np.zeros((5, 1, 8, 8), np.float32), np.zeros((5, 10), np.float32)).inputs
    narrow = infer_signature(np.zeros((5, 10), np.float32), np.zeros((5, 10), np.float32)).inputs
    assert check_schema(flat, manifest(), "m") == []
    assert check_schema(image, manifest(shape=[1, 8, 8]), "m") == []
    assert check_schema(flat, manifest(shape=[1, 8, 8]), "m") == []  # flattened rows are fine too
    [problem] = check_schema(narrow, manifest(shape=[1, 8, 8]), "m")
    assert "takes a tensor [N, 10]; the dataset's features are [N, 64] or [N, 1, 8, 8]" in problem
    [missing] = check_schema(None, manifest(), "m")
    assert "has no signature" in missing


def test_column_signatures_must_name_the_dataset_features() -> None:
    import pandas as pd

    names = [f"pixel_{i}" for i in range(64)]
    good = infer_signature(pd.DataFrame(np.zeros((2, 64)), columns=names)).inputs
    renamed = infer_signature(pd.DataFrame(np.zeros((2, 64)), columns=[f"f{i}" for i in range(64)])).inputs
    assert check_schema(good, manifest(), "m") == []
    [problem] = check_schema(renamed, manifest(), "m")
    assert "names columns [f0, f1" in problem and "its features are [pixel_0" in problem


def test_output_shapes_per_task() -> None:
    assert check_output(np.zeros((5, 10)), manifest(), "m") == []
    [wrong] = check_output(np.zeros((5, 3)), manifest(), "m")
    assert "shape [5, 3]; the dataset has 10 classes: expected [5, 10]" in wrong
    regression = manifest("regression", features=10)
    assert check_output(np.zeros(5), regression, "m") == check_output(np.zeros((5, 1)), regression, "m") == []
    assert "answers [5] or [5, 1] values" in check_output(np.zeros((5, 2)), regression, "m")[0]


# ------------------------------------------------------------------------------------------- entry points, SDK


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("train.py", "is not of the form package.module:function"),
        ("gpuflow_nope.mod:train", "no module named 'gpuflow_nope'"),
        ("workloads.sdk.contract:nothing_here", "module workloads.sdk.contract has no attribute 'nothing_here'"),
        ("workloads.sdk.contract:CONTRACT", "CONTRACT is a str, not a function"),
    ],
)
def test_entry_points_that_cannot_be_called_are_named(spec: str, message: str) -> None:
    with pytest.raises(EntryPointError) as caught:
        resolve(spec)
    assert message in str(caught.value) and caught.value.exit_code == 2 and caught.value.cause is None


def test_sdk_imports_no_torch_mlflow_or_numpy() -> None:
    code = "import sys, workloads.sdk; print(sorted({'torch', 'mlflow', 'numpy', 'pyarrow'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------------------------------- checkpoints, telemetry


def test_checkpoint_folder_is_mirrored_with_deletions_and_hidden_files_left_out(tmp_path: Path) -> None:
    store_uri = str(tmp_path / "store" / "t1")
    folder = tmp_path / "work"
    sync = CheckpointSync(ObjectStore(), store_uri, folder)
    assert sync.restore() == 0
    (folder / "sub").mkdir()
    (folder / "epoch-1.pt").write_bytes(b"1")
    (folder / "sub" / "opt.pt").write_bytes(b"o")
    (folder / ".epoch-2.pt.tmp").write_bytes(b"half")
    assert sync.sync() == (2, 0)
    assert sync.sync() == (0, 0)  # nothing changed: nothing sent
    (folder / "epoch-1.pt").unlink()
    (folder / "epoch-2.pt").write_bytes(b"2")
    assert sync.sync() == (1, 1)
    assert sorted(p.relative_to(store_uri).as_posix() for p in Path(store_uri).rglob("*") if p.is_file()) == [
        "epoch-2.pt",
        "sub/opt.pt",
    ]
    again = CheckpointSync(ObjectStore(), store_uri, tmp_path / "restarted")
    assert again.restore() == 2 and (tmp_path / "restarted" / "sub" / "opt.pt").read_bytes() == b"o"


def test_steps_get_the_time_since_the_last_attributed_report() -> None:
    telemetry = LaunchTelemetry(0.05)
    telemetry.start()
    telemetry.trainer_started()
    first = telemetry.step_reported(1, now=10.0)
    assert first["gpu_seconds"] == 0.0 and "epoch_gpu.gpuflow_duration_seconds" in first  # no GPU here
    assert telemetry.step_reported(2, now=10.01) == {}  # too soon: step 3 carries its time
    assert "cumulative_gpu_seconds" in telemetry.step_reported(3, now=10.2)
    assert telemetry.step_reported(4, now=10.21) == {}
    late = telemetry.trainer_ended()
    assert late is not None and late[0] == 4 and "cumulative_gpu_seconds" in late[1]
    telemetry.stop()
    document = telemetry.document()
    assert list(document["segments"]) == ["setup", "step 1", "step 3", "step 4", "finish"]
    assert json.dumps(document)  # JSON as it is logged
