"""Emit gpuflow's events: the contract that chains stages through Prefect triggers.

Event names and resource ids are fixed by DESIGN.md; each payload carries what the next stage needs.
"""

from __future__ import annotations

from typing import Any

from prefect.events import emit_event

DATASET_PREPARED = "gpuflow.dataset.prepared"
MODEL_TRAINED = "gpuflow.model.trained"
MODEL_EVALUATED = "gpuflow.model.evaluated"
MODEL_PROMOTED = "gpuflow.model.promoted"
MODEL_ROLLED_BACK = "gpuflow.model.rolled-back"
DATA_ARRIVED = "gpuflow.data.arrived"


def dataset_resource(name: str) -> dict[str, str]:
    return {"prefect.resource.id": f"gpuflow.dataset.{name}", "prefect.resource.name": name}


def model_resource(name: str) -> dict[str, str]:
    return {"prefect.resource.id": f"gpuflow.model.{name}", "prefect.resource.name": name}


def emit(event: str, resource: dict[str, str], payload: dict[str, Any]) -> None:
    """Emit one event; the payload must be JSON-serialisable (no secrets: events are visible in the UI)."""
    emit_event(event=event, resource=resource, payload=payload)
