"""gpuflow on a real Prefect server with a real process worker: bootstrap, typed UI runs, the event chain.

One server and one worker for the module (starting them takes seconds); the tests run in file order and the
chain test relies on the earlier ones only for the bootstrapped server. The chain itself is a module fixture:
the chain test and the chain-versus-ml_pipeline test share one run of it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from mlflow import MlflowClient
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterDeploymentId,
)
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule
from prefect.flows import load_flow_from_entrypoint
from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings
from prefect.utilities.callables import parameter_schema

from deployments import PROJECT_ROOT, deployment_entrypoints
from deployments.bootstrap import BootstrapReport, bootstrap, declared_deployments
from flows.prefect_server import deliver_events_and_logs
from tasks.core import settings
from tasks.data.demo import digits_csv_bytes
from tasks.tracking import events
from tests.fixtures.prefect_events import read_events
from tests.fixtures.prefect_server import FAST_WORKER_ENV, PrefectServer, prefect_server, process_worker
from workloads.tags import TAG_DATASET_VERSION, TAG_FLOW_RUN, TAG_GATE_PASSED, TAG_PARENT

CHAIN_TIMEOUT = 300.0
RUN_TIMEOUT = 120.0


@dataclass(frozen=True)
class Stack:
    server: PrefectServer
    gpuflow_home: Path
    report: BootstrapReport


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Server, bootstrap (in this process, as `gpuflow bootstrap` does), then a worker with a private GPUFLOW_HOME."""
    root = tmp_path_factory.mktemp("deployments")
    home = root / "gpuflow-home"
    home.mkdir()
    saved = {k: os.environ.get(k) for k in ("PREFECT_API_URL", "PREFECT_HOME", "GPUFLOW_HOME")}
    with prefect_server(root / "prefect-home") as server:
        os.environ.update(
            {"PREFECT_API_URL": server.api_url, "PREFECT_HOME": str(server.home), "GPUFLOW_HOME": str(home)}
        )
        try:
            deliver_events_and_logs()  # the suite's server gets its events; the next ones go to this server
            with temporary_settings(updates={PREFECT_API_URL: server.api_url, PREFECT_HOME: str(server.home)}):
                report = bootstrap(PROJECT_ROOT)
                worker_env = {
                    **FAST_WORKER_ENV,
                    "GPUFLOW_HOME": str(home),
                    "GPUFLOW_PROJECT_DIR": str(PROJECT_ROOT),
                }
                with process_worker(server, "gpuflow-process", env=worker_env, log_path=root / "worker.log"):
                    yield Stack(server=server, gpuflow_home=home, report=report)
                # Before this server stops: otherwise Prefect's events worker stays bound to it, and every later
                # test in this process loses its events (and the session's end waits on them).
                deliver_events_and_logs()
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


AUTOMATIONS = {
    "prepare": "gpuflow prepare on data arrived",
    "train": "gpuflow train on dataset prepared",
    "evaluate": "gpuflow evaluate on model trained",
    "rollout": "gpuflow rollout on model evaluated",
}


def concurrency_limit(client: SyncPrefectClient, name: str) -> int | None:
    deployment = client.read_deployment_by_name(name)
    if deployment.global_concurrency_limit is not None:
        return deployment.global_concurrency_limit.limit
    return deployment.concurrency_limit


def deployment_id(client: SyncPrefectClient, name: str) -> UUID:
    return client.read_deployment_by_name(name).id


def runs_of(client: SyncPrefectClient, name: str) -> list[FlowRun]:
    dep = deployment_id(client, name)
    return client.read_flow_runs(
        flow_run_filter=FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=[dep])),
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep])),
    )


def wait_final(client: SyncPrefectClient, run_id: UUID, timeout: float = RUN_TIMEOUT) -> FlowRun:
    deadline = time.monotonic() + timeout
    while True:
        run = client.read_flow_run(run_id)
        if run.state is not None and run.state.is_final():
            return run
        if time.monotonic() > deadline:
            raise AssertionError(f"flow run {run.name} still {run.state_name} after {timeout}s")
        time.sleep(1)


