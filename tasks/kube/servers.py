"""Model servers on a cluster: their names, and the Deployment of each track, built in one place.

Both the rollout (:class:`tasks.kube.cluster_serving.ClusterServing`) and ``gpuflow manifests serve`` build a
track's Deployment with :func:`track_deployment` from a ``KubernetesServing`` block and the rollout's tracking
URI, so what the command prints is what a rollout creates, by construction.
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING, Any

from tasks.core.types import Track
from tasks.kube.pod_settings import PodSettings
from tasks.kube.server_manifests import server_deployment, server_name

if TYPE_CHECKING:
    from blocks.kubernetes_serving import KubernetesServing


def server_name_for(model_name: str) -> str:
    """A registered model's name as a server name: lowercase DNS label, at most 40 characters, hashed if cut."""
    slug = re.sub(r"[^a-z0-9]+", "-", model_name.lower()).strip("-")
    if not slug or not slug[0].isalpha():
        slug = f"m-{slug}".rstrip("-")
    if len(slug) > 40:
        digest = hashlib.sha256(model_name.encode()).hexdigest()[:8]
        slug = f"{slug[:31].rstrip('-')}-{digest}"
    return server_name(slug)


def block_server_name(block: KubernetesServing, model_name: str) -> str:
    """The objects' base name: the block's ``server_name``, else the model's name made a DNS label."""
    return server_name(block.server_name) if block.server_name else server_name_for(model_name)


def server_env(block: KubernetesServing, tracking_uri: str) -> dict[str, str]:
    """The server pods' plain environment: MLflow as the block says pods reach it (else the rollout's own
    tracking URI), then the block's ``env``."""
    return {"MLFLOW_TRACKING_URI": block.tracking_uri or tracking_uri, **block.env}


def track_deployment(
    block: KubernetesServing,
    name: str,
    *,
    track: Track,
    model_uri: str,
    model_version: str,
    replicas: int,
    tracking_uri: str,
    pod: PodSettings | None = None,
) -> dict[str, Any]:
    """The Deployment ``<name>-<track>`` serving ``model_uri`` with the block's pod settings, server flags,
    environment and secret keys (``pod``: the block's settings already checked, to skip checking them again)."""
    return server_deployment(
        name,
        track=track,
        model_uri=model_uri,
        model_version=model_version,
        replicas=replicas,
        settings=pod or block.pod_settings(),
        server_args=block.server_args,
        env=server_env(block, tracking_uri),
        secret_keys=block.secret_keys,
    )
