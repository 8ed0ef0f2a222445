"""Refuse a tracking URI or a store that only this machine can reach, before anything is created on a cluster.

A pod runs on another machine with its own disk: a ``sqlite:`` or ``file:`` MLflow store, or a store root that is a
local folder, would be an empty file or folder inside the pod (or a pod's writes lost with it), so the stage would
fail late or, worse, log nowhere. Both Kubernetes blocks and the flows that use them check here first.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from tasks.core.errors import ConfigurationError

_TRACKING_SCHEMES = ("http", "https", "databricks")
_STORE_SCHEMES = ("s3",)


def check_tracking_uri(uri: str, where: str) -> None:
    """``uri`` must be an MLflow server pods can reach (``http(s)://``; ``databricks`` too)."""
    scheme = urlsplit(uri).scheme.lower()
    if scheme not in _TRACKING_SCHEMES:
        raise ConfigurationError(
            f"{where}: the MLflow tracking URI {uri!r} is on this machine, and pods on a cluster cannot reach it; "
            "use an MLflow server both reach, e.g. http://mlflow.gpuflow:5000 (an MLflowTracking block's "
            "tracking_uri, or MLFLOW_TRACKING_URI)"
        )


def check_store_uri(uri: str, where: str) -> None:
    """``uri`` must be an object store pods can reach (``s3://``, MinIO and other S3-compatible stores included)."""
    scheme = urlsplit(uri).scheme.lower()
    if scheme not in _STORE_SCHEMES:
        raise ConfigurationError(
            f"{where}: the store {uri!r} is a folder on this machine, and pods on a cluster cannot reach it; "
            "use an object store both reach, e.g. s3://bucket/gpuflow (a DataStore block's root_uri with "
            "s3_endpoint_url for MinIO, or GPUFLOW_STORE_URI)"
        )


def check_reachable(env: dict[str, str], where: str) -> None:
    """Check the workload environment's ``MLFLOW_TRACKING_URI`` and ``GPUFLOW_STORE_URI``, where present."""
    if env.get("MLFLOW_TRACKING_URI"):
        check_tracking_uri(env["MLFLOW_TRACKING_URI"], where)
    if env.get("GPUFLOW_STORE_URI"):
        check_store_uri(env["GPUFLOW_STORE_URI"], where)
