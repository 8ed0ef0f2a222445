"""A logged or registered model's MLmodel file (its flavors and signature) alone, without its weights.

The canary's replayed traffic is shaped by it (tasks/rollout/replay.py): a model may take a category column as the
vocabulary's strings or as codes (workloads/model_input.py).
"""

from __future__ import annotations

import tempfile
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

from blocks.mlflow_tracking import MLflowTracking
from tasks.core.errors import ConfigurationError
from tasks.core.mlflow_errors import not_found_as
from tasks.tracking.model_registry import model_location
from tasks.tracking.runs import client_for

if TYPE_CHECKING:
    from mlflow.models import Model

MLMODEL = "MLmodel"


def read_mlmodel(tracking: MLflowTracking, model_uri: str) -> Model | None:
    """The model's MLmodel file (flavors, signature); None when its folder holds no readable one (not an MLflow
    model: its server is the judge, and a canary that cannot serve is rolled back). A version that is not there is
    a ``ConfigurationError`` naming it; an MLflow outage passes through (a retry may pass)."""
    import mlflow.artifacts
    from mlflow.models import Model

    with not_found_as(lambda: ConfigurationError(f"no model at {model_uri} in MLflow at {tracking.uri}")):
        location = model_location(client_for(tracking), model_uri).rstrip("/")
        listed = mlflow.artifacts.list_artifacts(artifact_uri=location, tracking_uri=tracking.uri)
    if not any(PurePosixPath(entry.path).name == MLMODEL and not entry.is_dir for entry in listed or ()):
        return None
    with tempfile.TemporaryDirectory(prefix="gpuflow-signature-") as folder:
        path = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{location}/{MLMODEL}", dst_path=folder, tracking_uri=tracking.uri
        )
        try:
            return Model.load(path)
        except Exception:  # not an MLmodel file: the server refuses it too
            return None
