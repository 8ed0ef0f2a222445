"""Kubernetes manifests for gpuflow's workloads, as plain dicts: pure functions, no cluster access.

The Job runner, the cluster canary and ``gpuflow manifests`` all build from here, so what a user reviews
is exactly what gets applied. Every input is checked here, with a :class:`ConfigurationError` that names
the bad value and what was expected, so a mistake fails before anything is created on a cluster.

Every pod runs as user 1000 without privilege escalation, capabilities or a writable root filesystem;
``/scratch`` (an emptyDir, also TMPDIR and HOME) is the only writable place, ``/dev/shm`` is memory-backed
for data loaders, and workloads get no service-account token. Secrets appear only as ``secretKeyRef``s.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from kubernetes.utils import parse_quantity

from tasks.core.errors import ConfigurationError
from tasks.core.types import Track
from tasks.core.workload import PERMANENT_EXIT_CODES, WorkloadSpec

Manifest = dict[str, Any]
TRACKS: tuple[Track, ...] = ("stable", "canary")

GPU_RESOURCE = "nvidia.com/gpu"
GPU_TOLERATION: dict[str, str] = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
TRAINER_CONTAINER = "trainer"
# torchrun itself exits 1 whatever its workers exit with; this wrapper runs it unchanged and ends with the
# workers' own code, so the permanent codes above still fail a distributed Job at once.
LAUNCHER_MODULE = "workloads.trainer.launch"
SERVER_CONTAINER = "server"
SERVER_MODULE = "workloads.server"
SERVER_PORT = 8080
SERVICE_PORT = 80
RUN_AS = 1000
SCRATCH = "/scratch"
JOB_NAME_MAX = 52  # Indexed Job pods are named <job>-<index>-<5 chars> and their hostname <job>-<index>

LABEL_NAME = "app.kubernetes.io/name"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_VERSION = "app.kubernetes.io/version"
LABEL_JOB = "gpuflow.io/job"
LABEL_MODEL = "gpuflow.io/model"
LABEL_TRACK = "gpuflow.io/track"
LABEL_MODEL_VERSION = "gpuflow.io/model-version"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_MIG = re.compile(r"^nvidia\.com/mig-\d+g\.\d+gb$")
_TOLERATION_KEYS = {"key", "operator", "value", "effect", "tolerationSeconds"}
_EFFECTS = {"NoSchedule", "PreferNoSchedule", "NoExecute"}


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
        _not_above(self.cpu_request, self.cpu_limit, "cpu")
        _not_above(self.memory_request, self.memory_limit, "memory")
        if isinstance(self.gpus, bool) or not isinstance(self.gpus, int) or self.gpus < 0:
            raise ConfigurationError(f"gpus must be a whole number, 0 or more, got {self.gpus!r}")
        gpu_resource_name(self.gpu_resource)
        _labels(self.node_selector, "node selector")
        for toleration in self.tolerations:
            _toleration(toleration)
        if self.priority_class is not None:
            dns_subdomain(self.priority_class, "priority class")
        for name in self.image_pull_secrets:
            dns_subdomain(name, "image pull secret")
        if self.secret_name is not None:
            dns_subdomain(self.secret_name, "secret name")
        _labels(self.labels, "label")


@dataclass(frozen=True)
class JobSettings:
    """How a training Job runs: nodes > 1 makes an Indexed Job with a headless Service and torchrun."""

    pod: PodSettings
    nodes: int = 1
    active_deadline_seconds: int = 6 * 3600
    backoff_limit: int = 3
    ttl_seconds_after_finished: int = 3600
    rendezvous_port: int = 29500
    permanent_exit_codes: tuple[int, ...] = PERMANENT_EXIT_CODES

    def __post_init__(self) -> None:
        _whole(self.nodes, "nodes", 1)
        _whole(self.active_deadline_seconds, "active_deadline_seconds", 1)
        _whole(self.backoff_limit, "backoff_limit", 0)
        _whole(self.ttl_seconds_after_finished, "ttl_seconds_after_finished", 0)
        _whole(self.rendezvous_port, "rendezvous_port", 1)
        if self.rendezvous_port > 65535:
            raise ConfigurationError(f"rendezvous_port must be a TCP port (1-65535), got {self.rendezvous_port}")
        for code in self.permanent_exit_codes:
            if isinstance(code, bool) or not isinstance(code, int) or not 1 <= code <= 255:
                raise ConfigurationError(f"permanent exit codes must be 1-255, got {code!r}")


# --- training -------------------------------------------------------------------------------------------------


def job_name(spec: WorkloadSpec) -> str:
    """``gpuflow-<workload>-<training id>-<hash>``: a DNS-1035 label of at most 52 characters.

    The same training id always gives the same name (a retried stage finds its Job); the hash of the full
    id keeps names distinct when the readable part is cut short.
    """
    ident = spec.labels.get("gpuflow.training-id") or spec.labels.get("gpuflow.io/training-id") or spec.name
    digest = hashlib.sha256(f"{spec.name}\0{ident}".encode()).hexdigest()[:8]
    readable = _slug(f"gpuflow-{spec.name}-{ident}") if ident != spec.name else _slug(f"gpuflow-{spec.name}")
    readable = readable[: JOB_NAME_MAX - len(digest) - 1].rstrip("-")
    return f"{readable}-{digest}"


def training_manifests(spec: WorkloadSpec, settings: JobSettings) -> list[Manifest]:
    """The objects to create for one training, in order: ``[headless Service (nodes > 1 only), Job]``."""
    name = job_name(spec)
    pod = settings.pod
    labels = {**_base_labels("trainer"), **workload_labels(spec.labels), **pod.labels}
    pod_labels = {**labels, LABEL_JOB: name}
    distributed = settings.nodes > 1
    env = [*_env(spec.env, spec.secret_env, pod.secret_name, spec.name)]
    ports: list[dict[str, Any]] = []
    if distributed:
        env += [
            {"name": "GPUFLOW_RDZV_HOST", "value": f"{name}-0.{name}"},
            {"name": "GPUFLOW_RDZV_PORT", "value": str(settings.rendezvous_port)},
        ]
        ports = [{"name": "rdzv", "containerPort": settings.rendezvous_port, "protocol": "TCP"}]
    container = {
        "name": TRAINER_CONTAINER,
        "image": pod.image,
        "command": _trainer_command(spec, settings),
        "env": env,
        "resources": _resources(pod),
        "securityContext": _container_security(),
        "volumeMounts": _mounts(),
    }
    if ports:
        container["ports"] = ports
    pod_spec = _pod_spec(pod, container)
    pod_spec["restartPolicy"] = "Never"
    if distributed:
        pod_spec["subdomain"] = name  # pod <job>-<i> resolves as <job>-<i>.<job> through the headless Service
    job_spec: dict[str, Any] = {
        "completions": settings.nodes,
        "parallelism": settings.nodes,
        "backoffLimit": settings.backoff_limit,
        "activeDeadlineSeconds": settings.active_deadline_seconds,
        "ttlSecondsAfterFinished": settings.ttl_seconds_after_finished,
        "podFailurePolicy": _pod_failure_policy(settings.permanent_exit_codes),
        "template": {"metadata": {"labels": pod_labels}, "spec": pod_spec},
    }
    if distributed:
        job_spec["completionMode"] = "Indexed"
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": pod.namespace, "labels": labels},
        "spec": job_spec,
    }
    if not distributed:
        return [job]
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": pod.namespace, "labels": labels},
        "spec": {
            "clusterIP": "None",
            "selector": {LABEL_JOB: name},
            "publishNotReadyAddresses": True,  # rank 0 must be reachable before any readiness
            "ports": [{"name": "rdzv", "port": settings.rendezvous_port, "targetPort": "rdzv", "protocol": "TCP"}],
        },
    }
    return [service, job]


def _trainer_command(spec: WorkloadSpec, settings: JobSettings) -> list[str]:
    if settings.nodes == 1:
        return spec.command("python")
    return [
        "python",
        "-m",
        LAUNCHER_MODULE,
        f"--nnodes={settings.nodes}",
        f"--nproc-per-node={settings.pod.gpus or 1}",
        "--node-rank=$(JOB_COMPLETION_INDEX)",
        "--master-addr=$(GPUFLOW_RDZV_HOST)",
        "--master-port=$(GPUFLOW_RDZV_PORT)",
        "-m",
        spec.module,
        *spec.args,
    ]


def _pod_failure_policy(permanent: Iterable[int]) -> dict[str, Any]:
    """Fail the Job at once on permanent exit codes; pods lost to disruption do not count as failures."""
    rules: list[dict[str, Any]] = []
    codes = sorted(set(permanent))
    if codes:
        rules.append(
            {
                "action": "FailJob",
                "onExitCodes": {"containerName": TRAINER_CONTAINER, "operator": "In", "values": codes},
            }
        )
    rules.append({"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]})
    return {"rules": rules}


# --- serving --------------------------------------------------------------------------------------------------


def track_name(name: str, track: str) -> str:
    """``<name>-<track>``: the Deployment and the per-track Service of one track."""
    _track(track)
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
    _whole(replicas, "replicas", 0)
    if not model_uri.strip() or any(c.isspace() for c in model_uri):
        raise ConfigurationError(f"model URI must be non-empty without spaces, got {model_uri!r}")
    selector = {**server_selector(name), LABEL_TRACK: track}
    labels = {
        **_base_labels("server"),
        **settings.labels,
        **selector,
        LABEL_MODEL_VERSION: _label_value_checked(model_version, "model version"),
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
        "env": _env(plain, secrets, settings.secret_name, deployment),
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
        "resources": _resources(settings),
        "securityContext": _container_security(),
        "volumeMounts": _mounts(),
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": deployment, "namespace": settings.namespace, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            "template": {"metadata": {"labels": labels}, "spec": _pod_spec(settings, container)},
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
            "labels": {**_base_labels("server"), **settings.labels, **selector},
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
        _whole(weight, f"weight of track {track}", 0)
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
            "labels": {**_base_labels("server"), **settings.labels, **server_selector(name)},
        },
        "spec": {
            "parentRefs": [parent],
            "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "backendRefs": backends}],
        },
    }


# --- RBAC -----------------------------------------------------------------------------------------------------


def rbac_manifests(
    namespace: str,
    service_account: str = "gpuflow-flows",
    *,
    http_routes: bool,
    workload_service_account: str = "gpuflow-workload",
) -> list[Manifest]:
    """ServiceAccounts for flow pods and workload pods, a Role with the fewest verbs the flows use, a RoleBinding.

    Flows create and watch training Jobs (pods and logs to follow them, events to explain a pending pod),
    the headless Service of a distributed training, and the canary's Deployments and Services; they read
    the servers' /metrics through the pod proxy and replay the canary's labelled traffic through the Service proxy
    (POST, hence ``create``). Workloads need no API access at all, hence no token.
    """
    dns_label(namespace, "namespace")
    dns_subdomain(service_account, "service account")
    dns_subdomain(workload_service_account, "workload service account")
    labels = {LABEL_NAME: "gpuflow", LABEL_COMPONENT: "rbac", LABEL_MANAGED_BY: "gpuflow"}
    rules = [
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create", "delete", "get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["pods/proxy"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["services/proxy"], "verbs": ["create", "get"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["list"]},
        {"apiGroups": [""], "resources": ["services"], "verbs": ["create", "delete", "get", "patch"]},
        {
            "apiGroups": ["apps"],
            "resources": ["deployments"],
            "verbs": ["create", "delete", "get", "list", "patch"],
        },
    ]
    if http_routes:
        rules.append(
            {
                "apiGroups": ["gateway.networking.k8s.io"],
                "resources": ["httproutes"],
                "verbs": ["create", "delete", "get", "patch"],
            }
        )
    meta = {"namespace": namespace, "labels": labels}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": service_account, **meta}},
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": workload_service_account, **meta},
            "automountServiceAccountToken": False,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": service_account, **meta},
            "rules": rules,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": service_account, **meta},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": service_account},
            "subjects": [{"kind": "ServiceAccount", "name": service_account, "namespace": namespace}],
        },
    ]


# --- shared pieces --------------------------------------------------------------------------------------------


def pod_security_context() -> dict[str, Any]:
    """Non-root user 1000 with the runtime's default seccomp profile; volumes writable by group 1000."""
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "fsGroup": RUN_AS,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _pod_spec(pod: PodSettings, container: dict[str, Any]) -> dict[str, Any]:
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


