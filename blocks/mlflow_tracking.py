"""The MLflow tracking block: which tracking server and experiment a pipeline reports to."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field

from blocks.loading import load_saved
from tasks.core import settings


class MLflowTracking(Block):
    """Where runs, models and the registry live: an MLflow server URL or a SQLite store.

    Example:
        ```python
        from blocks.mlflow_tracking import MLflowTracking
        tracking = MLflowTracking.load("BLOCK_NAME")  # e.g. "team-mlflow"
        ```
    """

    _block_type_name = "gpuflow MLflow Tracking"
    _block_type_slug = "gpuflow-mlflow-tracking"

    tracking_uri: str = Field(
        default="",
        description="MLflow tracking URI (http://host:5000, sqlite:///path). Empty: MLFLOW_TRACKING_URI "
        "or SQLite under GPUFLOW_HOME.",
    )
    experiment_name: str = Field(default=settings.DEFAULT_EXPERIMENT, description="MLflow experiment for gpuflow runs.")

    @classmethod
    def embedded(cls) -> MLflowTracking:
        return cls(tracking_uri=settings.tracking_uri())

    @property
    def uri(self) -> str:
        return self.tracking_uri or settings.tracking_uri()


def resolve_tracking(name: str | None) -> MLflowTracking:
    """A saved block by name, or the embedded default when no name is given."""
    return load_saved(MLflowTracking, name) if name else MLflowTracking.embedded()
