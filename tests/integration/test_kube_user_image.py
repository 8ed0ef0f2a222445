"""A user's own code on Kubernetes, as a user ships it: examples/digits_cnn built into an image FROM gpuflow's
(the example's own Dockerfile, laid out by the emulated cluster's image builder) and named with a command by the
trainer spec (trainer.kube.yaml), trained by the train flow across 2 pods of an Indexed Job (torchrun, gloo on CPU)
against a real mlflow server and moto's S3, which the pods reach as they would on a cluster."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import mlflow.pytorch
import pytest
import torch
import yaml
from mlflow import MlflowClient
from prefect.states import State

from blocks.kubernetes import KubernetesGPUJob
from flows.prepare import prepare
from flows.train import train
from tasks.core.errors import PermanentWorkloadFailure
from tests.conftest import MlflowServer, S3Server
from tests.fixtures.cluster_services import ClusterServices, cluster_services, two_node_job
from tests.fixtures.flow_env import no_heartbeat_wait  # noqa: F401
from tests.fixtures.kube import KubeCluster
from tests.fixtures.kube.image import Image, build_image
from tests.integration.test_train_flow import flow_run_logs

pytestmark = pytest.mark.usefixtures("prefect_api", "no_heartbeat_wait")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "digits_cnn"
GPUFLOW_IMAGE = "gpuflow/workloads:test"  # what the emulated cluster pulls as gpuflow's image
SPEC = yaml.safe_load((EXAMPLE / "trainer.kube.yaml").read_text())
USER_IMAGE = SPEC["image"]
QUICK = {"epochs": 2, "batch_size": 32}  # the example's 15 epochs of 64 are its README's, not a test's


def user_image(cluster: KubeCluster, out: Path) -> Image:
    """`docker build --build-arg GPUFLOW_IMAGE=<gpuflow's> -t <the spec's image> examples/digits_cnn`, emulated."""
    return build_image(
        EXAMPLE / "Dockerfile",
        EXAMPLE,
        out,
        bases={GPUFLOW_IMAGE: cluster.image},
        build_args={"GPUFLOW_IMAGE": GPUFLOW_IMAGE},
    )


def block(services: ClusterServices, cluster: KubeCluster) -> KubernetesGPUJob:
    return two_node_job(services, cluster, GPUFLOW_IMAGE, backoff_limit=0)


Setting = tuple[ClusterServices, dict[str, str], str]  # the services, their saved blocks, the prepared dataset


@pytest.fixture
def setting(kube_cluster: KubeCluster, tmp_path: Path, s3_server: S3Server, mlflow_server: MlflowServer) -> Setting:
    """The cluster with the user's image pushed, the services' blocks saved, the digits prepared as images."""
    kube_cluster.extra_env["OMP_NUM_THREADS"] = "1"  # one torch thread per rank: the machine is small and shared
    kube_cluster.add_image(USER_IMAGE, user_image(kube_cluster, tmp_path / "image"))
    services = cluster_services(kube_cluster, s3_server, mlflow_server)
    blocks = services.save()
    block(services, kube_cluster).save("digits-2-nodes", overwrite=True)
    subprocess.run([sys.executable, str(EXAMPLE / "make_data.py"), str(tmp_path)], check=True, capture_output=True)
    prepared = prepare(
        str(tmp_path / "digits.csv"),
        dataset_name="digits-image",
        dataset_spec=str(EXAMPLE / "dataset.yaml"),
        data_store=blocks["data_store"],
        tracking=blocks["tracking"],
    )
    return services, blocks, prepared.dataset_uri


def run_train(setting: Setting, trainer: Path) -> State[Any]:
    _, blocks, dataset_uri = setting
    return train(
        **blocks,
        dataset_uri=dataset_uri,
        model_name="digits-cnn",
        device="cpu",
        trainer=str(trainer),
        hyperparameters=QUICK,
        compute="gpuflow-kubernetes-gpu-job/digits-2-nodes",
        return_state=True,
    )


def test_the_digits_cnn_image_trains_on_two_pods_and_logs_its_model_once(
    setting: Setting, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    services = setting[0]

    state = run_train(setting, EXAMPLE / "trainer.kube.yaml")
    trained = state.result()

    assert trained.metrics["val_accuracy"] > 0.5  # two epochs: trained, not tuned
    client = MlflowClient(services.tracking.uri)
    run = client.get_run(trained.run_id)
    assert run.data.tags["gpuflow.trainer"] == f"entry point cnn:train in image {USER_IMAGE}"
    assert run.data.tags["gpuflow.model_uri"] == trained.model_uri
    assert run.data.tags["gpuflow.task"] == "classification"
    assert len(json.loads(run.data.tags["gpuflow.labels"])) == 10
    assert run.data.tags["gpuflow.compute.backend"] == "kubernetes"
    for key in ("train_loss", "val_loss", "val_accuracy"):  # two ranks trained; rank 0 alone reported
        assert sorted(m.step for m in client.get_metric_history(trained.run_id, key)) == [1, 2], key
    assert len(client.get_metric_history(trained.run_id, "workload_seconds")) == 1  # one launcher's telemetry

    logs = flow_run_logs(state.state_details.flow_run_id, "[1] launcher: rank 1")
    assert any(m.startswith("[0] launcher: training ") for m in logs), logs  # pod 0: rank 0's launcher
    assert any(m.startswith("[1] launcher: rank 1: starting ") for m in logs), logs  # pod 1: rank 1's
    assert [m.split()[2] for m in logs if m.startswith("[0] epoch ")] == ["1/2", "2/2"]

    monkeypatch.setenv("MLFLOW_TRACKING_URI", services.tracking.uri)
    # the torch path: the exported CNN on [N, 1, 8, 8]
    model = mlflow.pytorch.load_model(trained.model_uri, dst_path=str(tmp_path))
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_the_same_spec_on_gpuflows_own_image_fails_naming_the_missing_module(setting: Setting, tmp_path: Path) -> None:
    forgot = tmp_path / "trainer.kube.yaml"  # the user did not build their image: the spec names gpuflow's
    forgot.write_text(yaml.safe_dump({**SPEC, "image": GPUFLOW_IMAGE}))

    state = run_train(setting, forgot)

    assert state.is_failed()
    with pytest.raises(PermanentWorkloadFailure, match=r"entry point 'cnn:train': no module named 'cnn'") as failed:
        state.result()
    assert failed.value.exit_code == 2  # the podFailurePolicy failed the Job at once: no retry can import it
