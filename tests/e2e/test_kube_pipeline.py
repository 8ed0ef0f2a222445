"""The whole pipeline on the Kubernetes backend, called from Python as a user would.

prepare runs in the flow; train runs as an Indexed Job of 2 pods whose torchrun groups really train one model
with 2 gloo processes; evaluate registers and gates; rollout serves the model from Deployments whose pods are
real ``python -m workloads.server`` processes started by the emulated cluster. The first run has no champion,
so its model goes straight to the stable Deployment; the second run's model goes through a canary and is
promoted, and the stable Deployment ends up serving it. Nothing but the stable servers is left behind. MLflow
is a real ``mlflow server`` and the store an S3 bucket (moto's server), the store's keys in a Secret: the pods
cannot read the test's files, as on a cluster.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import kubernetes
import pytest
from mlflow import MlflowClient

from blocks.canary_policy import CanaryPolicy
from blocks.kubernetes_serving import KubernetesServing
from flows.pipeline import PipelineResult, ml_pipeline
from tests.conftest import MlflowServer, S3Server
from tests.fixtures.cluster_services import ClusterServices, cluster_services, two_node_job
from tests.fixtures.flow_env import no_heartbeat_wait  # noqa: F401
from tests.fixtures.kube import KubeCluster
from tests.integration.test_kube_canary import FAST as FAST_POLICY

IMAGE = "gpuflow/workloads:test"
MANAGED = "app.kubernetes.io/managed-by=gpuflow"


def _save_blocks(cluster: KubeCluster, services: ClusterServices) -> dict[str, str]:
    suffix = uuid.uuid4().hex[:8]
    names = {"compute": f"e2e-gpu-job-{suffix}", "serving": f"e2e-serving-{suffix}", "policy": f"e2e-policy-{suffix}"}
    two_node_job(services, cluster, IMAGE).save(names["compute"])
    KubernetesServing(
        image=IMAGE,
        namespace=cluster.namespace,
        replicas=2,
        cpu_request="100m",
        memory_request="256Mi",
        memory_limit="3Gi",
        poll_interval_seconds=0.2,
        image_pull_grace_seconds=0,
    ).save(names["serving"])
    CanaryPolicy(**FAST_POLICY).save(names["policy"])
    return {**names, **services.save()}


def _run(blocks: dict[str, str], model_name: str) -> PipelineResult:
    result: Any = ml_pipeline(
        model_name=model_name,
        epochs=12,
        learning_rate=3e-3,
        hidden_size=64,
        device="cpu",
        compute=blocks["compute"],
        serving=blocks["serving"],
        policy=blocks["policy"],
        data_store=blocks["data_store"],
        tracking=blocks["tracking"],
    )
    assert isinstance(result, PipelineResult), result
    return result


def _stable_serves(cluster: KubeCluster) -> set[str]:
    """Model versions the stable servers' pods run, read from the pods' labels with the real client."""
    pods = kubernetes.client.CoreV1Api(cluster.api).list_namespaced_pod(
        cluster.namespace, label_selector="gpuflow.io/track=stable"
    )
    return {p.metadata.labels["gpuflow.io/model-version"] for p in pods.items if not p.metadata.deletion_timestamp}


@pytest.mark.usefixtures("prefect_api", "no_heartbeat_wait")
def test_two_pipeline_runs_on_kubernetes_train_distributed_and_roll_out_through_a_canary(
    kube_cluster: KubeCluster, gpuflow_home: Path, s3_server: S3Server, mlflow_server: MlflowServer
) -> None:
    kube_cluster.extra_env["GPUFLOW_TORCH_THREADS"] = "1"
    services = cluster_services(kube_cluster, s3_server, mlflow_server)
    blocks = _save_blocks(kube_cluster, services)
    model_name = f"digits-{uuid.uuid4().hex[:6]}"

    first = _run(blocks, model_name)
    assert first.promoted and first.champion_version == "1"
    assert first.canary is not None and first.canary["backend"] == "kubernetes"
    assert set(first.time_to_start) == {"k8s_queue_seconds", "k8s_start_seconds"}
    train_run = MlflowClient(services.tracking.uri).get_run(first.train_run_id)
    assert train_run.data.params["world_size"] == "2"  # both pods' ranks trained the one model
    assert "k8s_queue_seconds" in train_run.data.metrics
    assert _stable_serves(kube_cluster) == {"1"}

    second = _run(blocks, model_name)
    assert second.gate["passed"], second.gate
    assert second.canary is not None and second.canary["decision"] == "promoted", second.canary
    assert second.champion_version == second.model_version == "2"
    assert second.canary["steps"], "the second model went through canary steps"
    assert _stable_serves(kube_cluster) == {"2"}

    # The servers run as the workload account, with no API token mounted: they could not call the API at all.
    for pod in kube_cluster.pods("gpuflow.io/track=stable"):
        assert pod["spec"]["serviceAccountName"] == "gpuflow-workload"
        assert not [v for v in pod["spec"].get("volumes") or [] if v["name"].startswith("kube-api-access-")]
    # Every object gpuflow sent is one the API server knows field by field: no "unknown field" warning.
    assert kube_cluster.server.warnings == []
    # Only the stable servers remain: no training Job, no canary, no pod of either.
    batch = kubernetes.client.BatchV1Api(kube_cluster.api)
    assert not batch.list_namespaced_job(kube_cluster.namespace, label_selector=MANAGED).items
    # Deleting a Deployment removes its pods asynchronously (garbage collection), as on a real cluster.
    kube_cluster.wait_for(
        lambda: (
            not kube_cluster.pods("gpuflow.io/track=canary")
            and not kube_cluster.pods("app.kubernetes.io/component=trainer")
        ),
        30,
        what="the canary and trainer pods to be gone",
    )