def wait_new_run(client: SyncPrefectClient, name: str, known: set[UUID], timeout: float) -> FlowRun:
    deadline = time.monotonic() + timeout
    while True:
        fresh = [r for r in runs_of(client, name) if r.id not in known]
        if fresh:
            return fresh[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"no new flow run of {name} within {timeout}s")
        time.sleep(1)


def set_automation(client: SyncPrefectClient, name: str, *, enabled: bool) -> None:
    (automation,) = client.read_automations_by_name(name)
    if enabled:
        client.resume_automation(automation.id)
    else:
        client.pause_automation(automation.id)


def final_message(client: SyncPrefectClient, run: FlowRun) -> str:
    assert run.state is not None
    return f"{run.state.name}: {run.state.message}"


# -- bootstrap ------------------------------------------------------------------------------------------


def test_bootstrap_creates_the_pool_blocks_and_every_deployment(stack: Stack) -> None:
    created = stack.report.created
    assert created["work_pools"] == ["gpuflow-process"]
    assert set(created["deployments"]) == set(declared_deployments(PROJECT_ROOT))
    assert "gpuflow-data-store/default" in created["blocks"]
    with get_client(sync_client=True) as client:
        pipeline = client.read_deployment_by_name("ml_pipeline/ml-pipeline")
        assert pipeline.version == stack.report.version and "+g" in pipeline.version
        for name in ("ml_pipeline/ml-pipeline", "rollout/rollout"):
            assert concurrency_limit(client, name) == 1, name
        (schedule,) = pipeline.schedules
        assert isinstance(schedule.schedule, CronSchedule)
        assert schedule.schedule.cron == "0 2 * * *" and schedule.schedule.timezone == "UTC"
        (sensor_schedule,) = client.read_deployment_by_name("storage_sensor/storage-sensor").schedules
        assert isinstance(sensor_schedule.schedule, IntervalSchedule)
        assert sensor_schedule.schedule.interval.total_seconds() == 300
        for automation in AUTOMATIONS.values():
            (found,) = client.read_automations_by_name(automation)
            assert found.enabled


def test_a_second_bootstrap_creates_nothing(stack: Stack) -> None:
    again = bootstrap(PROJECT_ROOT)
    assert not again.created_anything, again.created
    assert set(again.existing["deployments"]) == set(declared_deployments(PROJECT_ROOT))
    with get_client(sync_client=True) as client:
        for name in ("prepare", "train", "evaluate", "rollout"):
            automations = [a for a in client.read_automations() if a.name.startswith(f"gpuflow {name} on ")]
            assert len(automations) == 1, f"{name}: {len(automations)} automations after a second bootstrap"


@pytest.mark.parametrize("deployment", sorted(deployment_entrypoints()))
def test_served_parameter_form_matches_the_flow_signature(stack: Stack, deployment: str) -> None:
    flow: Any = load_flow_from_entrypoint(str(PROJECT_ROOT / deployment_entrypoints()[deployment]))
    with get_client(sync_client=True) as client:
        served = client.read_deployment_by_name(f"{flow.name}/{deployment}").parameter_openapi_schema
    expected = parameter_schema(flow).model_dump_for_openapi()
    assert served is not None
    assert served["properties"] == expected["properties"]
    assert sorted(served.get("required", [])) == sorted(expected.get("required", []))


# -- runs from the UI and from events -------------------------------------------------------------------


def test_a_run_created_with_parameters_like_the_ui_completes(stack: Stack) -> None:
    with get_client(sync_client=True) as client:
        set_automation(client, "gpuflow train on dataset prepared", enabled=False)  # this test is about prepare
        try:
            dep = deployment_id(client, "prepare/prepare")
            run = client.create_flow_run_from_deployment(
                dep, parameters={"data_uri": "demo", "dataset_name": "ui-digits"}
            )
            done = wait_final(client, run.id)
        finally:
            set_automation(client, "gpuflow train on dataset prepared", enabled=True)
        assert done.state is not None and done.state.is_completed(), final_message(client, done)
        assert done.parameters["dataset_name"] == "ui-digits"
    assert (stack.gpuflow_home / "store" / "datasets" / "ui-digits").is_dir()


