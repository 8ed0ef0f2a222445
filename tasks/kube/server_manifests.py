"""A model server's Kubernetes objects: each track's Deployment, the Service clients use, one Service per track
and the Gateway API HTTPRoute that weights them. Pure: no cluster access; :mod:`tasks.kube.servers` fills them
from a ``KubernetesServing`` block."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tasks.core.errors import ConfigurationError
from tasks.core.types import Track
from tasks.kube.checks import dns_label, dns_subdomain, label_value_checked, whole_number
from tasks.kube.pod_settings import (
    LABEL_COMPONENT,
    LABEL_MODEL,
    LABEL_MODEL_VERSION,
    LABEL_NAME,
    LABEL_TRACK,
    Manifest,
    PodSettings,
    base_labels,
    container_env,
    container_security,
    pod_spec,
    resources,
    volume_mounts,
)

TRACKS: tuple[Track, ...] = ("stable", "canary")
SERVER_CONTAINER = "server"
SERVER_MODULE = "workloads.server"
SERVER_PORT = 8080
SERVICE_PORT = 80


def track_name(name: str, track: str) -> str:
    """``<name>-<track>``: the Deployment and the per-track Service of one track."""
    check_track(track)
    return f"{server_name(name)}-{track}"


def server_name(name: str) -> str:
    """Check a server name: a DNS-1035 label short enough for ``<name>-canary`` and its pods."""
    if len(name) > 40 or not re.match(r"^[a-z]([-a-z0-9]*[a-z0-9])?$", name):
        raise ConfigurationError(
            f"server name must be 1-40 lowercase letters, digits or '-', starting with a letter, got {name!r}"
        )
    return name


def server_deployment(
    name: str,
    *,
    track: Track,
    model_uri: str,
    model_version: str,
    replicas: int,
    settings: PodSettings,
    server_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    secret_keys: Iterable[str] = (),
) -> Manifest:
    """One track's server Deployment: ``python -m workloads.server`` on port 8080 with /readyz and /healthz.

    The selector holds the track (immutable), the pod labels also the model version (a promote changes it).
    ``secret_keys`` are environment variables read from ``settings.secret_name`` by reference.
    """
    deployment = track_name(name, track)
    whole_number(replicas, "replicas", 0)
    if not model_uri.strip() or any(c.isspace() for c in model_uri):
        raise ConfigurationError(f"model URI must be non-empty without spaces, got {model_uri!r}")
    selector = {**server_selector(name), LABEL_TRACK: track}
    labels = {
        **base_labels("server"),
        **settings.labels,
        **selector,
        LABEL_MODEL_VERSION: label_value_checked(model_version, "model version"),
    }
    plain = {**(env or {}), "GPUFLOW_SERVER_PORT": str(SERVER_PORT)}
    secrets = dict.fromkeys(secret_keys, "")
    container = {
        "name": SERVER_CONTAINER,
        "image": settings.image,
        "command": [
            "python",
            "-m",
            SERVER_MODULE,
            "--model-uri",
            model_uri,
            "--host",
            "0.0.0.0",
            "--port=$(GPUFLOW_SERVER_PORT)",
            *server_args,
        ],
        "env": container_env(plain, secrets, settings.secret_name, deployment),
        "ports": [{"name": "http", "containerPort": SERVER_PORT, "protocol": "TCP"}],
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "http"},
            "periodSeconds": 2,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "http"},
            "initialDelaySeconds": 10,
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "resources": resources(settings),
        "securityContext": container_security(),
        "volumeMounts": volume_mounts(),
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": deployment, "namespace": settings.namespace, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            "template": {"metadata": {"labels": labels}, "spec": pod_spec(settings, container)},
        },
    }


def server_selector(name: str) -> dict[str, str]:
    """Labels every server pod of ``name`` has, whatever its track."""
    return {LABEL_NAME: "gpuflow", LABEL_COMPONENT: "server", LABEL_MODEL: server_name(name)}


def server_service(name: str, settings: PodSettings) -> Manifest:
    """The Service clients use: both tracks behind it, so replica counts set the traffic split."""
    return _service(server_name(name), server_selector(name), settings)


def track_service(name: str, track: Track, settings: PodSettings) -> Manifest:
    """One track's own Service, the backend an HTTPRoute weights."""
    return _service(track_name(name, track), {**server_selector(name), LABEL_TRACK: track}, settings)


def _service(service: str, selector: dict[str, str], settings: PodSettings) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": service,
            "namespace": settings.namespace,
            "labels": {**base_labels("server"), **settings.labels, **selector},
        },
        "spec": {
            "type": "ClusterIP",
            "selector": selector,
            "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def http_route(
    name: str,
    *,
    gateway: str,
    gateway_namespace: str | None,
    weights: Mapping[str, int],
    settings: PodSettings,
) -> Manifest:
    """A Gateway API HTTPRoute sending all paths to the per-track Services in proportion to ``weights``."""
    dns_subdomain(gateway, "gateway")
    parent: dict[str, Any] = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": gateway}
    if gateway_namespace:
        parent["namespace"] = dns_label(gateway_namespace, "gateway namespace")
    if not weights:
        raise ConfigurationError("an HTTPRoute needs a weight for at least one track")
    backends = []
    for track, weight in weights.items():
        whole_number(weight, f"weight of track {track}", 0)
        if weight > 1_000_000:
            raise ConfigurationError(f"weight of track {track} must be at most 1000000, got {weight}")
        backends.append(
            {"group": "", "kind": "Service", "name": track_name(name, track), "port": SERVICE_PORT, "weight": weight}
        )
    if sum(weights.values()) == 0:
        raise ConfigurationError("HTTPRoute weights must not all be 0: no request could be served")
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {
            "name": server_name(name),
            "namespace": settings.namespace,
            "labels": {**base_labels("server"), **settings.labels, **server_selector(name)},
        },
        "spec": {
            "parentRefs": [parent],
            "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "backendRefs": backends}],
        },
    }


def check_track(track: str) -> None:
    if track not in TRACKS:
        raise ConfigurationError(f"track must be one of {', '.join(TRACKS)}, got {track!r}")
