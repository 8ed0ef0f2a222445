"""The process-worker settings gpuflow ships: a fast poll, and a pool command that starts Prefect's engine directly."""

from __future__ import annotations

import shlex
import sys
from typing import Any

from prefect.utilities.templating import apply_values
from prefect.workers.process import ProcessJobConfiguration, ProcessWorker

from deployments import PROJECT_ROOT
from deployments.bootstrap import PROCESS_POOL
from deployments.worker_settings import WORKER_ENV, engine_command, process_base_job_template


def test_the_pool_command_defaults_to_this_interpreters_engine() -> None:
    template = process_base_job_template()
    default = ProcessWorker.get_default_base_job_template()
    assert shlex.split(engine_command()) == [sys.executable, "-m", "prefect.engine"]
    assert template["variables"]["properties"]["command"]["default"] == engine_command()
    # Only the command's default (and its description) differ from Prefect's own template.
    template["variables"]["properties"]["command"] = default["variables"]["properties"]["command"]
    assert template == default


def job_command(template: dict[str, Any], job_variables: dict[str, Any]) -> str | None:
    """The command a worker's job configuration gets: the template rendered with defaults + job variables."""
    defaults = {key: spec["default"] for key, spec in template["variables"]["properties"].items() if "default" in spec}
    rendered = apply_values(template["job_configuration"], {**defaults, **job_variables})
    return ProcessJobConfiguration(**rendered).command


def test_a_run_without_job_variables_gets_the_engine_command_and_a_deployment_can_override_it() -> None:
    template = process_base_job_template("/opt/venv/bin/python")
    assert job_command(template, {}) == "/opt/venv/bin/python -m prefect.engine"
    assert job_command(template, {"command": "python -m x"}) == "python -m x"
    assert job_command(ProcessWorker.get_default_base_job_template(), {}) is None  # Prefect's: the supervisor path


def test_the_poll_is_faster_than_prefects_default() -> None:
    from prefect.settings.models.worker import WorkerSettings

    assert float(WORKER_ENV["PREFECT_WORKER_QUERY_SECONDS"]) < WorkerSettings.model_fields["query_seconds"].default
    for document in ("README.md", "docs/deployments.md"):  # the documented worker start uses these settings
        text = (PROJECT_ROOT / document).read_text()
        assert all(f"{key}={value}" in text for key, value in WORKER_ENV.items()), document
        assert f"prefect worker start --pool {PROCESS_POOL}" in text, document
