"""Event -> running flow: how long a gpuflow event takes to start the deployment it triggers.

Starts a real Prefect server (SQLite, private home), deploys a no-op flow with a Prefect deployment trigger on
``gpuflow.bench.ping`` (the same mechanism prefect.yaml chains the stages with), then for each worker setting
emits events one at a time and reads back when the triggered run was Pending (worker claimed it) and Running
(the flow process started). Worker settings compared in the same run:

- gpuflow: PREFECT_WORKER_QUERY_SECONDS=1, PREFECT_WORKER_PREFETCH_SECONDS=1 (what docs/deployments.md ships)
- prefect: Prefect's defaults (query every 10 s in 3.9)

Usage: python -m bench.bench_trigger [--events 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

from tests.fixtures.prefect_server import FAST_WORKER_ENV, PrefectServer, prefect_server, process_worker

POOL = "gpuflow-bench"
EVENT = "gpuflow.bench.ping"

FLOW = """
from prefect import flow


@flow(name="bench_noop")
def bench_noop(seq: int = 0) -> int:
    return seq
"""

PREFECT_YAML = f"""
name: gpuflow-bench
prefect-version: 3.9.1
pull:
  - prefect.deployments.steps.set_working_directory:
      directory: "{{{{ $BENCH_PROJECT_DIR }}}}"
deployments:
  - name: noop
    entrypoint: noop.py:bench_noop
    work_pool: {{name: {POOL}}}
    triggers:
      - type: event
        expect: [{EVENT}]
        match: {{prefect.resource.id: gpuflow.bench.*}}
        parameters: {{seq: "{{{{ event.payload.seq }}}}"}}
"""


def deploy(server: PrefectServer, project: Path) -> None:
    import subprocess

    (project / "noop.py").write_text(textwrap.dedent(FLOW))
    (project / "prefect.yaml").write_text(PREFECT_YAML)
    subprocess.run(
        [sys.executable, "-m", "prefect", "work-pool", "create", POOL, "--type", "process"],
        env=server.client_env(), check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"],
        cwd=project, env=server.client_env(), check=True, capture_output=True, timeout=300,
    )  # fmt: skip


def measure(server: PrefectServer, seq: int, timeout: float = 120.0) -> tuple[float, float]:
    """Emit one ping; seconds from the event to the run's Pending and Running states."""
    from prefect.client.orchestration import get_client
    from prefect.events import emit_event
    from prefect.events.worker import EventsWorker

    occurred = datetime.now(UTC)
    emit_event(event=EVENT, resource={"prefect.resource.id": f"gpuflow.bench.{seq}"}, payload={"seq": seq})
    EventsWorker.drain_all()
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = [r for r in client.read_flow_runs(limit=200) if str(r.parameters.get("seq")) == str(seq)]
            if runs:
                states = {s.type.value: s.timestamp for s in client.read_flow_run_states(runs[0].id)}
                if "RUNNING" in states and "PENDING" in states:
                    return (
                        (states["PENDING"] - occurred).total_seconds(),
                        (states["RUNNING"] - occurred).total_seconds(),
                    )
            time.sleep(0.1)
    raise TimeoutError(f"no Running flow run for ping {seq} within {timeout}s")


def run_setting(
    server: PrefectServer, project: Path, label: str, env: dict[str, str], events: int, first_seq: int
) -> tuple[float, float]:
    pending: list[float] = []
    running: list[float] = []
    with process_worker(
        server, POOL, env={**env, "BENCH_PROJECT_DIR": str(project)}, log_path=project / f"worker-{label}.log"
    ):
        for i in range(events):
            p, r = measure(server, first_seq + i)
            pending.append(p)
            running.append(r)
            print(f"  {label} ping {i + 1}: pending {p:.2f}s running {r:.2f}s", flush=True)
            time.sleep(0.5)
    return statistics.median(pending), statistics.median(running)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=5, help="Events per worker setting.")
    args = parser.parse_args(argv)
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with tempfile.TemporaryDirectory(prefix="gpuflow-bench-trigger-") as tmp:
        root = Path(tmp)
        with prefect_server(root / "prefect-home") as server, temporary_settings({PREFECT_API_URL: server.api_url}):
            project = root / "project"
            project.mkdir()
            deploy(server, project)
            defaults = {"PREFECT_WORKER_QUERY_SECONDS": "10", "PREFECT_WORKER_PREFETCH_SECONDS": "10"}
            fast = run_setting(server, project, "gpuflow", dict(FAST_WORKER_ENV), args.events, 0)
            slow = run_setting(server, project, "prefect-default", defaults, args.events, 1000)
    print(f"\nmedian seconds from event to triggered flow run ({args.events} events each, same server):")
    print(f"{'worker settings':<34}{'Pending':>10}{'Running':>10}")
    print(f"{'gpuflow (query 1 s, prefetch 1 s)':<34}{fast[0]:>10.2f}{fast[1]:>10.2f}")
    print(f"{'prefect default (query 10 s)':<34}{slow[0]:>10.2f}{slow[1]:>10.2f}")
    print(f"ratio default/gpuflow (Running): {slow[1] / fast[1]:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
