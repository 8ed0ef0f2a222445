"""Params written once: a run keeps the first value of each (MLflow refuses to change one), so a relaunched
trainer or launcher logs only the params its run lacks, and says which it found with another value."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow import MlflowClient

MAX_PARAM_CHARS = 6000  # MLflow's limit on a param's value


def param_text(value: Any) -> str:
    """A param's value as MLflow stores it: strings as they are, everything else as JSON."""
    return (value if isinstance(value, str) else json.dumps(value))[:MAX_PARAM_CHARS]


def log_new_params(
    client: MlflowClient, run_id: str, params: Mapping[str, Any], tags: Mapping[str, str] = {}
) -> list[str]:
    """Log the params ``run_id`` lacks (and ``tags``) in one request; returns the names it already had with
    another value, left as logged."""
    from mlflow.entities import Param, RunTag

    existing = client.get_run(run_id).data.params
    text = {key: param_text(value) for key, value in params.items()}
    new = [Param(key, value) for key, value in text.items() if key not in existing]
    if new or tags:
        client.log_batch(run_id, params=new, tags=[RunTag(key, value) for key, value in (tags or {}).items()])
    return [key for key, value in text.items() if key in existing and existing[key] != value]
