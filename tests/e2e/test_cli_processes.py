"""No process gpuflow starts outlives it, and what cannot succeed is refused before anything starts (issue 11).

Each test uses a fresh home and reads gpuflow's output through pipes, as a script consuming ``--json`` does:
a helper that kept gpuflow's stdout open would make ``subprocess.run`` wait forever (the timeout catches it).
The successful run is checked in test_cli_run.py (its first run), so the suite runs no extra pipeline.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from tests.fixtures.cli_processes import (
    ROOT,
    announced_ports,
    cli_env,
    gpuflow,
    gpuflow_process,
    leftovers,
    server_log,
    tracebacks,
)

FAST_REFUSAL_SECONDS = 6.0  # the aim is 3 s on 2 cores (about 1 s measured); margin for a loaded CI machine


def test_bad_data_is_refused_before_any_server_starts(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    started = time.monotonic()
    run = gpuflow(tmp_path, "run", "--data", str(empty), "--json", timeout=60)
    elapsed = time.monotonic() - started
    assert run.returncode == 1, run.stderr
    assert run.stderr.strip().splitlines()[-1] == (
        f"gpuflow: error: {empty} is empty (0 bytes); expected CSV with a header and data rows"
    )
    assert json.loads(run.stdout.strip().splitlines()[-1])["error_type"] == "DataValidationError"
    assert elapsed < FAST_REFUSAL_SECONDS, f"refusal took {elapsed:.1f} s"
    assert not server_log(tmp_path).exists()  # refused before the server
    assert tracebacks(run) == [] and leftovers(tmp_path) == []


def test_a_canary_that_can_never_promote_is_refused_with_the_arithmetic(tmp_path: Path) -> None:
    run = gpuflow(tmp_path, "run", "--canary-seconds", "4", timeout=60)
    assert run.returncode == 1, run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("gpuflow: error: this canary policy can never promote")
    assert "200 req/s x 4 s x 10 % = 80 canary requests, fewer than min_requests 100" in last
    assert "at least 5 s" in last
    assert not server_log(tmp_path).exists()
    assert leftovers(tmp_path) == []


def test_a_bad_trainer_spec_or_hyperparameter_is_refused_before_any_server_starts(tmp_path: Path) -> None:
    spec = tmp_path / "trainer.yaml"
    spec.write_text("command: [python, train.py]\nhyperparameter_types: {epochs: int, lr: float}\n")
    cases = {
        ("--trainer", str(tmp_path / "missing.yaml")): f"trainer spec file {tmp_path / 'missing.yaml'} does not exist",
        ("--trainer", str(spec), "--hp", "lr=fast"): "hyperparameter 'lr' must be float, got 'fast'",
        ("--trainer", str(spec), "--hp", "epoch=3"): "unknown hyperparameter 'epoch' (declared: epochs, lr)",
        ("--hp", "dropout=0.5"): "unknown hyperparameter 'dropout' (declared: batch_size, epochs, hidden_size, "
        "learning_rate, seed)",
    }
    for arguments, message in cases.items():
        run = gpuflow(tmp_path, "run", *arguments, timeout=60)
        assert run.returncode == 1, run.stderr
        assert run.stderr.strip().splitlines()[-1] == f"gpuflow: error: {message}"
        assert tracebacks(run) == [] and not server_log(tmp_path).exists() and leftovers(tmp_path) == []


def test_a_missing_or_invalid_gate_file_is_refused_before_any_server_starts(tmp_path: Path) -> None:
    invalid = tmp_path / "gate.yaml"
    invalid.write_text("rules:\n  - metric: accuracy\n    minimum: 0.9\n")
    cases = {
        tmp_path / "missing.yaml": f"quality gate file {tmp_path / 'missing.yaml'} does not exist",
        invalid: f"quality gate file {invalid} is not valid: rules.0.minimum: Extra inputs are not permitted",
    }
    for gate, message in cases.items():
        run = gpuflow(tmp_path, "run", "--gate", str(gate), timeout=60)
        assert run.returncode == 1, run.stderr
        assert run.stderr.strip().splitlines()[-1] == f"gpuflow: error: {message}"
        assert tracebacks(run) == [] and not server_log(tmp_path).exists() and leftovers(tmp_path) == []


def test_a_failure_while_the_server_is_still_booting_stops_it(tmp_path: Path) -> None:
    """The leak race, provoked: loading fails right after the server process started, long before it answers."""
    script = textwrap.dedent(
        """
        import sys
        from flows.prefect_server import prefect_api

        def load():
            raise RuntimeError("boom while the server boots")

        try:
            with prefect_api(load):
                print("body ran")
        except RuntimeError as exc:
            print(f"caught: {exc}")
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=cli_env(tmp_path), capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "caught: boom while the server boots"
    assert len(announced_ports(tmp_path)) == 1  # the server was started, then stopped
    assert tracebacks(run) == [] and run.stderr == ""
    assert leftovers(tmp_path) == []


def test_sigint_during_start_up_stops_everything(tmp_path: Path) -> None:
    proc = gpuflow_process(tmp_path, "run", "--epochs", "1", "--json")
    deadline = time.monotonic() + 60
    while not announced_ports(tmp_path) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert announced_ports(tmp_path), "the server never started"
    proc.send_signal(signal.SIGINT)  # during start-up: the server boots while torch and MLflow import
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "gpuflow: interrupted; every process it started was stopped"
    assert "Traceback" not in stdout + stderr
    assert leftovers(tmp_path) == []


def test_report_in_a_fresh_home_returns_and_leaves_nothing(tmp_path: Path) -> None:
    run = gpuflow(tmp_path, "report", "--json", timeout=180)
    assert run.returncode == 1, run.stderr
    assert "no pipeline run" in run.stderr.strip().splitlines()[-1]
    assert len(announced_ports(tmp_path)) == 1
    assert tracebacks(run) == [] and leftovers(tmp_path) == []


def test_lineage_with_a_block_in_a_fresh_home_returns_and_leaves_nothing(tmp_path: Path) -> None:
    run = gpuflow(tmp_path, "lineage", "gpuflow-digits@champion", "--pricing", "no-such-block", timeout=180)
    assert run.returncode == 1, run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith("gpuflow: error:")
    assert len(announced_ports(tmp_path)) == 1
    assert tracebacks(run) == [] and leftovers(tmp_path) == []
