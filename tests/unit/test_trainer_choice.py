"""Choosing a trainer: spec files and their mistakes, typed hyperparameters, and the launcher's command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.core.trainer_spec import TrainerSpec, TrainerSpecError, parse_override, trainer_spec_from_data
from tasks.training.trainer_choice import launcher_args, resolve_trainer
from tasks.training.trainer_job import trainer_workload


def test_no_reference_is_the_built_in_mlp() -> None:
    for ref in (None, "", "  "):
        spec = resolve_trainer(ref)
        assert spec.kind == "builtin" and spec.describe() == "built-in MLP (workloads.trainer.entry:train)"


def test_a_yaml_file_declares_an_entry_point_with_typed_hyperparameters(tmp_path: Path) -> None:
    (tmp_path / "project").mkdir()
    path = tmp_path / "trainer.yaml"
    path.write_text(
        "entry_point: cnn.train:main\n"
        "working_dir: project\n"
        "hyperparameters: {epochs: 5, lr: 0.01}\n"
        "hyperparameter_types: {epochs: int, lr: float, smoothing: float}\n"
    )
    spec = resolve_trainer(str(path))
    assert spec.kind == "entrypoint" and spec.working_dir == str((tmp_path / "project").resolve())
    assert spec.describe() == "entry point cnn.train:main"
    tuned = spec.with_overrides({"smoothing": 0, "lr": 0.1})
    assert tuned.hyperparameters == {"epochs": 5, "lr": 0.1, "smoothing": 0.0}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"epoch": 3}, r"unknown hyperparameter 'epoch' \(declared: epochs, lr\)"),
        ({"epochs": 2.5}, r"hyperparameter 'epochs' must be int, got 2.5 \(float\)"),
        ({"lr": "fast"}, r"hyperparameter 'lr' must be float, got 'fast' \(str\)"),
        ({"epochs": True}, r"hyperparameter 'epochs' must be int, got True \(bool\)"),
    ],
)
def test_an_undeclared_or_mistyped_hyperparameter_is_refused_by_name(overrides: dict, message: str) -> None:
    spec = TrainerSpec(command=["python", "train.py"], hyperparameter_types={"epochs": "int", "lr": "float"})
    with pytest.raises(TrainerSpecError, match=message):
        spec.with_overrides(overrides)


def test_the_built_in_trainer_declares_its_own_hyperparameters() -> None:
    with pytest.raises(TrainerSpecError, match=r"unknown hyperparameter 'dropout_rate'"):
        TrainerSpec().with_overrides({"dropout_rate": 0.1})
    assert TrainerSpec().with_overrides({"learning_rate": 1}).hyperparameters == {"learning_rate": 1.0}


def test_undeclared_types_accept_any_json_value() -> None:
    spec = TrainerSpec(command=["Rscript", "train.R"]).with_overrides({"anything": [1, 2]})
    assert spec.hyperparameters == {"anything": [1, 2]}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"entry_point": "train"}, r"t.yaml: entry_point must look like package.module:function, got 'train'"),
        ({"entry_point": "a:b", "command": ["x"]}, r"give entry_point or command, not both"),
        ({"command": []}, r"command must be a non-empty list"),
        ({"image": "team/cnn:1"}, r"image needs an entry_point or a command"),
        ({"command": ["x"], "stall_timeout_seconds": 0}, r"stall_timeout_seconds: Input should be greater than 0"),
        ({"command": ["x"], "hyperparameter_types": {"a": "double"}}, r"hyperparameter_types.a: Input should be"),
        ({"comand": ["x"]}, r"comand: Extra inputs are not permitted"),
    ],
)
def test_spec_mistakes_name_the_field(data: dict, message: str) -> None:
    with pytest.raises(TrainerSpecError, match=message):
        trainer_spec_from_data(data, "trainer spec t.yaml")


def test_a_missing_spec_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(TrainerSpecError, match=r"trainer spec file .*nope.yaml does not exist"):
        resolve_trainer(str(tmp_path / "nope.yaml"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [("lr=0.1", ("lr", 0.1)), ("name=resnet", ("name", "resnet")), ("layers=[1,2]", ("layers", [1, 2]))],
)
def test_hp_overrides_from_the_command_line_are_read_as_json_or_text(text: str, expected: tuple) -> None:
    assert parse_override(text, {}) == expected


def test_hp_overrides_follow_the_declared_type() -> None:
    assert parse_override("tag=123", {"tag": "str"}) == ("tag", "123")
    assert parse_override("amp=True", {"amp": "bool"}) == ("amp", True)
    with pytest.raises(TrainerSpecError, match=r"'epochs' must be int, got 'ten'"):
        parse_override("epochs=ten", {"epochs": "int"})
    with pytest.raises(TrainerSpecError, match=r"--hp expects key=value, got 'lr'"):
        parse_override("lr", {})


def test_a_custom_trainer_runs_under_the_launcher_with_its_command_after_the_separator() -> None:
    spec = TrainerSpec(entry_point="cnn.train:main", hyperparameters={"lr": 0.1}, stall_timeout_seconds=60)
    args = launcher_args(
        spec, dataset_uri="/s/d", training_id="t1", device="cpu", early_stop="plateau", patience=3,
        telemetry_interval=None,
    )  # fmt: skip
    cut = args.index("--")
    assert args[cut + 1 :] == ["python", "-m", "workloads.launcher.entrypoint", "cnn.train:main"]
    options = dict(zip(args[:cut:2], args[1:cut:2], strict=True))
    assert json.loads(options["--hparams"]) == {"lr": 0.1}
    assert options["--stall-timeout"] == "60.0" and options["--early-stop"] == "plateau"


def test_the_workload_of_a_custom_trainer_carries_its_folder_and_image() -> None:
    from blocks.data_store import DataStore
    from blocks.mlflow_tracking import MLflowTracking

    spec = TrainerSpec(command=["python", "train.py"], working_dir="/proj", image="team/cnn:1")
    tracking, store = MLflowTracking(tracking_uri="sqlite:///x.db"), DataStore(root_uri="/s")
    workload = trainer_workload(
        dataset_uri="/s/d", training_id="t1", epochs=1, batch_size=8, learning_rate=0.1, hidden_size=4, seed=0,
        device="cpu", run_id="r", tracking=tracking, store=store, model_name="m", trainer=spec,
    )  # fmt: skip
    assert workload.module == "workloads.launcher" and workload.args[-3:] == ["--", "python", "train.py"]
    assert workload.working_dir == "/proj" and workload.image == "team/cnn:1"
    assert "--hidden-size" not in workload.args  # the MLP's options are not the custom trainer's
