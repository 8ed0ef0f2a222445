"""MLflow bookkeeping shared by every stage: one parent run per pipeline run, a child run per stage.

Uses an explicit ``MlflowClient`` instead of MLflow's global active-run stack, so concurrent Prefect
tasks and nested flows never write into each other's runs.
"""

from __future__ import annotations

import functools
import hashlib
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

from blocks.mlflow_tracking import MLflowTracking
from tasks.core import settings
from workloads.tags import (
    TAG_DATASET_VERSION,
    TAG_ENVIRONMENT,
    TAG_FLOW_RUN,
    TAG_PARENT,
    TAG_PIPELINE_VERSION,
    TAG_STAGE,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient

_SOURCE_ROOT = Path(__file__).resolve().parents[2]  # the checkout (or install) that holds tasks/


@functools.cache
def pipeline_version() -> str:
    """Package version plus git commit (``GPUFLOW_GIT_COMMIT`` in images built without .git)."""
    try:
        base = version("gpuflow")
    except PackageNotFoundError:
        base = "0+unknown"
    commit = os.environ.get("GPUFLOW_GIT_COMMIT", "")
    if not commit:
        try:
            commit = subprocess.run(
                ["git", "rev-parse", "--short=12", "HEAD"],
                cwd=_SOURCE_ROOT,
                capture_output=True,
                text=True,
                timeout=5,
                check=True,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            commit = "nogit"
    return f"{base}+g{commit}"


@functools.cache
def environment_version() -> str:
    """``lock-<sha256 prefix>`` of the requirements.lock this environment was installed from, or ``unlocked``.

    The lock is found beside the sources (a checkout) or at ``GPUFLOW_LOCK_FILE`` (the image sets it), so a run
    says which exact set of packages produced it, next to the code version.
    """
    configured = os.environ.get("GPUFLOW_LOCK_FILE")
    lock = Path(configured) if configured else _SOURCE_ROOT / "requirements.lock"
    try:
        digest = hashlib.sha256(lock.read_bytes()).hexdigest()
    except OSError:
        return "unlocked"
    return f"lock-{digest[:16]}"


def client_for(tracking: MLflowTracking) -> MlflowClient:
    """Imports MLflow on first use: loading a flow module must stay cheap (a triggered run is Running sooner)."""
    from mlflow import MlflowClient

    _create_sqlite_store_once(tracking.uri)
    return MlflowClient(tracking_uri=tracking.uri, registry_uri=tracking.uri)


@functools.cache
def _create_sqlite_store_once(uri: str) -> None:
    """Create (or migrate) a SQLite store under a file lock beside it, once per process.

    MLflow creates the tables of an empty database on first use, and two commands doing so at once on one
    home race. Later writes are safe: MLflow sets ``PRAGMA busy_timeout = 20000`` on every session, so a
    writer waits up to 20 s for another instead of failing with "database is locked".
    """
    if not uri.startswith("sqlite:///"):
        return
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    if not path or path == ":memory:":
        return
    from filelock import FileLock
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore as RegistryStore
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path + ".lock"):
        SqlAlchemyStore(uri, settings.artifact_root())
        RegistryStore(uri)


def experiment_id(tracking: MLflowTracking) -> str:
    """The experiment's id, created on first use (artifacts under GPUFLOW_HOME on a local store)."""
    client = client_for(tracking)
    existing = client.get_experiment_by_name(tracking.experiment_name)
    if existing is not None:
        return str(existing.experiment_id)
    artifact_location = settings.artifact_root() if tracking.uri.startswith("sqlite:") else None
    try:
        return str(client.create_experiment(tracking.experiment_name, artifact_location=artifact_location))
    except Exception:  # created concurrently by another stage
        again = client.get_experiment_by_name(tracking.experiment_name)
        if again is None:
            raise
        return str(again.experiment_id)


def current_flow_run_id() -> str:
    from prefect.context import get_run_context

    try:
        ctx = get_run_context()
    except Exception:
        return ""
    flow_run = getattr(ctx, "flow_run", None)
    if flow_run is None and hasattr(ctx, "task_run"):
        return str(ctx.task_run.flow_run_id or "")
    return str(flow_run.id) if flow_run else ""


def start_run(
    tracking: MLflowTracking,
    run_name: str,
    *,
    stage: str,
    parent_run_id: str | None = None,
    dataset_version: str | None = None,
) -> str:
    """Create an MLflow run tagged the way DESIGN.md says and return its id."""
    tags = {
        TAG_STAGE: stage,
        TAG_PIPELINE_VERSION: pipeline_version(),
        TAG_ENVIRONMENT: environment_version(),
        TAG_FLOW_RUN: current_flow_run_id(),
        "mlflow.runName": run_name,
    }
    if parent_run_id:
        tags[TAG_PARENT] = parent_run_id
    if dataset_version:
        tags[TAG_DATASET_VERSION] = dataset_version
    run = client_for(tracking).create_run(experiment_id(tracking), tags=tags, run_name=run_name)
    return str(run.info.run_id)


@contextmanager
def stage_run(
    tracking: MLflowTracking,
    stage: str,
    *,
    parent_run_id: str | None = None,
    dataset_version: str | None = None,
) -> Iterator[str]:
    """A child run for one stage; FINISHED on success, FAILED on any error (then re-raised)."""
    run_id = start_run(tracking, stage, stage=stage, parent_run_id=parent_run_id, dataset_version=dataset_version)
    client = client_for(tracking)
    try:
        yield run_id
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")


def record_gpu_inventory(tracking: MLflowTracking, run_id: str) -> str:
    """Tag a stage run with the GPUs NVML sees ("no GPU" is a normal answer); returns the summary line."""
    from workloads.gpu import inventory

    gpus = inventory()
    client = client_for(tracking)
    for key, value in gpus.as_tags().items():
        client.set_tag(run_id, key, value)
    return gpus.describe()