def _mounts() -> list[dict[str, Any]]:
    return [{"name": "scratch", "mountPath": SCRATCH}, {"name": "shm", "mountPath": "/dev/shm"}]


def _resources(pod: PodSettings) -> dict[str, Any]:
    limits: dict[str, Any] = {"cpu": pod.cpu_limit, "memory": pod.memory_limit}
    if pod.gpus > 0:
        limits[pod.gpu_resource] = str(pod.gpus)  # extended resources: the request defaults to the limit
    return {"requests": {"cpu": pod.cpu_request, "memory": pod.memory_request}, "limits": limits}


def _env(
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
        _env_name(key)
        env.append({"name": key, "value": value})
        seen.add(key)
    for key in secret:
        _env_name(key)
        if key in seen:
            raise ConfigurationError(f"environment variable {key} of workload {workload} is both plain and secret")
        env.append({"name": key, "valueFrom": {"secretKeyRef": {"name": secret_name, "key": key}}})
    env += [
        {"name": "GPUFLOW_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "GPUFLOW_POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ]
    return env


def _base_labels(component: str) -> dict[str, str]:
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


def label_value(value: str) -> str:
    """``value`` made a valid label value: other characters become '-', at most 63, alphanumeric ends."""
    text = re.sub(r"[^A-Za-z0-9_.-]", "-", str(value))[:63]
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", text)


def label_key(key: str) -> str:
    """Check a label key: ``[prefix/]name`` with a DNS subdomain prefix and a name of at most 63 characters."""
    prefix, _, name = key.rpartition("/")
    if (prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix))) or not (
        len(name) <= 63 and _LABEL_NAME.match(name)
    ):
        raise ConfigurationError(
            f"label key {key!r} is not valid: expected [dns.prefix/]name, the name 1-63 letters, digits, '-', '_', '.'"
        )
    return key