def test_a_malformed_event_fails_the_triggered_flow_with_a_clear_message(stack: Stack) -> None:
    with get_client(sync_client=True) as client:
        known = {r.id for r in runs_of(client, "train/train")}
        emitted = subprocess.run(  # `gpuflow emit`, as a user would send it
            [sys.executable, "-m", "flows.cli", "emit", events.DATASET_PREPARED,
             "--resource", "gpuflow.dataset.broken", "--payload", '{"dataset_name": "broken"}'],
            env=stack.server.client_env(), cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert emitted.returncode == 0, emitted.stdout + emitted.stderr
        run = wait_final(client, wait_new_run(client, "train/train", known, timeout=60).id)
        assert run.state is not None and run.state.is_failed(), final_message(client, run)
        assert run.parameters["dataset_uri"] == ""
        message = run.state.message or ""
        assert "no prepared dataset" in message and "dataset_uri" in message, message


@dataclass(frozen=True)
class Chain:
    """One file taken by the event chain, sensor -> prepare -> train -> evaluate -> rollout, to its end."""

    raw: Path
    sensor_params: dict[str, Any]
    mtime: float
    rollout: FlowRun
    seconds: float


@pytest.fixture(scope="module")
def chain(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Chain:
    watched = tmp_path_factory.mktemp("chain") / "incoming"
    watched.mkdir()
    raw = watched / "digits-2026-11-27.csv"
    raw.write_bytes(digits_csv_bytes())
    old = time.time() - 120
    os.utime(raw, (old, old))
    sensor_params: dict[str, Any] = {"prefix_uri": str(watched), "sensor_name": "chain-test", "settle_seconds": 5}
    started = time.monotonic()
    with get_client(sync_client=True) as client:
        known = {name: {r.id for r in runs_of(client, name)} for name in ("prepare/prepare", "rollout/rollout")}
        sensor_dep = deployment_id(client, "storage_sensor/storage-sensor")
        poll = wait_final(client, client.create_flow_run_from_deployment(sensor_dep, parameters=sensor_params).id)
        assert poll.state is not None and poll.state.is_completed(), final_message(client, poll)

        prepare_run = wait_new_run(client, "prepare/prepare", known["prepare/prepare"], timeout=60)
        assert prepare_run.parameters["data_uri"] == str(raw)
        rollout_run = wait_new_run(client, "rollout/rollout", known["rollout/rollout"], timeout=CHAIN_TIMEOUT)
        rollout_done = wait_final(client, rollout_run.id, timeout=CHAIN_TIMEOUT)
    return Chain(raw, sensor_params, old, rollout_done, time.monotonic() - started)


def test_a_new_file_runs_the_whole_chain_to_a_champion_and_the_same_file_again_starts_nothing(
    stack: Stack, chain: Chain
) -> None:
    raw, sensor_params, old, rollout_done = chain.raw, chain.sensor_params, chain.mtime, chain.rollout
    with get_client(sync_client=True) as client:
        assert rollout_done.state is not None and rollout_done.state.is_completed(), final_message(client, rollout_done)

        mlflow = MlflowClient(tracking_uri=f"sqlite:///{stack.gpuflow_home / 'mlflow.db'}")
        champion = mlflow.get_model_version_by_alias(settings.DEFAULT_MODEL_NAME, "champion")
        assert str(champion.version) == rollout_done.parameters["candidate_version"]
        assert champion.tags.get(TAG_GATE_PASSED) == "true"

        # The same bytes dropped again (new mtime): the sensor remembers them, no prepare run starts.
        sensor_dep = deployment_id(client, "storage_sensor/storage-sensor")
        arrived_before = len(read_events(events.DATA_ARRIVED))
        prepare_before = {r.id for r in runs_of(client, "prepare/prepare")}
        raw.unlink()
        shutil.copyfile(_write_copy(raw), raw)
        os.utime(raw, (old + 60, old + 60))
        again = wait_final(client, client.create_flow_run_from_deployment(sensor_dep, parameters=sensor_params).id)
        assert again.state is not None and again.state.is_completed(), final_message(client, again)
        time.sleep(5)
        assert {r.id for r in runs_of(client, "prepare/prepare")} == prepare_before
        assert len(read_events(events.DATA_ARRIVED)) == arrived_before
    print(f"sensor -> rollout chain completed in {chain.seconds:.1f}s")


PIPELINE_MODEL = "gpuflow-digits-pipeline"
SAME_TRAINING = ("epochs", "batch_size", "learning_rate", "hidden_size", "seed")
SAME_METRICS = ("test_accuracy", "test_macro_f1", "test_log_loss")


def test_the_chained_stages_and_ml_pipeline_give_the_same_result_on_the_same_file(stack: Stack, chain: Chain) -> None:
    """ml-pipeline on the chain's raw file, with the chain's training parameters, reaches the same model and verdict.

    Its own model name so it too starts with no champion (no canary against the chain's); its own dataset name so
    prepare really runs (no cache hit) and the dataset version is recomputed, not found.
    """
    mlflow = MlflowClient(tracking_uri=f"sqlite:///{stack.gpuflow_home / 'mlflow.db'}")
    chained = mlflow.get_model_version_by_alias(settings.DEFAULT_MODEL_NAME, "champion")
    chained_train = mlflow.get_run(chained.tags["gpuflow.train_run_id"]).data.params
    training = {key: chained_train[key] for key in SAME_TRAINING}
    parameters: dict[str, Any] = {
        "data_uri": str(chain.raw),
        "dataset_name": "digits-pipeline",
        "model_name": PIPELINE_MODEL,
        "epochs": int(training["epochs"]),
        "batch_size": int(training["batch_size"]),
        "learning_rate": float(training["learning_rate"]),
        "hidden_size": int(training["hidden_size"]),
        "seed": int(training["seed"]),
    }
    started = time.monotonic()
    with get_client(sync_client=True) as client:
        # ml_pipeline's stages emit the chain's events too: with the automations on, they would start a second,
        # chained train -> evaluate -> rollout on this dataset (and a canary against the chain's champion).
        for automation in AUTOMATIONS.values():
            set_automation(client, automation, enabled=False)
        try:
            dep = deployment_id(client, "ml_pipeline/ml-pipeline")
            run = client.create_flow_run_from_deployment(dep, parameters=parameters)
            done = wait_final(client, run.id, timeout=CHAIN_TIMEOUT)
        finally:
            for automation in AUTOMATIONS.values():
                set_automation(client, automation, enabled=True)
        assert done.state is not None and done.state.is_completed(), final_message(client, done)
    seconds = time.monotonic() - started

    piped = mlflow.get_model_version_by_alias(PIPELINE_MODEL, "champion")
    assert {key: mlflow.get_run(piped.tags["gpuflow.train_run_id"]).data.params[key] for key in SAME_TRAINING} == (
        training
    )
    assert piped.tags[TAG_DATASET_VERSION] == chained.tags[TAG_DATASET_VERSION]
    assert (stack.gpuflow_home / "store" / "datasets" / "digits-pipeline" / piped.tags[TAG_DATASET_VERSION]).is_dir()
    chained_eval = mlflow.get_run(chained.tags["gpuflow.evaluate_run_id"]).data
    piped_eval = mlflow.get_run(piped.tags["gpuflow.evaluate_run_id"]).data
    # Seeded training on CPU in a fresh process each time: bit-identical, so exact equality.
    assert {k: piped_eval.metrics[k] for k in SAME_METRICS} == {k: chained_eval.metrics[k] for k in SAME_METRICS}
    for version, evaluated in ((chained, chained_eval), (piped, piped_eval)):
        assert version.tags[TAG_GATE_PASSED] == "true", version.tags
        assert evaluated.tags["gpuflow.previous_champion_version"] == "", "both start with no champion"
        assert evaluated.tags["gpuflow.model_version"] == str(version.version)
    pipeline_run = mlflow.get_run(piped_eval.tags[TAG_PARENT]).data
    assert pipeline_run.tags[TAG_FLOW_RUN] == str(done.id)
    assert pipeline_run.tags["gpuflow.model_version"] == str(piped.version)
    assert pipeline_run.tags["gpuflow.gate.passed"] == "true"
    assert pipeline_run.metrics["test_accuracy"] == chained_eval.metrics["test_accuracy"]
    assert str(chained.version) == chain.rollout.parameters["candidate_version"]
    print(f"ml-pipeline on the chain's file: same dataset, metrics and verdict in {seconds:.1f}s")


def _write_copy(raw: Path) -> Path:
    copy = raw.parent.parent / f"copy-of-{raw.name}"
    copy.write_bytes(digits_csv_bytes())
    return copy
