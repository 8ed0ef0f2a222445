"""What every gpuflow pod is, training or serving: :class:`PodSettings` (checked on creation) and the pod spec,
container security, resources, volumes, environment and labels built from them.

Every pod runs as user 1000 without privilege escalation, capabilities or a writable root filesystem;
``/scratch`` (an emptyDir, also TMPDIR and HOME) is the only writable place, ``/dev/shm`` is memory-backed
for data loaders, and workloads get no service-account token. Secrets appear only as ``secretKeyRef``s.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from tasks.core.errors import ConfigurationError
from tasks.kube.checks import (
    GPU_RESOURCE,
    check_labels,
    check_toleration,
    dns_label,
    dns_subdomain,
    env_name,
    gpu_resource_name,
    label_key,
    label_value,
    not_above,
    quantity,
)

Manifest = dict[str, Any]

GPU_TOLERATION: dict[str, str] = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
RUN_AS = 1000
SCRATCH = "/scratch"

LABEL_NAME = "app.kubernetes.io/name"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_VERSION = "app.kubernetes.io/version"
LABEL_JOB = "gpuflow.io/job"
LABEL_MODEL = "gpuflow.io/model"
LABEL_TRACK = "gpuflow.io/track"
LABEL_MODEL_VERSION = "gpuflow.io/model-version"


def package_version() -> str:
    """gpuflow's version for the app.kubernetes.io/version label."""
    try:
        return label_value(version("gpuflow"))
    except PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class PodSettings:
    """Everything a gpuflow pod needs, shared by training Jobs and model servers; checked on creation.

    ``gpus`` counts ``gpu_resource`` per pod (per node for distributed training). With GPUs and no
    ``tolerations`` the pod tolerates the GPU Operator's ``nvidia.com/gpu`` NoSchedule taint.
    ``secret_name`` is the Secret that holds the keys of a workload's ``secret_env``. The fields are those of
    the blocks' shared base, ``blocks.kubernetes_pod.KubernetesPod`` (``pod_settings()`` passes them by name).
    """

    image: str
    namespace: str = "default"
    service_account: str = "gpuflow-workload"
    cpu_request: str = "1"
    cpu_limit: str = "4"
    memory_request: str = "4Gi"
    memory_limit: str = "16Gi"
    gpus: int = 0
    gpu_resource: str = GPU_RESOURCE
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    priority_class: str | None = None
    image_pull_secrets: list[str] = field(default_factory=list)
    secret_name: str | None = None
    scratch_size: str = "20Gi"
    shm_size: str = "2Gi"
    labels: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.image.strip() or any(c.isspace() for c in self.image):
            raise ConfigurationError(f"image must be a container image reference without spaces, got {self.image!r}")
        dns_label(self.namespace, "namespace")
        dns_subdomain(self.service_account, "service account")
        for what in ("cpu_request", "cpu_limit", "memory_request", "memory_limit", "scratch_size", "shm_size"):
            quantity(getattr(self, what), what)
        not_above(self.cpu_request, self.cpu_limit, "cpu")
        not_above(self.memory_request, self.memory_limit, "memory")
        if isinstance(self.gpus, bool) or not isinstance(self.gpus, int) or self.gpus < 0:
            raise ConfigurationError(f"gpus must be a whole number, 0 or more, got {self.gpus!r}")
        gpu_resource_name(self.gpu_resource)
        check_labels(self.node_selector, "node selector")
        for toleration in self.tolerations:
            check_toleration(toleration)
        if self.priority_class is not None:
            dns_subdomain(self.priority_class, "priority class")
        for name in self.image_pull_secrets:
            dns_subdomain(name, "image pull secret")
        if self.secret_name is not None:
            dns_subdomain(self.secret_name, "secret name")
        check_labels(self.labels, "label")


