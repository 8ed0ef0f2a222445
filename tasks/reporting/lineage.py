"""What is behind a registered model version: its data, its training, its code, its test figures and its cost.

Walks MLflow only: registry version -> its tags and run id (the train run) -> the train run's params and tags
(dataset, hyperparameters, pipeline version) -> the evaluate run named on the version (test metrics) -> the
pipeline run the train run belongs to, whose stages' telemetry gives the GPU figures and the cost.

``MODEL`` alone means its ``champion``, else its newest version; ``MODEL@ALIAS`` and ``MODEL/VERSION`` pick one.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from pydantic import BaseModel, ConfigDict, Field

from blocks.mlflow_tracking import MLflowTracking
from blocks.pricing import GpuPricing
from tasks.core.errors import ConfigurationError
from tasks.core.mlflow_errors import is_not_found, not_found_as
from tasks.reporting.run_data import stage_runs
from tasks.reporting.stage_telemetry import pipeline_gpu_and_cost, read_summary_document
from tasks.tracking.model_registry import CHAMPION
from tasks.tracking.runs import client_for
from workloads.tags import (
    TAG_DATASET_VERSION,
    TAG_ENVIRONMENT,
    TAG_EVALUATE_RUN,
    TAG_GATE_PASSED,
    TAG_PARENT,
    TAG_PIPELINE_VERSION,
    TAG_STOP_REASON,
    TAG_TEST_METRIC_PREFIX,
    TAG_TRAIN_RUN,
    TAG_TRAINER,
    TAG_TRAINING_ID,
)

HYPERPARAMETERS = (
    "epochs", "batch_size", "learning_rate", "hidden_size", "dropout", "seed", "optimizer", "early_stop", "patience",
    "device",
)  # fmt: skip
_VERSION = re.compile(r"^(?P<name>.+)/(?P<version>\d+)$")


class LineageNotFound(ConfigurationError):
    """The model, alias or version asked for does not exist; the message says what does."""


class Lineage(BaseModel):
    """The answer of ``gpuflow lineage``; ``--json`` prints it as one object."""

    model_config = ConfigDict(frozen=True)

    model_name: str
    model_version: str
    aliases: list[str] = Field(description="Aliases pointing at this version (champion, challenger).")
    model_uri: str
    registered_at: str | None
    dataset: dict[str, str | None] = Field(description="name, version and uri of the prepared dataset.")
    training_run: dict[str, Any] = Field(description="run_id, status, started_at, training_id, stop_reason.")
    pipeline_run_id: str | None
    evaluate_run_id: str | None
    code_version: str | None = Field(description="gpuflow.pipeline_version of the train run (package + git commit).")
    environment: str | None = Field(description="gpuflow.environment of the train run: the lock file's digest.")
    trainer: str | None = Field(
        default=None, description="gpuflow.trainer of the train run: the built-in MLP, an entry point, a command."
    )
    hyperparameters: dict[str, str]
    test_metrics: dict[str, float]
    gate_passed: bool | None
    gpu: dict[str, Any]
    cost: dict[str, Any]


def _hyperparameters(params: dict[str, str]) -> dict[str, str]:
    """A custom trainer's hyperparameters (the ``hyperparameters`` param, JSON), else the built-in MLP's params."""
    try:
        custom = json.loads(params["hyperparameters"])
    except (KeyError, ValueError):
        return {k: params[k] for k in HYPERPARAMETERS if k in params}
    return {str(k): str(v) for k, v in custom.items()} if isinstance(custom, dict) else {}


def parse_model_spec(spec: str) -> tuple[str, str | None, str | None]:
    """``name@alias`` / ``name/version`` / ``name`` -> (name, alias, version)."""
    if "@" in spec:
        name, _, alias = spec.rpartition("@")
        if not name or not alias:
            raise LineageNotFound(f"expected MODEL, MODEL@ALIAS or MODEL/VERSION, got {spec!r}")
        return name, alias, None
    found = _VERSION.match(spec)
    if found:
        return found["name"], None, found["version"]
    if not spec.strip():
        raise LineageNotFound("expected MODEL, MODEL@ALIAS or MODEL/VERSION, got an empty name")
    return spec, None, None


def _versions(client: MlflowClient, name: str) -> list[ModelVersion]:
    return sorted(client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))


def resolve_version(client: MlflowClient, spec: str) -> tuple[ModelVersion, list[str]]:
    """The registry version ``spec`` names and the aliases on it; ``LineageNotFound`` says what exists instead."""
    name, alias, version = parse_model_spec(spec)
    if "'" in name:
        raise LineageNotFound(f"model name {name!r} contains a quote, which MLflow filters cannot express")
    with not_found_as(lambda: LineageNotFound(f"model {name!r} is not registered in MLflow at {client.tracking_uri}")):
        model = client.get_registered_model(name)
    aliases = {a: str(v) for a, v in model.aliases.items()}
    versions = _versions(client, name)
    known = ", ".join(str(v.version) for v in versions) or "none"
    if alias is not None:
        if alias not in aliases:
            have = ", ".join(sorted(aliases)) or "none"
            raise LineageNotFound(f"model {name!r} has no alias {alias!r} (aliases: {have})")
        version = aliases[alias]
    elif version is None:
        if not versions:
            raise LineageNotFound(f"model {name!r} has no versions yet")
        version = aliases.get(CHAMPION, str(versions[-1].version))
    chosen = next((v for v in versions if str(v.version) == str(version)), None)
    if chosen is None:
        raise LineageNotFound(f"model {name!r} has no version {version} (versions: {known})")
    return chosen, sorted(a for a, v in aliases.items() if v == str(chosen.version))


def _run(client: MlflowClient, run_id: str | None) -> Run | None:
    if not run_id:
        return None
    try:
        return client.get_run(run_id)
    except MlflowException as exc:
        if is_not_found(exc):
            return None
        raise


def _iso(millis: int | None) -> str | None:
    return datetime.fromtimestamp(millis / 1000, tz=UTC).isoformat(timespec="seconds") if millis else None


def _telemetry_runs(client: MlflowClient, train: Run, evaluate: Run | None) -> dict[str, Run]:
    """Stage runs whose cost belongs to this version: the whole pipeline when there is one."""
    parent = _run(client, train.data.tags.get(TAG_PARENT))
    if parent is not None:
        return stage_runs(client, parent)
    return {"train": train, **({"evaluate": evaluate} if evaluate is not None else {})}


def model_lineage(tracking: MLflowTracking, spec: str, pricing: GpuPricing | None = None) -> Lineage:
    """Everything behind ``spec``; ``LineageNotFound`` when it names nothing."""
    client = client_for(tracking)
    version, aliases = resolve_version(client, spec)
    tags = dict(version.tags or {})
    train = _run(client, version.run_id or tags.get(TAG_TRAIN_RUN))
    if train is None:
        raise LineageNotFound(
            f"model {version.name!r} version {version.version} names no training run that exists in MLflow "
            f"(run id {version.run_id or tags.get(TAG_TRAIN_RUN)!r})"
        )
    evaluate = _run(client, tags.get(TAG_EVALUATE_RUN))
    params, train_tags = train.data.params, train.data.tags
    stages = _telemetry_runs(client, train, evaluate)
    summaries = {stage: (read_summary_document(client, str(run.info.run_id)) or {}) for stage, run in stages.items()}
    gpu, cost = pipeline_gpu_and_cost(
        {stage: doc.get("run", {}) for stage, doc in summaries.items()}, pricing or GpuPricing()
    )
    test_metrics = {
        key.removeprefix("test_"): float(value)
        for key, value in (evaluate.data.metrics if evaluate is not None else {}).items()
        if key.startswith("test_")
    } or {
        key.removeprefix(TAG_TEST_METRIC_PREFIX): float(v)
        for key, v in tags.items()
        if key.startswith(TAG_TEST_METRIC_PREFIX)
    }
    gate = tags.get(TAG_GATE_PASSED)
    return Lineage(
        model_name=version.name,
        model_version=str(version.version),
        aliases=aliases,
        model_uri=f"models:/{version.name}/{version.version}",
        registered_at=_iso(version.creation_timestamp),
        dataset={
            "name": params.get("dataset_name"),
            "version": tags.get(TAG_DATASET_VERSION)
            or train_tags.get(TAG_DATASET_VERSION)
            or params.get("dataset_version"),
            "uri": params.get("dataset_uri"),
        },
        training_run={
            "run_id": str(train.info.run_id),
            "status": train.info.status,
            "started_at": _iso(train.info.start_time),
            "training_id": train_tags.get(TAG_TRAINING_ID),
            "stop_reason": train_tags.get(TAG_STOP_REASON),
            "epochs_run": params.get("epochs_run") or params.get("steps_run"),
        },
        pipeline_run_id=train_tags.get(TAG_PARENT),
        evaluate_run_id=str(evaluate.info.run_id) if evaluate is not None else None,
        code_version=train_tags.get(TAG_PIPELINE_VERSION),
        environment=train_tags.get(TAG_ENVIRONMENT),
        trainer=train_tags.get(TAG_TRAINER),
        hyperparameters=_hyperparameters(params),
        test_metrics=test_metrics,
        gate_passed=None if gate is None else gate == "true",
        gpu=gpu,
        cost=cost,
    )
