"""Emit gpuflow's events: the contract that chains stages through Prefect triggers.

Event names and resource ids are fixed by DESIGN.md; each payload carries what the next stage needs.
Every event's resource carries the label ``gpuflow.origin``: ``pipeline`` when a stage runs as a subflow (inside
``ml_pipeline``, which runs the next stage itself) and ``stage`` otherwise. prefect.yaml's triggers match only
``stage``, so a pipeline run never also sets off the deployed chain.
"""

from __future__ import annotations

from typing import Any

from prefect.context import FlowRunContext
from prefect.events import emit_event

DATASET_PREPARED = "gpuflow.dataset.prepared"
MODEL_TRAINED = "gpuflow.model.trained"
MODEL_EVALUATED = "gpuflow.model.evaluated"
MODEL_PROMOTED = "gpuflow.model.promoted"
MODEL_ROLLED_BACK = "gpuflow.model.rolled-back"
DATA_ARRIVED = "gpuflow.data.arrived"
ORIGIN_LABEL = "gpuflow.origin"


def dataset_resource(name: str) -> dict[str, str]:
    return {"prefect.resource.id": f"gpuflow.dataset.{name}", "prefect.resource.name": name}


def model_resource(name: str) -> dict[str, str]:
    return {"prefect.resource.id": f"gpuflow.model.{name}", "prefect.resource.name": name}


def origin() -> str:
    """``pipeline`` inside a parent flow run (the parent chains the stages), else ``stage``."""
    context = FlowRunContext.get()
    flow_run = context.flow_run if context else None
    return "pipeline" if flow_run is not None and flow_run.parent_task_run_id else "stage"


def emit(event: str, resource: dict[str, str], payload: dict[str, Any]) -> None:
    """Emit one event; the payload must be JSON-serialisable (no secrets: events are visible in the UI)."""
    emit_event(event=event, resource={ORIGIN_LABEL: origin(), **resource}, payload=payload)
