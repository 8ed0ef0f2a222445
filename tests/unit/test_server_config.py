"""The server's flags: environment defaults, command-line precedence, and exit code 2 for bad arguments."""

from __future__ import annotations

import pytest

from workloads.server import main
from workloads.server.config import EXIT_USAGE, parse_args


def test_flags_parse_into_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = parse_args(["--model-uri", "models:/m/1", "--max-batch-size", "8", "--max-wait-us", "250", "--port", "0"])
    assert (config.model_uri, config.max_batch_size, config.max_wait_us, config.port) == ("models:/m/1", 8, 250, 0)
    assert config.max_wait_s == pytest.approx(0.00025)
    assert config.tracking_uri is None and config.host == "127.0.0.1"


def test_environment_supplies_defaults_and_the_command_line_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUFLOW_SERVER_MODEL_URI", "models:/m@champion")
    monkeypatch.setenv("GPUFLOW_SERVER_MAX_ROWS", "7")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    config = parse_args(["--max-rows", "9"])
    assert (config.model_uri, config.max_rows, config.tracking_uri) == ("models:/m@champion", 9, "http://mlflow:5000")


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        ([], "--model-uri"),
        (["--model-uri", "models:/m/1", "--max-batch-size", "0"], "expected at least 1"),
        (["--model-uri", "models:/m/1", "--port", "70000"], "between 0 and 65535"),
        (["--model-uri", "models:/m/1", "--max-wait-us", "soon"], "not a int"),
        (["--model-uri", "models:/m/1", "--backend", "onnx"], "invalid choice"),
    ],
)
def test_bad_arguments_exit_2_with_the_reason(argv: list[str], says: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == EXIT_USAGE
    assert says in capsys.readouterr().err


def test_a_bad_environment_value_is_checked_like_a_flag(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GPUFLOW_SERVER_BACKEND", "tensorrt")
    assert main(["--model-uri", "models:/m/1"]) == EXIT_USAGE
    assert "invalid choice: 'tensorrt'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("nope@champion", "unsupported model URI 'nope@champion': expected models:/<name>/<version>,"),
        ("s3://bucket/model", "unsupported model URI 's3://bucket/model'"),
        ("models:/iris", "model URI 'models:/iris' names no version or alias: expected models:/<name>/<version>,"),
    ],
)
def test_a_model_uri_of_the_wrong_shape_is_refused_before_the_server_listens(
    uri: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--model-uri", uri, "--port", "0"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.rstrip().splitlines()[-1].startswith(f"python -m workloads.server: error: argument --model-uri: {says}")
    assert "listening" not in err


@pytest.mark.parametrize("uri", ["models:/iris/3", "models:/iris@champion", "models:/m-0123abc", "runs:/abc/model"])
def test_every_documented_model_uri_form_parses(uri: str) -> None:
    assert parse_args(["--model-uri", uri]).model_uri == uri
