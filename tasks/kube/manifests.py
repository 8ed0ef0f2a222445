"""Kubernetes manifests for gpuflow's workloads, as plain dicts: pure functions, no cluster access.

The Job runner, the cluster canary and ``gpuflow manifests`` all build from here, so what a user reviews
is exactly what gets applied. Every input is checked, with a :class:`ConfigurationError` that names the bad
value and what was expected, so a mistake fails before anything is created on a cluster.

This module is the one door: blocks, deployments and the CLI import from it (the import contract lets blocks
import this module and no other of ``tasks.kube``). The builders live by kind of object:

- :mod:`tasks.kube.pod_settings`: :class:`PodSettings` and what every pod is (security, volumes, env, labels);
- :mod:`tasks.kube.job_manifests`: a training's Job and, for several nodes, its headless Service;
- :mod:`tasks.kube.server_manifests`: a model server's Deployments, Services and HTTPRoute;
- :mod:`tasks.kube.rbac`: the ServiceAccounts, Role and RoleBinding of a namespace;
- :mod:`tasks.kube.checks`: names, labels, quantities and resources as Kubernetes accepts them;
- :mod:`tasks.kube.reachable`: the MLflow and store URIs pods on another machine can reach.
"""

from __future__ import annotations

from tasks.core.types import Track
from tasks.core.workload import PERMANENT_EXIT_CODES
from tasks.kube.checks import (
    GPU_RESOURCE,
    dns_label,
    dns_subdomain,
    gpu_resource_name,
    label_key,
    label_value,
    quantity,
)
from tasks.kube.job_manifests import (
    JOB_NAME_MAX,
    LAUNCHER_MODULE,
    TRAINER_CONTAINER,
    JobSettings,
    job_name,
    training_manifests,
)
from tasks.kube.pod_settings import (
    GPU_TOLERATION,
    LABEL_COMPONENT,
    LABEL_JOB,
    LABEL_MANAGED_BY,
    LABEL_MODEL,
    LABEL_MODEL_VERSION,
    LABEL_NAME,
    LABEL_TRACK,
    LABEL_VERSION,
    RUN_AS,
    SCRATCH,
    Manifest,
    PodSettings,
    package_version,
    pod_security_context,
    workload_labels,
)
from tasks.kube.rbac import rbac_manifests
from tasks.kube.reachable import check_reachable, check_store_uri, check_tracking_uri
from tasks.kube.server_manifests import (
    SERVER_CONTAINER,
    SERVER_MODULE,
    SERVER_PORT,
    SERVICE_PORT,
    TRACKS,
    http_route,
    server_deployment,
    server_name,
    server_selector,
    server_service,
    track_name,
    track_service,
)

__all__ = [
    "GPU_RESOURCE",
    "GPU_TOLERATION",
    "JOB_NAME_MAX",
    "LABEL_COMPONENT",
    "LABEL_JOB",
    "LABEL_MANAGED_BY",
    "LABEL_MODEL",
    "LABEL_MODEL_VERSION",
    "LABEL_NAME",
    "LABEL_TRACK",
    "LABEL_VERSION",
    "LAUNCHER_MODULE",
    "PERMANENT_EXIT_CODES",
    "RUN_AS",
    "SCRATCH",
    "SERVER_CONTAINER",
    "SERVER_MODULE",
    "SERVER_PORT",
    "SERVICE_PORT",
    "TRACKS",
    "TRAINER_CONTAINER",
    "JobSettings",
    "Manifest",
    "PodSettings",
    "Track",
    "check_reachable",
    "check_store_uri",
    "check_tracking_uri",
    "dns_label",
    "dns_subdomain",
    "gpu_resource_name",
    "http_route",
    "job_name",
    "label_key",
    "label_value",
    "package_version",
    "pod_security_context",
    "quantity",
    "rbac_manifests",
    "server_deployment",
    "server_name",
    "server_selector",
    "server_service",
    "track_name",
    "track_service",
    "training_manifests",
    "workload_labels",
]
