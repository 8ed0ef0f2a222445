"""A training's Kubernetes objects: the Job (GPU or MIG resources, a podFailurePolicy that fails at once on the
trainer's permanent exit codes and ignores disruptions) and, for ``nodes > 1``, an Indexed Job with a headless
Service so pod 0 is torchrun's rendezvous. Pure: no cluster access."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tasks.core.errors import ConfigurationError
from tasks.core.workload import LABEL_TRAINING_ID, PERMANENT_EXIT_CODES, WorkloadSpec
from tasks.kube.checks import slug, whole_number
from tasks.kube.pod_settings import (
    LABEL_JOB,
    Manifest,
    PodSettings,
    base_labels,
    container_env,
    container_security,
    pod_spec,
    resources,
    volume_mounts,
    workload_labels,
)

TRAINER_CONTAINER = "trainer"
# torchrun itself exits 1 whatever its workers exit with; this wrapper runs it unchanged and ends with the
# workers' own code, so the permanent exit codes still fail a distributed Job at once.
LAUNCHER_MODULE = "workloads.trainer.launch"
JOB_NAME_MAX = 52  # Indexed Job pods are named <job>-<index>-<5 chars> and their hostname <job>-<index>


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
        whole_number(self.nodes, "nodes", 1)
        whole_number(self.active_deadline_seconds, "active_deadline_seconds", 1)
        whole_number(self.backoff_limit, "backoff_limit", 0)
        whole_number(self.ttl_seconds_after_finished, "ttl_seconds_after_finished", 0)
        whole_number(self.rendezvous_port, "rendezvous_port", 1)
        if self.rendezvous_port > 65535:
            raise ConfigurationError(f"rendezvous_port must be a TCP port (1-65535), got {self.rendezvous_port}")
        for code in self.permanent_exit_codes:
            if isinstance(code, bool) or not isinstance(code, int) or not 1 <= code <= 255:
                raise ConfigurationError(f"permanent exit codes must be 1-255, got {code!r}")


def job_name(spec: WorkloadSpec) -> str:
    """``gpuflow-<workload>-<training id>-<hash>``: a DNS-1035 label of at most 52 characters.

    The same training id always gives the same name (a retried stage finds its Job); the hash of the full
    id keeps names distinct when the readable part is cut short.
    """
    ident = spec.labels.get(LABEL_TRAINING_ID) or spec.labels.get("gpuflow.io/training-id") or spec.name
    digest = hashlib.sha256(f"{spec.name}\0{ident}".encode()).hexdigest()[:8]
    readable = slug(f"gpuflow-{spec.name}-{ident}") if ident != spec.name else slug(f"gpuflow-{spec.name}")
    readable = readable[: JOB_NAME_MAX - len(digest) - 1].rstrip("-")
    return f"{readable}-{digest}"


def training_manifests(spec: WorkloadSpec, settings: JobSettings) -> list[Manifest]:
    """The objects to create for one training, in order: ``[headless Service (nodes > 1 only), Job]``."""
    name = job_name(spec)
    pod = settings.pod
    labels = {**base_labels("trainer"), **workload_labels(spec.labels), **pod.labels}
    pod_labels = {**labels, LABEL_JOB: name}
    distributed = settings.nodes > 1
    env = [*container_env(spec.env, spec.secret_env, pod.secret_name, spec.name)]
    ports: list[dict[str, Any]] = []
    if distributed:
        env += [
            {"name": "GPUFLOW_RDZV_HOST", "value": f"{name}-0.{name}"},
            {"name": "GPUFLOW_RDZV_PORT", "value": str(settings.rendezvous_port)},
        ]
        ports = [{"name": "rdzv", "containerPort": settings.rendezvous_port, "protocol": "TCP"}]
    container = {
        "name": TRAINER_CONTAINER,
        "image": spec.image or pod.image,  # a custom trainer's own image (built FROM gpuflow's), else the block's
        "command": _trainer_command(spec, settings),
        "env": env,
        "resources": resources(pod),
        "securityContext": container_security(),
        "volumeMounts": volume_mounts(),
    }
    if ports:
        container["ports"] = ports
    template = pod_spec(pod, container)
    template["restartPolicy"] = "Never"
    if distributed:
        template["subdomain"] = name  # pod <job>-<i> resolves as <job>-<i>.<job> through the headless Service
    job_spec: dict[str, Any] = {
        "completions": settings.nodes,
        "parallelism": settings.nodes,
        "backoffLimit": settings.backoff_limit,
        "activeDeadlineSeconds": settings.active_deadline_seconds,
        "ttlSecondsAfterFinished": settings.ttl_seconds_after_finished,
        "podFailurePolicy": _pod_failure_policy(settings.permanent_exit_codes),
        "template": {"metadata": {"labels": pod_labels}, "spec": template},
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
