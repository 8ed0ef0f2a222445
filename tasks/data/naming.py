"""Default names for a user's own data: the dataset after its file, the model after the dataset.

``gpuflow run --data churn.csv`` without ``--dataset-name`` publishes the dataset ``churn`` and registers the model
``gpuflow-churn``: a team's data never lands under the demo's ``digits`` name, and its first model is not
measured against the digits champion. The bundled demo keeps ``digits`` and ``gpuflow-digits``.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlparse

from tasks.core import settings
from tasks.data.demo import DEMO
from tasks.data.ingest import DATA_SUFFIXES

_NOT_ALLOWED = re.compile(r"[^A-Za-z0-9._-]+")
_PATTERN = re.compile(r"[*?\[]")
FALLBACK = "dataset"  # a name with nothing usable in it (e.g. s3://bucket/*.csv)


def dataset_name_for(data_uri: str) -> str:
    """The file's name without its data suffix; for a pattern (``raw/part-*.parquet``) its folder's name."""
    uri = data_uri.strip()
    if not uri or uri == DEMO:
        return settings.DEFAULT_DATASET_NAME
    path = unquote(urlparse(uri).path) if "://" in uri else uri
    parts = [part for part in path.split("/") if part]
    while parts and _PATTERN.search(parts[-1]):
        parts.pop()
    name = parts[-1] if parts else ""
    if name.lower().endswith(DATA_SUFFIXES):
        name = name[: name.rfind(".")]
    name = _NOT_ALLOWED.sub("-", name).strip("-._")[:128].rstrip("-._")
    return name or FALLBACK


def model_name_for(dataset_name: str) -> str:
    """``gpuflow-<dataset>``: ``gpuflow-digits`` for the demo, as before."""
    return f"gpuflow-{dataset_name}"
