"""Event -> Running flow run: how long a gpuflow event takes to start the deployment it triggers.

Starts a real Prefect server (SQLite, private home) and deploys, with Prefect deployment triggers (the mechanism
prefect.yaml chains the stages with), a no-op flow (``bench_noop`` below) and the real ``prepare`` stage. Then,
for each worker setting in turn, it starts a process worker, emits events one at a time (each once the previous
run finished and the server settled, at a random phase of the worker's poll) and reads back when the triggered
run was Scheduled (the server's trigger created it), Pending (the worker claimed it) and Running (the flow
process started, imported the flow module and began the run). Settings compared in the same run, on the same server:

- gpuflow: ``deployments.worker_settings``: poll every 0.5 s, and the pool's command starts Prefect's engine
  directly (one Python process start instead of a workspace supervisor followed by the engine)
- gpuflow poll only (no-op flow): gpuflow's poll with Prefect's default command, to show what each part buys
- prefect default: Prefect's worker defaults (poll every 10 s) and default base job template

Usage: python -m bench.bench_trigger [--events 7] [--stage-events 5]   (about 5 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import flow

if TYPE_CHECKING:
    from uuid import UUID

    from prefect.client.orchestration import SyncPrefectClient

    from tests.fixtures.prefect_server import PrefectServer

ROOT = Path(__file__).resolve().parent.parent
PING = "gpuflow.bench.ping"
STAGE = "gpuflow.bench.prepare"
RUN_TIMEOUT = 300.0


@flow(name="bench_noop")
def bench_noop(seq: int = 0) -> int:
    """Does nothing: the bench measures the way to Running. Lives here so loading it imports almost nothing."""
    return seq


@dataclass(frozen=True)
class Setting:
    label: str
    pool: str
    template: dict[str, Any]
    env: dict[str, str]
    stage: bool  # also measure the real prepare stage with this setting


@dataclass
class Sample:
    scheduled: float
    pending: float
    running: float
    final: str

    @property
    def start(self) -> float:
        """Pending -> Running: the flow process's start, free of the poll's random phase."""
        return self.running - self.pending


@dataclass
class Result:
    setting: Setting
    flow: str
    samples: list[Sample] = field(default_factory=list)

    def median(self, what: str) -> float:
        return statistics.median(getattr(s, what) for s in self.samples)


def settings() -> list[Setting]:
    from prefect.settings.models.worker import WorkerSettings
    from prefect.workers.process import ProcessWorker

    from deployments.worker_settings import WORKER_ENV, process_base_job_template

    prefect_env = {
        "PREFECT_WORKER_QUERY_SECONDS": str(WorkerSettings.model_fields["query_seconds"].default),
        "PREFECT_WORKER_PREFETCH_SECONDS": str(WorkerSettings.model_fields["prefetch_seconds"].default),
    }
    default_template = ProcessWorker.get_default_base_job_template()
    return [
        Setting("gpuflow", "bench-gpuflow", process_base_job_template(), dict(WORKER_ENV), stage=True),
        Setting("gpuflow poll only", "bench-poll-only", default_template, dict(WORKER_ENV), stage=False),
        Setting("prefect default", "bench-prefect-default", default_template, prefect_env, stage=True),
    ]


def slug(setting: Setting) -> str:
    return setting.pool.removeprefix("bench-")


def prefect_yaml(all_settings: list[Setting], stage_events: int) -> dict[str, Any]:
    """The bench's deployments, one no-op (and one prepare) per setting, each on its setting's pool."""
    deployments = []
    for s in all_settings:
        deployments.append(
            {
                "name": f"noop-{slug(s)}",
                "entrypoint": "bench/bench_trigger.py:bench_noop",
                "work_pool": {"name": s.pool},
                "triggers": [
                    {
                        "type": "event",
                        "expect": [PING],
                        "match": {"prefect.resource.id": f"gpuflow.bench.{slug(s)}.*"},
                        "parameters": {"seq": "{{ event.payload.seq }}"},
                    }
                ],
            }
        )
        if s.stage and stage_events:
            deployments.append(
                {
                    "name": f"prepare-{slug(s)}",
                    "entrypoint": "flows/prepare.py:prepare",
                    "work_pool": {"name": s.pool},
                    "triggers": [
                        {
                            "type": "event",
                            "expect": [STAGE],
                            "match": {"prefect.resource.id": f"gpuflow.bench.{slug(s)}.*"},
                            "parameters": {"data_uri": "{{ event.payload.data_uri }}"},
                        }
                    ],
                }
            )
    return {
        "name": "gpuflow-bench",
        "prefect-version": "3.9.1",
        "pull": [{"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}],
        "deployments": deployments,
    }


def deploy(server: PrefectServer, all_settings: list[Setting], stage_events: int, folder: Path) -> None:
    import yaml
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    with get_client(sync_client=True) as client:
        for s in all_settings:
            client.create_work_pool(WorkPoolCreate(name=s.pool, type="process", base_job_template=s.template))
    spec = folder / "prefect.yaml"
    spec.write_text(yaml.safe_dump(prefect_yaml(all_settings, stage_events), sort_keys=False))
    done = subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all", "--prefect-file", str(spec)],
        cwd=ROOT, env=server.client_env(), capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"prefect deploy failed (exit {done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}")


def runs_of(client: SyncPrefectClient, deployment_id: UUID) -> list[Any]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId

    runs: list[Any] = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id]))
    )
    return runs


def measure(client: SyncPrefectClient, deployment: str, event: str, resource: str, payload: dict[str, Any]) -> Sample:
    """Emit one event; seconds from its ``occurred`` to the triggered run's states; wait for the run to end."""
    from prefect.events import emit_event
    from prefect.events.worker import EventsWorker

    deployment_id = client.read_deployment_by_name(deployment).id
    before = {run.id for run in runs_of(client, deployment_id)}
    sent = emit_event(event=event, resource={"prefect.resource.id": resource}, payload=payload)
    EventsWorker.drain_all()
    if sent is None:
        raise RuntimeError("emit_event sent nothing: is PREFECT_API_URL set?")
    occurred: datetime = sent.occurred
    deadline = time.monotonic() + RUN_TIMEOUT
    while time.monotonic() < deadline:
        new = [run for run in runs_of(client, deployment_id) if run.id not in before]
        if new and new[0].state is not None and new[0].state.is_final():
            return sample_of(client, new[0], occurred, deployment)
        time.sleep(0.2)
    raise TimeoutError(f"no finished run of {deployment} for {event} within {RUN_TIMEOUT}s")


