"""Embedded defaults: where gpuflow keeps its state when no server is configured.

Everything lives under ``GPUFLOW_HOME`` (default ``./.gpuflow``): the MLflow SQLite store, its
artifacts and the data store. ``MLFLOW_TRACKING_URI`` and ``GPUFLOW_STORE_URI`` override the pieces.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_EXPERIMENT = "gpuflow"
DEFAULT_MODEL_NAME = "gpuflow-digits"
DEFAULT_DATASET_NAME = "digits"


def home() -> Path:
    """The gpuflow home folder, created on first use."""
    path = Path(os.environ.get("GPUFLOW_HOME", ".gpuflow")).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def store_uri() -> str:
    """Root URI of the data store: datasets, checkpoints and raw demo data live under it."""
    explicit = os.environ.get("GPUFLOW_STORE_URI")
    if explicit:
        return explicit.rstrip("/")
    return (home() / "store").as_uri()


def tracking_uri() -> str:
    """MLflow tracking URI: ``MLFLOW_TRACKING_URI`` or SQLite under the home folder."""
    explicit = os.environ.get("MLFLOW_TRACKING_URI")
    if explicit:
        return explicit
    return f"sqlite:///{home() / 'mlflow.db'}"


def artifact_root() -> str:
    """Where MLflow puts artifacts for experiments gpuflow creates on the embedded store."""
    return (home() / "mlartifacts").as_uri()
