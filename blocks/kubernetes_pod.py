"""The pod fields both Kubernetes blocks share, declared once: image, namespace, resources, scheduling, secrets.

:class:`KubernetesPod` is a pydantic base the two blocks inherit (``KubernetesGPUJob`` for training Jobs,
``KubernetesServing`` for model servers); it is not a block type of its own. Its fields are exactly those of
:class:`tasks.kube.manifests.PodSettings` (the checked form the pure manifest builder takes, which cannot import
blocks), ``pod_settings()`` hands them over by name, and ``gpuflow manifests`` offers one flag per field
(``POD_FIELDS``); tests/unit/test_manifests_cli.py keeps the three in step.
"""

from __future__ import annotations

from typing import Any

from prefect_kubernetes.credentials import KubernetesCredentials
from pydantic import BaseModel, Field

from tasks.kube.manifests import GPU_RESOURCE, PodSettings

_EMPTY_MEANS_NONE = ("priority_class", "secret_name")  # an empty text box in the UI means "none"


class KubernetesPod(BaseModel):
    """Where and how a gpuflow pod runs; the blocks built on it add what their workload needs."""

    image: str = Field(description="Workloads image (workloads/Dockerfile), e.g. registry/gpuflow-workloads:0.1.0.")
    namespace: str = Field(default="default", description="Namespace the workload's objects and pods live in.")
    credentials: KubernetesCredentials = Field(
        default_factory=KubernetesCredentials,
        description="Cluster access; empty: in-cluster service account, else KUBECONFIG / ~/.kube/config.",
    )
    service_account: str = Field(
        default="gpuflow-workload", description="Service account of workload pods (no API token is mounted)."
    )
    cpu_request: str = Field(default="1", description="CPU request per pod (Kubernetes quantity).")
    cpu_limit: str = Field(default="4", description="CPU limit per pod.")
    memory_request: str = Field(default="4Gi", description="Memory request per pod.")
    memory_limit: str = Field(default="16Gi", description="Memory limit per pod; above it the pod is OOMKilled.")
    gpus: int = Field(default=0, ge=0, description="GPUs (of gpu_resource) per pod; 0 runs on CPUs.")
    gpu_resource: str = Field(
        default=GPU_RESOURCE, description="nvidia.com/gpu, or a MIG profile such as nvidia.com/mig-1g.10gb."
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict,
        description='Node labels to require, e.g. {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}.',
    )
    tolerations: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Pod tolerations; empty with gpus > 0: tolerate the nvidia.com/gpu NoSchedule taint.",
    )
    priority_class: str | None = Field(default=None, description="PriorityClass of the pods.")
    image_pull_secrets: list[str] = Field(default_factory=list, description="Secrets for a private registry.")
    secret_name: str | None = Field(
        default=None, description="Secret holding the workload's secret variables (store credentials), by key."
    )
    scratch_size: str = Field(default="20Gi", description="Size limit of the /scratch emptyDir (TMPDIR, HOME).")
    shm_size: str = Field(default="2Gi", description="Size limit of the memory-backed /dev/shm.")
    labels: dict[str, str] = Field(default_factory=dict, description="Extra labels on every object and pod.")

    def pod_settings(self) -> PodSettings:
        """The pod part of the settings, checked (raises ConfigurationError on a bad value)."""
        values = self.model_dump(include=set(POD_FIELDS))
        for name in _EMPTY_MEANS_NONE:
            if values[name] == "":
                values[name] = None
        return PodSettings(**values)


# The pod fields, in declaration order: what PodSettings takes and what `gpuflow manifests` has a flag for.
POD_FIELDS: tuple[str, ...] = tuple(name for name in KubernetesPod.model_fields if name != "credentials")


def pod_field(name: str, default: Any, description: str | None = None) -> Any:
    """A pod field with another default for one block (server pods are smaller than training pods), keeping the
    field's one description unless the block says more."""
    return Field(default=default, description=description or KubernetesPod.model_fields[name].description)
