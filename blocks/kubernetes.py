"""The Kubernetes GPU compute target: a workload runs as a Kubernetes Job, on GPUs when asked.

The block only holds settings; the manifests come from :mod:`tasks.kube.manifests` (pure, printable with
``gpuflow manifests train``) and the Job is run and followed by :mod:`tasks.kube.jobs`.
"""

from __future__ import annotations

from pydantic import Field

from blocks.compute import ComputeTarget
from blocks.kubernetes_pod import KubernetesPod
from tasks.core.types import LogFn
from tasks.core.workload import WorkloadResult, WorkloadSpec
from tasks.kube.manifests import (
    PERMANENT_EXIT_CODES,
    JobSettings,
    check_reachable,
    check_store_uri,
    check_tracking_uri,
)


class KubernetesGPUJob(ComputeTarget, KubernetesPod):
    """Runs workloads as Kubernetes Jobs: GPUs, node selection, secrets by reference, a non-root pod.

    The pod fields (image, resources, GPUs, scheduling, secrets) are :class:`blocks.kubernetes_pod.KubernetesPod`'s.
    Credentials default to the in-cluster service account, else the KUBECONFIG / ~/.kube/config context.
    ``nodes`` > 1 trains across several pods (an Indexed Job, torchrun, gloo or NCCL).

    Example:
        ```python
        from blocks.kubernetes import KubernetesGPUJob

        KubernetesGPUJob(
            image="registry.example.com/gpuflow-workloads:0.1.0",
            namespace="gpuflow",
            gpus=1,
            node_selector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
            secret_name="gpuflow-store",  # holds AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY
        ).save("h100")
        # then: gpuflow run ... --compute gpuflow-kubernetes-gpu-job/h100, or in code:
        h100 = KubernetesGPUJob.load("BLOCK_NAME")  # "h100"
        ```
    """

    _block_type_name = "gpuflow Kubernetes GPU Job"
    _block_type_slug = "gpuflow-kubernetes-gpu-job"

    nodes: int = Field(default=1, ge=1, description="Pods training together; > 1: Indexed Job + torchrun.")
    active_deadline_seconds: int = Field(default=6 * 3600, ge=1, description="The Job fails after this long.")
    backoff_limit: int = Field(default=3, ge=0, description="Pod failures retried (disruptions do not count).")
    ttl_seconds_after_finished: int = Field(
        default=3600, ge=0, description="Kubernetes deletes a finished Job (one kept after failure) after this."
    )
    rendezvous_port: int = Field(default=29500, ge=1, le=65535, description="torchrun rendezvous port (nodes > 1).")
    delete_failed_jobs: bool = Field(
        default=False, description="Delete a failed Job at once; otherwise it stays for inspection until its TTL."
    )
    image_pull_grace_seconds: float = Field(
        default=120, ge=0, description="How long an image that cannot be pulled is waited for before failing."
    )
    unschedulable_timeout_seconds: float | None = Field(
        default=None,
        gt=0,
        description="How long a pod may wait for a node (no free GPU) before the Job is deleted and the stage "
        "fails; empty: until active_deadline_seconds (a cluster autoscaler may need minutes to add a GPU node).",
    )
    poll_interval_seconds: float = Field(default=2, gt=0, description="How often the Job's state is read.")

    def job_settings(self) -> JobSettings:
        """Everything the Job manifests are built from, checked (raises ConfigurationError on a bad value)."""
        return JobSettings(
            pod=self.pod_settings(),
            nodes=self.nodes,
            active_deadline_seconds=self.active_deadline_seconds,
            backoff_limit=self.backoff_limit,
            ttl_seconds_after_finished=self.ttl_seconds_after_finished,
            rendezvous_port=self.rendezvous_port,
            permanent_exit_codes=PERMANENT_EXIT_CODES,
        )

    def check_reachable(self, *, tracking_uri: str, store_uri: str) -> None:
        """Refuse a ``sqlite:``/file tracking URI or a local store: pods run on other machines (ConfigurationError)."""
        check_tracking_uri(tracking_uri, _WHERE)
        check_store_uri(store_uri, _WHERE)

    def run_workload(self, spec: WorkloadSpec, log: LogFn) -> WorkloadResult:
        """Create the Job, stream its pods' logs to ``log``, wait for it; see :func:`tasks.kube.jobs.run_job`.

        A tracking URI or store in ``spec.env`` that only this machine reaches is refused before anything is created.
        """
        from tasks.kube.jobs import run_job  # the cluster side loads only when a Job really runs

        check_reachable(spec.env, _WHERE)
        return run_job(self, spec, log)


_WHERE = "the Kubernetes compute block (gpuflow-kubernetes-gpu-job)"