def _label_value_checked(value: str, what: str) -> str:
    if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
        raise ConfigurationError(
            f"{what} {value!r} is not a valid label value: at most 63 letters, digits, '-', '_', '.', "
            "starting and ending with a letter or digit"
        )
    return value


def _labels(labels: Mapping[str, str], what: str) -> None:
    for key, value in labels.items():
        try:
            label_key(key)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{what}: {exc}") from None
        _label_value_checked(value, f"{what} {key}=")


def _toleration(toleration: Mapping[str, Any]) -> None:
    if not isinstance(toleration, Mapping):
        raise ConfigurationError(f"a toleration must be a mapping, got {toleration!r}")
    unknown = set(toleration) - _TOLERATION_KEYS
    if unknown:
        raise ConfigurationError(
            f"toleration {toleration!r} has unknown fields {sorted(unknown)}: "
            f"expected {', '.join(sorted(_TOLERATION_KEYS))}"
        )
    operator = toleration.get("operator", "Equal")
    if operator not in ("Equal", "Exists"):
        raise ConfigurationError(f"toleration operator must be Equal or Exists, got {operator!r}")
    if operator == "Exists" and toleration.get("value"):
        raise ConfigurationError(f"toleration {toleration!r}: operator Exists takes no value")
    effect = toleration.get("effect")
    if effect not in (None, "", *_EFFECTS):
        raise ConfigurationError(f"toleration effect must be one of {', '.join(sorted(_EFFECTS))}, got {effect!r}")
    if toleration.get("key"):
        label_key(str(toleration["key"]))


