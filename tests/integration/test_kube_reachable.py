"""The Kubernetes backends refuse an MLflow file or a store folder before creating anything, in the blocks and the
flows that use them: a pod would find an empty file or folder on its own machine and fail late, or log nowhere."""

from __future__ import annotations

import uuid
from pathlib import Path

import kubernetes
import pytest

from blocks.kubernetes import KubernetesGPUJob
from blocks.kubernetes_serving import KubernetesServing
from flows.rollout import rollout
from flows.train import train
from tasks.core.errors import ConfigurationError
from tasks.core.workload import WorkloadSpec
from tests.fixtures.kube import KubeCluster

IMAGE = "gpuflow/workloads:test"


def _nothing_on_the_cluster(cluster: KubeCluster) -> None:
    batch = kubernetes.client.BatchV1Api(cluster.api)
    apps = kubernetes.client.AppsV1Api(cluster.api)
    assert not batch.list_namespaced_job(cluster.namespace).items
    assert not apps.list_namespaced_deployment(cluster.namespace).items
    assert not cluster.pods()


def test_the_compute_block_refuses_a_sqlite_tracking_uri_before_creating_a_job(kube_cluster: KubeCluster) -> None:
    spec = WorkloadSpec(
        name="trainer",
        module="workloads.trainer",
        env={"MLFLOW_TRACKING_URI": "sqlite:////home/me/mlflow.db", "GPUFLOW_STORE_URI": "s3://b/gpuflow"},
        labels={"gpuflow.training-id": "local-mlflow"},
    )
    with pytest.raises(ConfigurationError, match=r"'sqlite:////home/me/mlflow\.db' is on this machine"):
        KubernetesGPUJob(image=IMAGE, namespace=kube_cluster.namespace).run_workload(spec, lambda line: None)
    _nothing_on_the_cluster(kube_cluster)


@pytest.mark.usefixtures("prefect_api")
def test_the_train_flow_on_kubernetes_refuses_a_local_store_before_any_mlflow_run(
    kube_cluster: KubeCluster, gpuflow_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.gpuflow:5000")  # never reached: refused first
    name = f"reach-{uuid.uuid4().hex[:8]}"
    KubernetesGPUJob(image=IMAGE, namespace=kube_cluster.namespace).save(name)

    with pytest.raises(ConfigurationError) as refused:
        train(dataset_uri="s3://b/gpuflow/datasets/d/v", compute=f"gpuflow-kubernetes-gpu-job/{name}")

    assert f"the store {(gpuflow_home / 'store').as_uri()!r} is a folder on this machine" in str(refused.value)
    assert "use an object store both reach, e.g. s3://bucket/gpuflow" in str(refused.value)
    _nothing_on_the_cluster(kube_cluster)
    assert not gpuflow_home.exists() or not any(gpuflow_home.iterdir()), "nothing written locally either"


@pytest.mark.usefixtures("prefect_api")
def test_the_rollout_flow_on_kubernetes_refuses_a_sqlite_tracking_uri_before_any_server(
    kube_cluster: KubeCluster, gpuflow_home: Path
) -> None:
    name = f"reach-{uuid.uuid4().hex[:8]}"
    KubernetesServing(image=IMAGE, namespace=kube_cluster.namespace).save(name)

    with pytest.raises(ConfigurationError) as refused:
        rollout(model_name="digits", serving=name)

    message = str(refused.value)
    assert message.startswith("the Kubernetes serving block (gpuflow-kubernetes-serving): the MLflow tracking URI")
    assert "sqlite:" in message and "use an MLflow server both reach" in message
    _nothing_on_the_cluster(kube_cluster)
    assert not (gpuflow_home / "mlflow.db").exists()
