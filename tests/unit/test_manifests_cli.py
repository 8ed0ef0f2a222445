"""``gpuflow manifests``: prints exactly what the runner would apply, valid for Kubernetes 1.37, and refuses bad
options with exit code 2 and one clear line."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from blocks.data_store import DataStore
from blocks.kubernetes import KubernetesGPUJob
from blocks.kubernetes_serving import KubernetesServing
from blocks.mlflow_tracking import MLflowTracking
from deployments import PROJECT_ROOT
from flows.cli import main
from tasks.kube.manifests import job_name, rbac_manifests
from tasks.training.trainer_job import trainer_workload
from tests.fixtures.manifest_schema import validate
from tests.fixtures.manifests_cli import TRAIN, run


def test_train_prints_the_job_the_train_stage_would_run(capsys: pytest.CaptureFixture[str]) -> None:
    code, documents, err = run([*TRAIN, "--gpus", "1", "--node-selector", "nvidia.com/gpu.product=NVIDIA-L4"], capsys)
    assert code == 0, err
    (job,) = documents
    validate(job)
    expected = trainer_workload(
        dataset_uri="s3://bucket/gpuflow/datasets/digits/v1",
        training_id="train-0123abcd",
        epochs=7,
        batch_size=64,
        learning_rate=1e-3,
        hidden_size=128,
        seed=42,
        device="auto",
        run_id="0123abcd",
        tracking=MLflowTracking(tracking_uri="http://mlflow.ml:5000"),
        store=DataStore(root_uri="s3://bucket/gpuflow"),
        model_name="gpuflow-digits",
        early_stop="plateau",
        patience=5,
    )
    assert job["metadata"]["name"] == job_name(expected)
    (box,) = job["spec"]["template"]["spec"]["containers"]
    assert box["command"] == expected.command("python")
    env = {e["name"]: e for e in box["env"]}
    for key, value in expected.env.items():
        assert env[key]["value"] == value
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):  # an s3:// store: credentials by reference
        assert env[key]["valueFrom"]["secretKeyRef"] == {"name": "store", "key": key}
    assert box["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert job["spec"]["template"]["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-L4"}


def test_train_on_two_nodes_prints_the_headless_service_first(capsys: pytest.CaptureFixture[str]) -> None:
    code, documents, err = run([*TRAIN, "--nodes", "2", "--toleration", "dedicated=ml:NoSchedule"], capsys)
    assert code == 0, err
    service, job = documents
    assert (service["kind"], job["kind"]) == ("Service", "Job")
    for document in documents:
        validate(document)
    assert job["spec"]["template"]["spec"]["tolerations"] == [
        {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}
    ]


def test_serve_with_a_gateway_prints_deployments_services_and_a_weighted_route(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = [
        "manifests", "serve", "--model-uri", "models:/gpuflow-digits/3", "--image", "img:1", "--namespace", "ml",
        "--tracking-uri", "http://mlflow.ml:5000", "--canary-model-uri", "models:/gpuflow-digits/4",
        "--canary-weight", "10", "--gateway", "web", "--replicas", "3", "--", "--max-wait-us", "200",
    ]  # fmt: skip
    code, documents, err = run(argv, capsys)
    assert code == 0, err
    kinds = [(d["kind"], d["metadata"]["name"]) for d in documents]
    assert kinds == [
        ("Deployment", "gpuflow-digits-stable"),
        ("Deployment", "gpuflow-digits-canary"),
        ("Service", "gpuflow-digits"),
        ("Service", "gpuflow-digits-stable"),
        ("Service", "gpuflow-digits-canary"),
        ("HTTPRoute", "gpuflow-digits"),
    ]
    for document in documents[:-1]:
        validate(document)
    stable, canary = documents[0], documents[1]
    assert stable["spec"]["replicas"] == 3 and canary["spec"]["replicas"] == 1
    assert stable["spec"]["template"]["metadata"]["labels"]["gpuflow.io/model-version"] == "3"
    assert canary["spec"]["template"]["metadata"]["labels"]["gpuflow.io/model-version"] == "4"
    assert stable["spec"]["template"]["spec"]["containers"][0]["command"][-2:] == ["--max-wait-us", "200"]
    weights = [ref["weight"] for ref in documents[-1]["spec"]["rules"][0]["backendRefs"]]
    assert weights == [90, 10]


def test_rbac_prints_the_committed_file(capsys: pytest.CaptureFixture[str]) -> None:
    code, documents, _ = run(["manifests", "rbac"], capsys)
    assert code == 0
    committed = [d for d in yaml.safe_load_all((PROJECT_ROOT / "deployments/kubernetes/rbac.yaml").read_text()) if d]
    assert documents == committed == rbac_manifests("gpuflow", http_routes=False)
    code, documents, _ = run(["manifests", "rbac", "--namespace", "ml", "--http-routes"], capsys)
    assert code == 0 and documents == rbac_manifests("ml", http_routes=True)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--memory-limit", "16GB"], "memory_limit must be a Kubernetes quantity"),
        (["--gpus", "1", "--gpu-resource", "nvidia.com/mig-1g"], "must look like nvidia.com/mig-<g>g.<m>gb"),
        (["--nodes", "0"], "nodes"),
        (["--secret-name", ""], "needs secret environment variables AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY"),
    ],
)
def test_bad_train_options_exit_2_with_one_line(
    extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run([*TRAIN, *extra], capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("gpuflow: error: ") and message in err


def test_train_needs_an_image_and_cluster_reachable_services(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["manifests", "train", "--dataset", "s3://b/d", "--run-id", "r"], capsys)
    assert code == 2 and "--image is required" in err
    code, _, err = run(["manifests", "train", "--image", "i:1", "--dataset", "s3://b/d", "--run-id", "r"], capsys)
    assert code == 2 and "--store-uri" in err


def test_train_and_serve_refuse_an_mlflow_file_or_a_local_store_naming_what_to_use(
    capsys: pytest.CaptureFixture[str],
) -> None:
    base = ["manifests", "train", "--image", "i:1", "--dataset", "s3://b/d", "--run-id", "r"]
    code, out, err = run([*base, "--tracking-uri", "sqlite:///mlflow.db", "--store-uri", "s3://b/g"], capsys)
    assert code == 2 and not out and err.count("\n") == 1
    assert "'sqlite:///mlflow.db' is on this machine" in err and "use an MLflow server both reach" in err
    code, out, err = run([*base, "--tracking-uri", "http://m:5000", "--store-uri", "/srv/store"], capsys)
    assert code == 2 and not out and "the store '/srv/store' is a folder on this machine" in err
    serve = ["manifests", "serve", "--model-uri", "models:/m/1", "--image", "i:1", "--tracking-uri", "file:///mlruns"]
    code, out, err = run(serve, capsys)
    assert code == 2 and not out and "'file:///mlruns' is on this machine" in err


def test_serve_refuses_a_weight_without_a_gateway(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["manifests", "serve", "--model-uri", "models:/m/1", "--image", "i:1", "--tracking-uri", "http://m"]
    code, _, err = run([*base, "--canary-model-uri", "models:/m/2", "--canary-weight", "5"], capsys)
    assert code == 2 and "--canary-weight needs --gateway" in err
    code, _, err = run(["manifests", "serve", "--model-uri", "models:/m@champion", "--image", "i:1"], capsys)
    assert code == 2 and "names no version" in err


def test_the_installed_command_prints_yaml_and_fails_cleanly() -> None:
    """The real entry point in a fresh process: stdout is the YAML, a bad option is one stderr line, exit 2."""
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "manifests", "rbac", "--namespace", "ml"],
        capture_output=True, text=True, timeout=120, cwd=PROJECT_ROOT, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [d for d in yaml.safe_load_all(done.stdout)] == rbac_manifests("ml", http_routes=False)
    assert done.stdout.startswith("---\n")
    bad = subprocess.run(
        [sys.executable, "-m", "flows.cli", "manifests", "rbac", "--namespace", "Not_A_Namespace"],
        capture_output=True, text=True, timeout=120, cwd=PROJECT_ROOT, check=False,
    )  # fmt: skip
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip().splitlines() == [
        "gpuflow: error: namespace must be 1-63 lowercase letters, digits or '-' (a DNS label), got 'Not_A_Namespace'"
    ]


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [("--epochs", "0", "expected a whole number of at least 1, got 0"), ("--learning-rate", "-1", "above 0")],
)
def test_trainer_options_are_checked_as_gpuflow_run_checks_them(
    flag: str, value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*TRAIN, flag, value])
    assert exited.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("gpuflow manifests train: error: ") and f"argument {flag}: " in last and message in last


def test_pod_fields_are_declared_once_for_both_blocks_pod_settings_and_the_flags() -> None:
    """KubernetesPod declares the pod fields; PodSettings takes exactly them, and each has a flag on train and serve."""
    import argparse
    import dataclasses

    from blocks.kubernetes_pod import POD_FIELDS, KubernetesPod
    from flows.cli import build_parser
    from tasks.kube.manifests import PodSettings

    assert tuple(f.name for f in dataclasses.fields(PodSettings)) == POD_FIELDS
    assert issubclass(KubernetesGPUJob, KubernetesPod) and issubclass(KubernetesServing, KubernetesPod)
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    kinds = next(a for a in commands.choices["manifests"]._actions if isinstance(a, argparse._SubParsersAction))
    for kind in ("train", "serve"):
        dests = {action.dest for action in kinds.choices[kind]._actions}
        assert set(POD_FIELDS) <= dests, (kind, set(POD_FIELDS) - dests)