def sample_of(client: SyncPrefectClient, run: Any, occurred: datetime, deployment: str) -> Sample:
    """Seconds from the event to each state of a finished run (its state timestamps, set by who proposed them)."""
    states = {s.type.value: s.timestamp for s in client.read_flow_run_states(run.id)}
    if "RUNNING" not in states:
        raise RuntimeError(f"{deployment} run {run.name} ended {run.state.name} without running")
    seconds = {name: (stamp - occurred).total_seconds() for name, stamp in states.items()}
    return Sample(seconds["SCHEDULED"], seconds["PENDING"], seconds["RUNNING"], run.state.name)


@contextmanager
def worker(server: PrefectServer, setting: Setting, folder: Path, home: Path) -> Iterator[None]:
    from tests.fixtures.prefect_server import process_worker

    env = {**setting.env, "GPUFLOW_HOME": str(home)}
    with process_worker(server, setting.pool, env=env, log_path=folder / f"worker-{slug(setting)}.log"):
        yield


SETTLE_SECONDS = 3.0


def pause(setting: Setting) -> None:
    """Let the previous run's tail settle, then start the next event at a random phase of the worker's poll.

    A flow process sends its last state events and logs about a second after its run ended; the server's
    trigger service handles events in order, so an event sent into that tail sometimes waits ~2 s to become a
    flow run. Real events do not arrive just after a bench run: each is measured on a settled server.
    """
    time.sleep(SETTLE_SECONDS + random.uniform(0, float(setting.env["PREFECT_WORKER_QUERY_SECONDS"])))


