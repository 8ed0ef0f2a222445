"""The process-worker settings gpuflow ships: how soon a worker notices a triggered run and how it starts it.

Two costs sit between an event and a Running flow run (measured by ``python -m bench.bench_trigger``):

- the worker's poll: Prefect's default asks the server for due runs every 10 s (a triggered run waits 5 s on
  average); ``WORKER_ENV`` asks every 0.5 s (0.25 s on average), which costs an idle local SQLite server and
  worker about 2 % of one core more than polling every second;
- the flow process: with no ``command`` in the job template, Prefect 3.9's process worker starts a workspace
  supervisor process (a full Prefect import), which then replaces itself with ``python -m prefect.engine``
  (a second full Prefect import), about 0.9 s each on a 2-core machine. An explicit engine command skips the
  supervisor; the engine then runs the deployment's pull steps itself (``set_working_directory``), puts that
  folder on ``sys.path`` and imports the flow, as before. What is lost: Prefect's automatic ``uv run`` of a
  project with ``PREFECT_RUNNER_AUTO_INSTALL_DEPENDENCIES`` (off by default; gpuflow runs in its own venv).

``process_base_job_template()`` is the process pool's base job template with that command as its default;
a deployment or a run can still override ``command`` through job variables. The command names the interpreter
that created the pool (``gpuflow bootstrap``'s): a worker in another environment sets the pool's ``command``
to its own ``python -m prefect.engine``, or clears it to get Prefect's supervisor again.

Measured with ``python -m bench.bench_trigger`` on 2 cores (load 0.3-0.6): event -> Running median 1.3 s for a
no-op flow and 1.7 s for the real prepare stage, against 8.2 s and 7.5 s with Prefect's defaults.
"""

from __future__ import annotations

import shlex
import sys
from typing import Any

# Prefect reads the prefetch as whole seconds; triggered runs are due at once, so it only has to be small.
WORKER_ENV: dict[str, str] = {"PREFECT_WORKER_QUERY_SECONDS": "0.5", "PREFECT_WORKER_PREFETCH_SECONDS": "1"}


def engine_command(python: str | None = None) -> str:
    """``<python> -m prefect.engine``: the interpreter that runs this (the venv gpuflow is installed in)."""
    return shlex.join([python or sys.executable, "-m", "prefect.engine"])


def process_base_job_template(python: str | None = None) -> dict[str, Any]:
    """Prefect's process base job template with ``command`` defaulting to ``engine_command(python)``."""
    from prefect.workers.process import ProcessWorker

    template = ProcessWorker.get_default_base_job_template()
    command = template["variables"]["properties"]["command"]
    command["default"] = engine_command(python)
    command["description"] = (
        "Command that starts a flow run. gpuflow's default starts Prefect's engine directly with the "
        "interpreter gpuflow is installed in (one Python start instead of two); empty lets Prefect choose."
    )
    return template
