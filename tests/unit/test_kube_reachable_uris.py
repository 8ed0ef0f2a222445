"""The Kubernetes blocks refuse an MLflow file or a store folder: pods on a cluster run on other machines."""

from __future__ import annotations

import pytest

from blocks.compute import LocalProcess
from blocks.kubernetes import KubernetesGPUJob
from blocks.kubernetes_serving import KubernetesServing
from tasks.core.errors import ConfigurationError
from tasks.kube.reachable import check_reachable

HTTP = "http://mlflow.gpuflow:5000"
S3 = "s3://ml-bucket/gpuflow"


@pytest.mark.parametrize("uri", ["sqlite:///home/me/mlflow.db", "file:///home/me/mlruns", "/home/me/mlruns", "mlruns"])
def test_a_tracking_uri_on_this_machine_is_refused_naming_an_mlflow_server_instead(uri: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        KubernetesGPUJob(image="i").check_reachable(tracking_uri=uri, store_uri=S3)

    message = str(refused.value)
    assert message.startswith("the Kubernetes compute block (gpuflow-kubernetes-gpu-job): the MLflow tracking URI")
    assert repr(uri) in message and "pods on a cluster cannot reach it" in message
    assert "use an MLflow server both reach, e.g. http://mlflow.gpuflow:5000" in message


@pytest.mark.parametrize("uri", ["/srv/gpuflow/store", "file:///srv/gpuflow/store", "store"])
def test_a_local_store_is_refused_naming_an_s3_store_instead(uri: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        KubernetesGPUJob(image="i").check_reachable(tracking_uri=HTTP, store_uri=uri)

    assert f"the store {uri!r} is a folder on this machine" in str(refused.value)
    assert "use an object store both reach, e.g. s3://bucket/gpuflow" in str(refused.value)


def test_servers_and_remote_stores_are_accepted_and_the_local_backend_accepts_anything() -> None:
    KubernetesGPUJob(image="i").check_reachable(tracking_uri="https://mlflow.example.com", store_uri=S3)
    KubernetesGPUJob(image="i").check_reachable(tracking_uri=HTTP, store_uri="S3://Bucket/x")
    LocalProcess().check_reachable(tracking_uri="sqlite:///m.db", store_uri="/tmp/store")
    check_reachable({"MLFLOW_RUN_ID": "r"}, "a workload without either")


def test_the_serving_block_refuses_an_mlflow_file_its_own_or_the_rollouts() -> None:
    with pytest.raises(ConfigurationError, match=r"^the Kubernetes serving block .*'sqlite:///m.db' is on this"):
        KubernetesServing(image="i").check_reachable("sqlite:///m.db")
    with pytest.raises(ConfigurationError, match="'file:///mlruns'"):
        KubernetesServing(image="i", tracking_uri="file:///mlruns").check_reachable(HTTP)
    KubernetesServing(image="i", tracking_uri=HTTP).check_reachable("sqlite:///m.db")  # the pods' own address wins
