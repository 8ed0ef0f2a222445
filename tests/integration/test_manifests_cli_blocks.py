"""``gpuflow manifests`` with saved blocks (a real Prefect API): the block's settings are used, flags override
them, a missing block is exit 2, and `serve` prints the rollout's own Deployments with the block's tracking URI."""

from __future__ import annotations

import pytest
from kubernetes.client import ApiClient

from blocks.kubernetes import KubernetesGPUJob
from blocks.kubernetes_serving import KubernetesServing
from tasks.kube.cluster_serving import ClusterServing
from tasks.kube.servers import server_name_for
from tasks.tracking.model_registry import RegisteredVersion
from tests.fixtures.manifests_cli import TRAIN, run


@pytest.mark.usefixtures("prefect_api")
def test_block_settings_are_used_and_flags_override_them(capsys: pytest.CaptureFixture[str]) -> None:
    KubernetesGPUJob(
        image="registry.example.com/gpuflow:0.2.0",
        namespace="team-a",
        gpus=4,
        gpu_resource="nvidia.com/mig-3g.40gb",
        secret_name="store",
        backoff_limit=1,
    ).save("manifests-cli-test", overwrite=True)
    argv = [a for a in TRAIN if a not in ("--image", "registry.example.com/gpuflow:0.1.0", "--namespace", "ml")]
    code, documents, err = run([*argv, "--block", "manifests-cli-test", "--gpus", "1"], capsys)
    assert code == 0, err
    (job,) = documents
    assert job["metadata"]["namespace"] == "team-a" and job["spec"]["backoffLimit"] == 1
    (box,) = job["spec"]["template"]["spec"]["containers"]
    assert box["image"] == "registry.example.com/gpuflow:0.2.0"
    assert box["resources"]["limits"]["nvidia.com/mig-3g.40gb"] == "1"

    code, _, err = run([*argv, "--block", "no-such-block"], capsys)
    assert code == 2 and "no gpuflow-kubernetes-gpu-job block named 'no-such-block'" in err


@pytest.mark.usefixtures("prefect_api")
def test_serve_prints_what_the_rollout_would_create_from_a_serving_block(capsys: pytest.CaptureFixture[str]) -> None:
    long_model = "A_very_long_model_name_for_the_digits_classifier_v2"
    base = ["manifests", "serve", "--model-uri", f"models:/{long_model}/3", "--tracking-uri", "http://m:5000"]
    code, documents, err = run([*base, "--image", "i:1"], capsys)
    assert code == 0, err
    stable = documents[0]
    assert stable["metadata"]["name"] == f"{server_name_for(long_model)}-stable", "named as the rollout names it"
    limits = stable["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    defaults = KubernetesServing(image="i:1")
    assert (limits["cpu"], limits["memory"]) == (defaults.cpu_limit, defaults.memory_limit)

    KubernetesServing(
        image="registry.example.com/gpuflow:0.2.0",
        namespace="team-a",
        server_name="digits",
        env={"MLFLOW_S3_ENDPOINT_URL": "http://minio:9000"},
        server_args=["--max-batch-size", "64"],
    ).save("manifests-serve-test", overwrite=True)
    code, documents, err = run([*base, "--block", "manifests-serve-test", "--", "--max-wait-us", "200"], capsys)
    assert code == 0, err
    stable = documents[0]
    (box,) = stable["spec"]["template"]["spec"]["containers"]
    assert stable["metadata"]["name"] == "digits-stable" and stable["metadata"]["namespace"] == "team-a"
    assert box["image"] == "registry.example.com/gpuflow:0.2.0"
    assert {"name": "MLFLOW_S3_ENDPOINT_URL", "value": "http://minio:9000"} in box["env"]
    assert box["command"][-4:] == ["--max-batch-size", "64", "--max-wait-us", "200"]
    code, _, err = run([*base, "--block", "no-such-block"], capsys)
    assert code == 2 and "no gpuflow-kubernetes-serving block named 'no-such-block'" in err


@pytest.mark.usefixtures("prefect_api")
def test_serve_prints_the_deployments_a_rollout_creates_with_the_blocks_tracking_uri(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """One builder for both: the printed stable and canary are the rollout's own, MLflow as the block says."""
    block = KubernetesServing(
        image="registry.example.com/gpuflow:0.2.0",
        namespace="team-a",
        tracking_uri="http://mlflow.team-a.svc:5000",
        env={"MLFLOW_S3_ENDPOINT_URL": "http://minio:9000"},
        server_args=["--max-batch-size", "64"],
        secret_name="store",
        secret_keys=["AWS_SECRET_ACCESS_KEY"],
    )
    block.save("manifests-serve-tracking", overwrite=True)
    argv = [
        "manifests", "serve", "--block", "manifests-serve-tracking", "--model-uri", "models:/digits/3",
        "--canary-model-uri", "models:/digits/4", "--replicas", "2", "--canary-replicas", "1",
    ]  # fmt: skip
    code, documents, err = run(argv, capsys)  # no --tracking-uri: the block's is what pods use
    assert code == 0, err
    code, with_flag, err = run([*argv, "--tracking-uri", "http://elsewhere:5000"], capsys)
    assert code == 0, err
    assert with_flag == documents, "the block's tracking_uri wins, as in a rollout"
    serving = ClusterServing(block, tracking_uri="http://elsewhere:5000", model_name="digits", api=ApiClient())
    versions = {
        track: RegisteredVersion(name="digits", version=v, labels=[]) for track, v in (("stable", "3"), ("canary", "4"))
    }
    assert documents[0] == serving._deployment("stable", versions["stable"], 2)
    assert documents[1] == serving._deployment("canary", versions["canary"], 1)
    (box,) = documents[0]["spec"]["template"]["spec"]["containers"]
    assert {"name": "MLFLOW_TRACKING_URI", "value": "http://mlflow.team-a.svc:5000"} in box["env"]