def pod_security_context() -> dict[str, Any]:
    """Non-root user 1000 with the runtime's default seccomp profile; volumes writable by group 1000."""
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "fsGroup": RUN_AS,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security() -> dict[str, Any]:
    """No privilege escalation, no capabilities, a read-only root filesystem: what Pod Security ``restricted`` asks."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def pod_spec(pod: PodSettings, container: dict[str, Any]) -> dict[str, Any]:
    """The pod spec around ``container``: no token, /scratch and /dev/shm, node selector, tolerations, pull secrets."""
    spec: dict[str, Any] = {
        "serviceAccountName": pod.service_account,
        "automountServiceAccountToken": False,
        "securityContext": pod_security_context(),
        "containers": [container],
        "volumes": [
            {"name": "scratch", "emptyDir": {"sizeLimit": pod.scratch_size}},
            {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": pod.shm_size}},
        ],
    }
    if pod.node_selector:
        spec["nodeSelector"] = dict(pod.node_selector)
    tolerations = [dict(t) for t in pod.tolerations] or ([dict(GPU_TOLERATION)] if pod.gpus > 0 else [])
    if tolerations:
        spec["tolerations"] = tolerations
    if pod.priority_class:
        spec["priorityClassName"] = pod.priority_class
    if pod.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": secret} for secret in pod.image_pull_secrets]
    return spec


def volume_mounts() -> list[dict[str, Any]]:
    """/scratch and /dev/shm, the only writable places of a container."""
    return [{"name": "scratch", "mountPath": SCRATCH}, {"name": "shm", "mountPath": "/dev/shm"}]


def resources(pod: PodSettings) -> dict[str, Any]:
    """CPU and memory requests and limits, and the GPUs as a limit."""
    limits: dict[str, Any] = {"cpu": pod.cpu_limit, "memory": pod.memory_limit}
    if pod.gpus > 0:
        limits[pod.gpu_resource] = str(pod.gpus)  # extended resources: the request defaults to the limit
    return {"requests": {"cpu": pod.cpu_request, "memory": pod.memory_request}, "limits": limits}


def container_env(
    plain: Mapping[str, str], secret: Mapping[str, str], secret_name: str | None, workload: str
) -> list[dict[str, Any]]:
    """Plain variables by value, secret ones by key reference only, then the pod's identity and scratch paths."""
    if secret and not secret_name:
        raise ConfigurationError(
            f"workload {workload} needs secret environment variables {', '.join(sorted(secret))} but no "
            "secret_name is set: create a Kubernetes Secret with these keys and set secret_name "
            "(--secret-name) to its name"
        )
    fixed = {"PYTHONUNBUFFERED": "1", "TMPDIR": SCRATCH, "HOME": SCRATCH, "MPLCONFIGDIR": f"{SCRATCH}/matplotlib"}
    env: list[dict[str, Any]] = []
    seen: set[str] = set()
    for key, value in {**fixed, **plain}.items():
        env_name(key)
        env.append({"name": key, "value": value})
        seen.add(key)
    for key in secret:
        env_name(key)
        if key in seen:
            raise ConfigurationError(f"environment variable {key} of workload {workload} is both plain and secret")
        env.append({"name": key, "valueFrom": {"secretKeyRef": {"name": secret_name, "key": key}}})
    env += [
        {"name": "GPUFLOW_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "GPUFLOW_POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ]
    return env


def base_labels(component: str) -> dict[str, str]:
    """The ``app.kubernetes.io/*`` labels of every object gpuflow creates."""
    return {
        LABEL_NAME: "gpuflow",
        LABEL_COMPONENT: component,
        LABEL_MANAGED_BY: "gpuflow",
        LABEL_VERSION: package_version(),
    }


def workload_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """A workload's labels as Kubernetes labels: ``gpuflow.<x>`` keys become ``gpuflow.io/<x>``, values sanitised.

    Cost tools allocate by these (pipeline run, stage, dataset version, model, training id).
    """
    out: dict[str, str] = {}
    for key, value in labels.items():
        k8s_key = f"gpuflow.io/{key[len('gpuflow.') :]}" if "/" not in key and key.startswith("gpuflow.") else key
        label_key(k8s_key)
        out[k8s_key] = label_value(value)
    return out