def run_setting(
    server: PrefectServer, setting: Setting, events: int, stage_events: int, folder: Path, home: Path
) -> list[Result]:
    from prefect.client.orchestration import get_client

    noop = Result(setting, "no-op flow")
    stage = Result(setting, "prepare stage")
    with worker(server, setting, folder, home), get_client(sync_client=True) as client:
        resource = f"gpuflow.bench.{slug(setting)}"
        for i in range(-1, events):  # -1: a warm-up run, not counted (a fresh worker's and server's first run)
            pause(setting)
            sample = measure(client, f"bench_noop/noop-{slug(setting)}", PING, f"{resource}.{i}", {"seq": i})
            if i >= 0:
                noop.samples.append(sample)
            print(f"  {setting.label}, no-op {f'#{i + 1}' if i >= 0 else 'warm-up'}: {describe(sample)}", flush=True)
        for i in range(stage_events if setting.stage else 0):
            pause(setting)
            sample = measure(client, f"prepare/prepare-{slug(setting)}", STAGE, f"{resource}.{i}", {"data_uri": "demo"})
            stage.samples.append(sample)
            print(f"  {setting.label}, prepare #{i + 1}: {describe(sample)}", flush=True)
    return [noop, stage] if stage.samples else [noop]


def describe(s: Sample) -> str:
    return f"scheduled {s.scheduled:.2f}s pending {s.pending:.2f}s running {s.running:.2f}s ({s.final})"


def table(results: list[Result], events: int, stage_events: int, load: list[float]) -> list[str]:
    from deployments.worker_settings import WORKER_ENV, engine_command

    out = [
        "",
        f"median seconds from event to triggered flow run ({events} no-op / {stage_events} prepare events per setting "
        "after a warm-up run, same server, one worker at a time; "
        f"{os.cpu_count()} CPUs, load average {min(load):.1f}-{max(load):.1f}):",
        f"{'worker settings':<20}{'flow':<16}{'Scheduled':>10}{'Pending':>10}{'Running':>10}{'Pending->Running':>18}",
    ]
    for r in results:
        out.append(
            f"{r.setting.label:<20}{r.flow:<16}{r.median('scheduled'):>10.2f}{r.median('pending'):>10.2f}"
            f"{r.median('running'):>10.2f}{r.median('start'):>18.2f}"
        )
    by = {(r.setting.label, r.flow): r.median("running") for r in results}
    for flow_name in ("no-op flow", "prepare stage"):
        if ("gpuflow", flow_name) in by and ("prefect default", flow_name) in by:
            ratio = by[("prefect default", flow_name)] / by[("gpuflow", flow_name)]
            out.append(f"{flow_name}: Prefect default / gpuflow to Running: {ratio:.1f}x")
    env = " ".join(f"{k}={v}" for k, v in WORKER_ENV.items())
    out.append(f"gpuflow = {env}, pool command `{engine_command()}` (deployments/worker_settings.py)")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=7, help="No-op events per worker setting.")
    parser.add_argument("--stage-events", type=int, default=5, help="prepare events for gpuflow and Prefect default.")
    args = parser.parse_args(argv)
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tests.fixtures.prefect_server import prefect_server

    all_settings = settings()
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="gpuflow-bench-trigger-") as tmp:
        root = Path(tmp)
        home = root / "gpuflow-home"
        home.mkdir()
        with prefect_server(root / "prefect-home") as server, temporary_settings({PREFECT_API_URL: server.api_url}):
            deploy(server, all_settings, args.stage_events, root)
            load = [os.getloadavg()[0]]
            for setting in all_settings:
                results.extend(run_setting(server, setting, args.events, args.stage_events, root, home))
                load.append(os.getloadavg()[0])
    print("\n".join(table(results, args.events, args.stage_events, load)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
