"""The Kubernetes serving block: where the rollout runs stable and canary when they run on a cluster.

The block only holds settings; the Deployments, Services and the HTTPRoute come from
:mod:`tasks.kube.manifests` and the rollout on the cluster is :class:`tasks.kube.cluster_serving.ClusterServing`.
A rollout given this block leaves the promoted version serving in the stable Deployment (the local backend
serves nothing after the stage).
"""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field

from blocks.kubernetes_pod import KubernetesPod, pod_field
from blocks.loading import load_saved
from tasks.core.errors import ConfigurationError


class KubernetesServing(Block, KubernetesPod):
    """Model servers on a Kubernetes cluster: a stable and a canary Deployment behind one Service.

    The pod fields (image, resources, GPUs, scheduling, secrets) are :class:`blocks.kubernetes_pod.KubernetesPod`'s,
    with smaller CPU and memory defaults. The canary's share of traffic follows the replica ratio of the two
    Deployments (``replicas`` pods in all during a rollout), or the weights of a Gateway API HTTPRoute when
    ``gateway`` is set. The analysis reads each pod's ``/metrics`` through the API server's pod proxy, or from
    ``prometheus_url``.

    Example:
        ```python
        from blocks.kubernetes_serving import KubernetesServing

        KubernetesServing(
            image="registry.example.com/gpuflow-workloads:0.1.0",
            namespace="gpuflow",
            replicas=10,  # a 10% step runs 9 stable pods and 1 canary pod
            tracking_uri="http://mlflow.gpuflow.svc:5000",
            secret_name="gpuflow-store",
            secret_keys=["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"],
        ).save("prod-serving")
        # then: rollout(..., serving="prod-serving") or ml_pipeline(..., serving="prod-serving"); in code:
        serving = KubernetesServing.load("BLOCK_NAME")  # "prod-serving"
        ```
    """

    _block_type_name = "gpuflow Kubernetes Serving"
    _block_type_slug = "gpuflow-kubernetes-serving"

    server_name: str | None = Field(
        default=None,
        description="Base name of the objects (<name>, <name>-stable, <name>-canary); empty: from the model name.",
    )
    replicas: int = Field(
        default=2,
        ge=1,
        description="Server pods in all during a rollout (the split follows stable:canary pods), and stable's "
        "size when the rollout creates it. With replica ratios it must be at least 2.",
    )
    # Server pods are smaller than training pods: only these defaults differ from KubernetesPod's.
    cpu_limit: str = pod_field("cpu_limit", "2")
    memory_request: str = pod_field("memory_request", "1Gi")
    memory_limit: str = pod_field("memory_limit", "2Gi")
    secret_keys: list[str] = Field(
        default_factory=list,
        description="Environment variables server pods read from secret_name, e.g. AWS_SECRET_ACCESS_KEY.",
    )
    env: dict[str, str] = Field(
        default_factory=dict, description="Plain environment of server pods, e.g. MLFLOW_S3_ENDPOINT_URL."
    )
    server_args: list[str] = Field(
        default_factory=list, description="Extra flags for python -m workloads.server, e.g. --max-batch-size 64."
    )
    tracking_uri: str | None = Field(
        default=None, description="MLflow as server pods reach it; empty: the rollout's own tracking URI."
    )
    ready_timeout_seconds: float | None = Field(
        default=None,
        gt=0,
        description="How long pods may take to become ready (scheduling, image pull, model load); empty: the "
        "canary policy's server_start_timeout_seconds.",
    )
    image_pull_grace_seconds: float = Field(
        default=120, ge=0, description="How long an image that cannot be pulled is waited for before failing."
    )
    gateway: str | None = Field(
        default=None,
        description="Gateway API Gateway to attach an HTTPRoute to; set: the split follows route weights "
        "(needs service_url, the gateway's address) and stable's Deployment is never scaled.",
    )
    gateway_namespace: str | None = Field(default=None, description="Namespace of the Gateway; empty: namespace.")
    route_accept_timeout_seconds: float = Field(
        default=30,
        gt=0,
        description="How long the Gateway may take to accept each change of the HTTPRoute's weights (its "
        "status.parents Accepted condition at the route's generation) before the step fails.",
    )
    service_url: str | None = Field(
        default=None,
        description="Where clients reach the model (e.g. http://digits.gpuflow.svc, or the gateway's URL); the "
        "replayed traffic goes there. Empty: through the API server's services/<name>/proxy.",
    )
    prometheus_url: str | None = Field(
        default=None,
        description="Prometheus HTTP API base URL to read the servers' metrics from (series with namespace and "
        "pod labels); empty: each pod's /metrics through the API server's pod proxy.",
    )
    poll_interval_seconds: float = Field(default=1.0, gt=0, description="How often pod states are read.")

    def check(self) -> None:
        """Refuse settings that cannot work together, naming them (before anything is created)."""
        self.pod_settings()
        if self.gateway and not self.service_url:
            raise ConfigurationError(
                f"gateway {self.gateway!r} is set but service_url is not: the replayed traffic must go through the "
                "gateway for its route weights to split it (set service_url to the gateway's address)"
            )
        if not self.gateway and self.replicas < 2:
            raise ConfigurationError(
                f"replicas={self.replicas}: a replica-ratio split needs at least 2 pods (one stable, one canary); "
                "raise replicas or set a gateway"
            )
        if self.secret_keys and not self.secret_name:
            raise ConfigurationError(f"secret_keys {self.secret_keys} need secret_name, the Secret that holds them")

    def check_reachable(self, tracking_uri: str) -> None:
        """Refuse a ``sqlite:``/file tracking URI (the block's, else the rollout's ``tracking_uri``): server pods
        load the model from MLflow on another machine (ConfigurationError naming what to use instead)."""
        from tasks.kube.manifests import check_tracking_uri

        check_tracking_uri(
            self.tracking_uri or tracking_uri, "the Kubernetes serving block (gpuflow-kubernetes-serving)"
        )


def resolve_kubernetes_serving(name: str) -> KubernetesServing:
    """A saved block by ``name`` or ``gpuflow-kubernetes-serving/name``; a missing one names what was looked up."""
    block = load_saved(KubernetesServing, name)
    block.check()
    return block