def gpu_resource_name(name: str) -> str:
    """``nvidia.com/gpu``, a MIG profile ``nvidia.com/mig-<g>g.<m>gb``, or another vendor's ``domain/name``."""
    if name == GPU_RESOURCE or _MIG.match(name):
        return name
    if name.startswith("nvidia.com/mig"):
        raise ConfigurationError(
            f"MIG resource {name!r} must look like nvidia.com/mig-<g>g.<m>gb, e.g. nvidia.com/mig-1g.10gb"
        )
    prefix, _, rest = name.partition("/")
    if not rest or not _DNS_SUBDOMAIN.match(prefix) or prefix.endswith("kubernetes.io") or not _LABEL_NAME.match(rest):
        raise ConfigurationError(
            f"GPU resource {name!r} is not an extended resource name: expected nvidia.com/gpu, "
            "nvidia.com/mig-<g>g.<m>gb or <vendor domain>/<name>"
        )
    return name


def quantity(text: str, what: str) -> Decimal:
    """Parse a Kubernetes quantity (``500m``, ``4``, ``16Gi``, ``1e3``); a clear error names the field."""
    try:
        value = parse_quantity(text.strip()) if isinstance(text, str) else None
    except ValueError:
        value = None
    if value is None or value < 0:
        raise ConfigurationError(f"{what} must be a Kubernetes quantity such as 500m, 2, 512Mi or 16Gi, got {text!r}")
    return Decimal(value)


def _not_above(request: str, limit: str, resource: str) -> None:
    if quantity(request, f"{resource}_request") > quantity(limit, f"{resource}_limit"):
        raise ConfigurationError(f"{resource} request {request} is above its limit {limit}; Kubernetes refuses that")


def dns_label(value: str, what: str) -> str:
    if not isinstance(value, str) or len(value) > 63 or not _DNS_LABEL.match(value):
        raise ConfigurationError(f"{what} must be 1-63 lowercase letters, digits or '-' (a DNS label), got {value!r}")
    return value


def dns_subdomain(value: str, what: str) -> str:
    if not isinstance(value, str) or len(value) > 253 or not _DNS_SUBDOMAIN.match(value):
        raise ConfigurationError(
            f"{what} must be a DNS subdomain (lowercase letters, digits, '-' and '.'), got {value!r}"
        )
    return value


def _env_name(name: str) -> None:
    if not _ENV_NAME.match(name):
        raise ConfigurationError(f"environment variable name {name!r} is not valid in Kubernetes")


def _whole(value: object, what: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(f"{what} must be a whole number, at least {minimum}, got {value!r}")


def _track(track: str) -> None:
    if track not in TRACKS:
        raise ConfigurationError(f"track must be one of {', '.join(TRACKS)}, got {track!r}")


def _slug(text: str) -> str:
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", text.lower())).strip("-")
