"""A mistyped option is answered with the usage of the command it was given to, and exit status 2."""

from __future__ import annotations

import pytest

from flows.cli import main


@pytest.mark.parametrize(
    ("argv", "command", "unknown"),
    [
        (["report", "--run", "abc"], "report", "--run"),
        (["run", "--task", "regression"], "run", "--task regression"),
        (["lineage", "my-model", "--verbose"], "lineage", "--verbose"),
    ],
)
def test_an_unknown_option_shows_its_commands_usage(
    argv: list[str], command: str, unknown: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: gpuflow {command} [-h]")
    assert err.rstrip().splitlines()[-1] == f"gpuflow {command}: error: unrecognized arguments: {unknown}"


def test_an_unknown_command_still_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["nosuch"])
    assert exited.value.code == 2
    assert "invalid choice: 'nosuch' (choose from 'run', 'serve'," in capsys.readouterr().err


def test_serve_refuses_a_model_uri_of_the_wrong_shape_as_its_own_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "gpuflow-digits@champion"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: gpuflow serve [-h]")
    last = err.rstrip().splitlines()[-1]
    assert last.startswith("gpuflow serve: error: argument MODEL_URI: unsupported model URI 'gpuflow-digits@champion'")
