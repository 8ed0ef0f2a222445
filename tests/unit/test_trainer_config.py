"""The trainer's command line: bad input ends with the configuration exit code and one clear line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT
from workloads.trainer.config import EXIT_CONFIG, ConfigError, parse_config

ENV = {"MLFLOW_TRACKING_URI": "sqlite:///x.db", "MLFLOW_RUN_ID": "abc", "GPUFLOW_STORE_URI": "s3://bucket/root"}
BASE = ["--dataset-uri", "s3://bucket/root/datasets/digits/v1", "--training-id", "t-1"]


def run_trainer(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workloads.trainer", *args],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", **(ENV if env is None else env)},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--epochs", "0"], "--epochs must be at least 1, got 0"),
        (["--learning-rate", "-1"], "--learning-rate must be positive, got -1.0"),
        (["--device", "tpu"], "--device must be one of auto, cpu, cuda, got 'tpu'"),
        (["--batch-size", "many"], "argument --batch-size: invalid int value: 'many'"),
        (["--frobnicate"], "unrecognized arguments: --frobnicate"),
    ],
)
def test_bad_argument_exits_with_config_code_and_one_line_naming_it(args: list[str], message: str) -> None:
    done = run_trainer(*BASE, *args)
    assert done.returncode == EXIT_CONFIG
    assert done.stderr.strip() == f"error: {message}"
    assert done.stdout == ""


def test_missing_required_argument_is_named() -> None:
    done = run_trainer("--training-id", "t-1")
    assert done.returncode == EXIT_CONFIG
    assert done.stderr.strip() == "error: the following arguments are required: --dataset-uri"


def test_missing_run_id_environment_is_a_config_error() -> None:
    done = run_trainer(*BASE, env={k: v for k, v in ENV.items() if k != "MLFLOW_RUN_ID"})
    assert done.returncode == EXIT_CONFIG
    assert "MLFLOW_RUN_ID is not set" in done.stderr


def test_checkpoints_default_under_the_store_and_follow_checkpoint_root() -> None:
    assert parse_config(BASE, ENV).checkpoint_uri == "s3://bucket/root/checkpoints/t-1"
    assert parse_config([*BASE, "--checkpoint-root", "/ck/"], ENV).checkpoint_uri == "/ck/t-1"


def test_training_id_must_be_usable_as_a_folder_name() -> None:
    with pytest.raises(ConfigError, match="--training-id"):
        parse_config(["--dataset-uri", "x", "--training-id", "../escape"], ENV)


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (
            ["--early-stop", "sometimes"],
            {},
            "--early-stop must be one of off, plateau, divergence, both, got 'sometimes'",
        ),
        (["--patience", "0"], {}, "--patience must be at least 1, got 0"),
        (["--telemetry-interval", "0.01"], {}, "--telemetry-interval must be at least 0.05 seconds, got 0.01"),
        (
            [],
            {"GPUFLOW_TELEMETRY_INTERVAL": "often"},
            "GPUFLOW_TELEMETRY_INTERVAL must be a number of seconds, got 'often'",
        ),
    ],
)
def test_bad_early_stop_and_telemetry_settings_are_named(args: list[str], env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config([*BASE, *args], {**ENV, **env})
    assert str(raised.value) == message


def test_telemetry_interval_comes_from_the_argument_then_the_environment_then_one_second() -> None:
    every_quarter = {**ENV, "GPUFLOW_TELEMETRY_INTERVAL": "0.25"}
    assert parse_config(BASE, ENV).telemetry_interval == 1.0
    assert parse_config(BASE, every_quarter).telemetry_interval == 0.25
    assert parse_config([*BASE, "--telemetry-interval", "2"], every_quarter).telemetry_interval == 2.0


def test_early_stopping_is_off_unless_asked_and_is_logged_with_the_params() -> None:
    assert parse_config(BASE, ENV).early_stop == "off"
    config = parse_config([*BASE, "--early-stop", "both", "--patience", "3"], ENV)
    assert (config.early_stop, config.patience) == ("both", 3)
    assert config.params()["early_stop"] == "both" and config.params()["patience"] == 3


def test_the_sdk_entry_takes_the_command_lines_hyperparameters_with_its_defaults() -> None:
    from workloads.trainer.config import DEFAULTS, hyperparameters

    assert hyperparameters({}) == DEFAULTS == parse_config([*BASE], ENV).hyper
    # JSON has one number type: 1 is a float where a float is wanted, 64.0 an int where an int is
    chosen = hyperparameters({"learning_rate": 1, "batch_size": 64.0, "hidden_size": 16})
    assert (chosen.learning_rate, chosen.batch_size, chosen.hidden_size) == (1.0, 64, 16)
    assert isinstance(chosen.learning_rate, float) and isinstance(chosen.batch_size, int)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"hiden_size": 8}, "unknown hyperparameter hiden_size; the built-in MLP takes epochs, batch_size"),
        ({"epochs": "3"}, "hyperparameter epochs must be an integer, got '3'"),
        ({"batch_size": 2.5}, "hyperparameter batch_size must be an integer, got 2.5"),
        ({"dropout": True}, "hyperparameter dropout must be a number, got True"),
        ({"epochs": 0}, "hyperparameter epochs must be at least 1, got 0"),
        ({"dropout": 1.0}, "hyperparameter dropout must be in [0, 1), got 1.0"),
    ],
)
def test_a_bad_sdk_hyperparameter_is_a_configuration_error_naming_it(values: dict, message: str) -> None:
    from workloads.trainer.config import hyperparameters

    with pytest.raises(ConfigError) as caught:
        hyperparameters(values)
    assert message in str(caught.value)
    assert caught.value.exit_code == EXIT_CONFIG
