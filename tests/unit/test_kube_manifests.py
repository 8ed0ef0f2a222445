"""Kubernetes manifests: every one validated against the Kubernetes 1.37 OpenAPI schema (strict: unknown fields
are errors), plus the properties that matter (command, secrets by reference only, GPUs, safety, labels).

The HTTPRoute is a Gateway API CRD, absent from the Kubernetes schema and from every installed package, so its
structure is checked with explicit assertions against the Gateway API v1 rules it relies on.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from blocks.kubernetes import KubernetesGPUJob
from deployments import PROJECT_ROOT
from deployments.kubernetes_template import TEMPLATE_PATH, render
from tasks.core.errors import ConfigurationError
from tasks.core.workload import WorkloadSpec
from tasks.kube import manifests as m
from tests.fixtures.manifest_schema import validate
from workloads.trainer.config import EXIT_CONFIG, EXIT_DATA

TRAINING_ID = "train-5f2c1d7e-1111-2222-3333-1234567890ab"
SECRET_VALUE = "s3cr3t-value-never-shown"


def spec(**overrides: Any) -> WorkloadSpec:
    fields: dict[str, Any] = {
        "name": "trainer",
        "module": "workloads.trainer",
        "args": ["--dataset-uri", "s3://bucket/datasets/digits/v1", "--training-id", TRAINING_ID, "--epochs", "3"],
        "env": {"MLFLOW_TRACKING_URI": "http://mlflow:5000", "MLFLOW_RUN_ID": "abc", "GPUFLOW_STORE_URI": "s3://b/g"},
        "secret_env": {"AWS_ACCESS_KEY_ID": "AKIA-not-shown", "AWS_SECRET_ACCESS_KEY": SECRET_VALUE},
        "labels": {"gpuflow.stage": "train", "gpuflow.training-id": TRAINING_ID, "gpuflow.model": "gpuflow-digits"},
    }
    fields.update(overrides)
    return WorkloadSpec(**fields)


def settings(nodes: int = 1, **pod: Any) -> m.JobSettings:
    pod_fields: dict[str, Any] = {
        "image": "registry.example.com/gpuflow:0.1.0",
        "namespace": "ml",
        "secret_name": "store",
    }
    pod_fields.update(pod)
    return m.JobSettings(pod=m.PodSettings(**pod_fields), nodes=nodes)


def container(job: dict[str, Any]) -> dict[str, Any]:
    (found,) = job["spec"]["template"]["spec"]["containers"]
    return found


def env_of(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container(job)["env"]}


# --- the validator itself ----------------------------------------------------------------------------------------


def test_strict_validation_rejects_an_unknown_field() -> None:
    (job,) = m.training_manifests(spec(), settings())
    broken = copy.deepcopy(job)
    broken["spec"]["template"]["spec"]["containers"][0]["gpus"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(broken)


# --- training ----------------------------------------------------------------------------------------------------


def test_single_node_job_is_valid_and_runs_the_trainer_command_line() -> None:
    (job,) = m.training_manifests(spec(), settings(gpus=1))
    validate(job)
    assert job["kind"] == "Job" and job["metadata"]["namespace"] == "ml"
    assert container(job)["command"] == ["python", "-m", "workloads.trainer", *spec().args]
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 1
    assert "completionMode" not in job["spec"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert container(job)["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_a_custom_trainer_runs_its_command_under_the_launcher_in_its_own_image() -> None:
    launcher_args = ["--dataset-uri", "s3://b/d", "--training-id", TRAINING_ID, "--", "python", "train.py"]
    custom = spec(module="workloads.launcher", args=launcher_args, image="registry.example.com/team/cnn:3")
    (job,) = m.training_manifests(custom, settings(gpus=1))
    validate(job)
    assert container(job)["image"] == "registry.example.com/team/cnn:3"
    assert container(job)["command"] == ["python", "-m", "workloads.launcher", *launcher_args]
    (_service, indexed) = m.training_manifests(custom, settings(nodes=2, gpus=1))
    validate(indexed)
    command = container(indexed)["command"]  # torchrun's wrapper starts one launcher per rank, unchanged
    assert command[command.index("-m", 3) :] == ["-m", "workloads.launcher", *launcher_args]
    assert container(indexed)["image"] == "registry.example.com/team/cnn:3"


def test_plain_env_by_value_and_secrets_only_by_key_reference() -> None:
    (job,) = m.training_manifests(spec(), settings())
    env = env_of(job)
    assert env["MLFLOW_TRACKING_URI"] == {"name": "MLFLOW_TRACKING_URI", "value": "http://mlflow:5000"}
    assert env["AWS_SECRET_ACCESS_KEY"] == {
        "name": "AWS_SECRET_ACCESS_KEY",
        "valueFrom": {"secretKeyRef": {"name": "store", "key": "AWS_SECRET_ACCESS_KEY"}},
    }
    assert env["GPUFLOW_POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["TMPDIR"]["value"] == env["HOME"]["value"] == "/scratch"
    text = yaml.safe_dump(job)
    assert SECRET_VALUE not in text and "AKIA-not-shown" not in text


def test_secret_env_without_a_secret_name_is_refused_naming_the_keys() -> None:
    with pytest.raises(ConfigurationError, match=r"AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY.*secret_name"):
        m.training_manifests(spec(), settings(secret_name=None))
    (job,) = m.training_manifests(spec(secret_env={}), settings(secret_name=None))
    validate(job)


def test_pod_is_non_root_without_privileges_and_with_scratch_and_shm() -> None:
    (job,) = m.training_manifests(spec(), settings())
    pod = job["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 1000
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False and pod["serviceAccountName"] == "gpuflow-workload"
    security = container(job)["securityContext"]
    assert security == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["shm"]["emptyDir"]["medium"] == "Memory"
    assert {x["mountPath"] for x in container(job)["volumeMounts"]} == {"/scratch", "/dev/shm"}


def test_failure_policy_fails_fast_on_permanent_exit_codes_and_ignores_disruptions() -> None:
    (job,) = m.training_manifests(spec(), settings())
    fail, ignore = job["spec"]["podFailurePolicy"]["rules"]
    assert fail["action"] == "FailJob"
    assert fail["onExitCodes"] == {
        "containerName": "trainer",
        "operator": "In",
        "values": [EXIT_CONFIG, EXIT_DATA, 126, 127],
    }
    assert ignore == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    assert job["spec"]["backoffLimit"] == 3 and job["spec"]["activeDeadlineSeconds"] == 6 * 3600
    assert job["spec"]["ttlSecondsAfterFinished"] == 3600


def test_labels_for_cost_allocation_on_job_and_pods() -> None:
    (job,) = m.training_manifests(spec(), settings(labels={"team": "vision"}))
    for labels in (job["metadata"]["labels"], job["spec"]["template"]["metadata"]["labels"]):
        assert labels["app.kubernetes.io/name"] == "gpuflow"
        assert labels["app.kubernetes.io/component"] == "trainer"
        assert labels["app.kubernetes.io/managed-by"] == "gpuflow"
        assert labels["gpuflow.io/stage"] == "train"
        assert labels["gpuflow.io/training-id"] == TRAINING_ID
        assert labels["gpuflow.io/model"] == "gpuflow-digits"
        assert labels["team"] == "vision"


def test_label_values_are_sanitised() -> None:
    labeled = spec(labels={"gpuflow.dataset-version": "digits@v1:2024/01", "gpuflow.pipeline-run": "-" + "x" * 80})
    (job,) = m.training_manifests(labeled, settings())
    validate(job)
    labels = job["metadata"]["labels"]
    assert labels["gpuflow.io/dataset-version"] == "digits-v1-2024-01"
    assert len(labels["gpuflow.io/pipeline-run"]) <= 63


def test_gpu_pods_tolerate_the_gpu_taint_by_default_and_cpu_pods_need_none() -> None:
    (gpu_job,) = m.training_manifests(spec(), settings(gpus=2))
    assert gpu_job["spec"]["template"]["spec"]["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    (cpu_job,) = m.training_manifests(spec(), settings())
    assert "tolerations" not in cpu_job["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in container(cpu_job)["resources"]["limits"]


def test_node_selector_priority_class_and_pull_secrets() -> None:
    (job,) = m.training_manifests(
        spec(),
        settings(
            gpus=1,
            node_selector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
            tolerations=[{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
            priority_class="training-low",
            image_pull_secrets=["regcred"],
        ),
    )
    validate(job)
    pod = job["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}]
    assert pod["priorityClassName"] == "training-low" and pod["imagePullSecrets"] == [{"name": "regcred"}]


def test_mig_resource_is_requested_by_name() -> None:
    (job,) = m.training_manifests(spec(), settings(gpus=1, gpu_resource="nvidia.com/mig-1g.10gb"))
    validate(job)
    limits = container(job)["resources"]["limits"]
    assert limits["nvidia.com/mig-1g.10gb"] == "1" and "nvidia.com/gpu" not in limits


def test_two_nodes_give_a_headless_service_and_an_indexed_job_under_torchrun() -> None:
    service, job = m.training_manifests(spec(), settings(nodes=2, gpus=4))
    validate(service)
    validate(job)
    name = m.job_name(spec())
    assert service["kind"] == "Service" and service["metadata"]["name"] == name
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == {m.LABEL_JOB: name}
    assert job["spec"]["template"]["metadata"]["labels"][m.LABEL_JOB] == name
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 2
    assert job["spec"]["template"]["spec"]["subdomain"] == name
    assert container(job)["command"] == [
        "python", "-m", "workloads.trainer.launch", "--nnodes=2", "--nproc-per-node=4",
        "--node-rank=$(JOB_COMPLETION_INDEX)", "--master-addr=$(GPUFLOW_RDZV_HOST)",
        "--master-port=$(GPUFLOW_RDZV_PORT)", "-m", "workloads.trainer", *spec().args,
    ]  # fmt: skip
    env = env_of(job)
    assert env["GPUFLOW_RDZV_HOST"]["value"] == f"{name}-0.{name}"
    assert env["GPUFLOW_RDZV_PORT"]["value"] == "29500"
    assert container(job)["ports"] == [{"name": "rdzv", "containerPort": 29500, "protocol": "TCP"}]


def test_distributed_cpu_training_runs_one_process_per_pod() -> None:
    _, job = m.training_manifests(spec(), settings(nodes=3))
    assert "--nproc-per-node=1" in container(job)["command"]


def test_job_name_is_a_short_dns_label_stable_per_training_id_and_distinct_between_ids() -> None:
    name = m.job_name(spec())
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 52
    assert name == m.job_name(spec(args=["--other"]))
    other = spec(labels={"gpuflow.training-id": TRAINING_ID[:-1] + "c"})
    assert m.job_name(other) != name
    long_id = spec(labels={"gpuflow.training-id": "Train_" + "X" * 120})
    assert len(m.job_name(long_id)) <= 52 and m.job_name(long_id).startswith("gpuflow-trainer-train-x")
    assert f"{name}-0".__len__() <= 63


@pytest.mark.parametrize(
    ("pod", "message"),
    [
        ({"cpu_request": "1 core"}, "cpu_request must be a Kubernetes quantity"),
        ({"memory_limit": "16GB"}, "memory_limit must be a Kubernetes quantity"),
        ({"memory_request": "32Gi"}, "memory request 32Gi is above its limit 16Gi"),
        ({"gpus": -1}, "gpus must be a whole number"),
        ({"gpu_resource": "nvidia.com/mig-1g10gb"}, "must look like nvidia.com/mig-<g>g.<m>gb"),
        ({"gpu_resource": "gpu"}, "not an extended resource name"),
        ({"node_selector": {"nvidia.com/gpu.product": "NVIDIA H100"}}, "not a valid label value"),
        ({"labels": {"bad key!": "x"}}, "label key 'bad key!' is not valid"),
        ({"namespace": "ML_Team"}, "namespace must be 1-63 lowercase"),
        ({"tolerations": [{"key": "a", "operator": "Sometimes"}]}, "operator must be Equal or Exists"),
        ({"tolerations": [{"key": "a", "effect": "NoRun"}]}, "effect must be one of"),
        ({"tolerations": [{"key": "a", "color": "red"}]}, "unknown fields"),
        ({"image": "has space:1"}, "image must be a container image reference"),
    ],
)
def test_bad_pod_settings_are_refused_with_a_clear_message(pod: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        settings(**pod)


@pytest.mark.parametrize(
    ("job", "message"),
    [
        ({"nodes": 0}, "nodes must be a whole number, at least 1"),
        ({"backoff_limit": -1}, "backoff_limit must be a whole number, at least 0"),
        ({"rendezvous_port": 70000}, "rendezvous_port must be a TCP port"),
        ({"permanent_exit_codes": (0,)}, "permanent exit codes must be 1-255"),
    ],
)
def test_bad_job_settings_are_refused(job: dict[str, Any], message: str) -> None:
    pod = m.PodSettings(image="img:1")
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        m.JobSettings(pod=pod, **job)


@pytest.mark.parametrize("text", ["500m", "2", "0.5", "16Gi", "1e3", "128974848", "129M", "2E"])
def test_quantities_kubernetes_accepts_are_accepted(text: str) -> None:
    m.quantity(text, "q")


@pytest.mark.parametrize("text", ["16GB", "1 core", "-1", "", "2Gb"])
def test_anything_else_is_refused_naming_the_field_and_the_form_expected(text: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape("q must be a Kubernetes quantity such as 500m, 2, 512Mi")):
        m.quantity(text, "q")


# --- the block ---------------------------------------------------------------------------------------------------


def test_block_settings_build_the_same_manifests() -> None:
    block = KubernetesGPUJob(
        image="registry.example.com/gpuflow:0.1.0",
        namespace="ml",
        gpus=1,
        gpu_resource="nvidia.com/mig-2g.20gb",
        node_selector={"nvidia.com/gpu.present": "true"},
        secret_name="store",
        nodes=2,
        backoff_limit=1,
    )
    job_settings = block.job_settings()
    assert job_settings.nodes == 2 and job_settings.backoff_limit == 1
    assert job_settings.pod.gpu_resource == "nvidia.com/mig-2g.20gb"
    assert job_settings.permanent_exit_codes == m.PERMANENT_EXIT_CODES
    for manifest in m.training_manifests(spec(), job_settings):
        validate(manifest)
    with pytest.raises(ConfigurationError, match="cpu_limit"):
        KubernetesGPUJob(image="img:1", cpu_limit="four").job_settings()


# --- serving -----------------------------------------------------------------------------------------------------


def server(track: m.Track = "canary", **overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "track": track,
        "model_uri": "models:/gpuflow-digits/4",
        "model_version": "4",
        "replicas": 1,
        "settings": m.PodSettings(image="img:1", namespace="ml", secret_name="store"),
        "server_args": ["--max-wait-us", "200"],
        "env": {"MLFLOW_TRACKING_URI": "http://mlflow:5000"},
        "secret_keys": ["AWS_SECRET_ACCESS_KEY"],
    }
    fields.update(overrides)
    return m.server_deployment("gpuflow-digits", **fields)


def test_server_deployment_is_valid_with_probes_port_and_track_labels() -> None:
    deployment = server()
    validate(deployment)
    assert deployment["metadata"]["name"] == "gpuflow-digits-canary"
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector[m.LABEL_TRACK] == "canary" and m.LABEL_MODEL_VERSION not in selector
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels[m.LABEL_MODEL_VERSION] == "4" and labels[m.LABEL_TRACK] == "canary"
    assert set(selector.items()) <= set(labels.items())
    box = container(deployment)
    assert box["command"] == [
        "python", "-m", "workloads.server", "--model-uri", "models:/gpuflow-digits/4", "--host", "0.0.0.0",
        "--port=$(GPUFLOW_SERVER_PORT)", "--max-wait-us", "200",
    ]  # fmt: skip
    assert box["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert box["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert box["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    env = {e["name"]: e for e in box["env"]}
    assert env["GPUFLOW_SERVER_PORT"]["value"] == "8080"
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "store",
        "key": "AWS_SECRET_ACCESS_KEY",
    }
    assert box["securityContext"]["readOnlyRootFilesystem"] is True
    assert deployment["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


def test_server_with_gpus_is_valid() -> None:
    settings_ = m.PodSettings(image="img:1", gpus=1, node_selector={"nvidia.com/gpu.product": "NVIDIA-L4"})
    deployment = server("stable", settings=settings_, secret_keys=[])
    validate(deployment)
    assert container(deployment)["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_service_selects_both_tracks_and_track_services_one_each() -> None:
    pod = m.PodSettings(image="img:1", namespace="ml")
    shared = m.server_service("gpuflow-digits", pod)
    validate(shared)
    assert shared["spec"]["selector"] == m.server_selector("gpuflow-digits")
    assert m.LABEL_TRACK not in shared["spec"]["selector"]
    assert shared["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    for track in m.TRACKS:
        own = m.track_service("gpuflow-digits", track, pod)
        validate(own)
        assert own["metadata"]["name"] == f"gpuflow-digits-{track}"
        assert own["spec"]["selector"][m.LABEL_TRACK] == track
        assert set(own["spec"]["selector"].items()) <= set(
            server(track)["spec"]["template"]["metadata"]["labels"].items()
        )


def test_http_route_weights_the_track_services() -> None:
    """Gateway API v1 HTTPRoute (a CRD: no schema installed), checked field by field."""
    pod = m.PodSettings(image="img:1", namespace="ml")
    route = m.http_route(
        "gpuflow-digits", gateway="web", gateway_namespace="infra", weights={"stable": 90, "canary": 10}, settings=pod
    )
    assert set(route) == {"apiVersion", "kind", "metadata", "spec"}
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1" and route["kind"] == "HTTPRoute"
    assert route["metadata"]["name"] == "gpuflow-digits" and route["metadata"]["namespace"] == "ml"
    assert set(route["spec"]) == {"parentRefs", "rules"}
    assert route["spec"]["parentRefs"] == [
        {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "web", "namespace": "infra"}
    ]
    (rule,) = route["spec"]["rules"]
    assert set(rule) == {"matches", "backendRefs"}
    assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]
    assert rule["backendRefs"] == [
        {"group": "", "kind": "Service", "name": "gpuflow-digits-stable", "port": 80, "weight": 90},
        {"group": "", "kind": "Service", "name": "gpuflow-digits-canary", "port": 80, "weight": 10},
    ]
    for ref in rule["backendRefs"]:  # Gateway API: weight 0..1000000, port required for a Service
        assert 0 <= ref["weight"] <= 1_000_000 and 1 <= ref["port"] <= 65535
    for labels in (route["metadata"]["labels"],):
        assert all(re.fullmatch(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]", v) for v in labels.values())
    no_namespace = m.http_route(
        "gpuflow-digits", gateway="web", gateway_namespace=None, weights={"stable": 1}, settings=pod
    )
    assert "namespace" not in no_namespace["spec"]["parentRefs"][0]


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({}, "at least one track"),
        ({"stable": 0, "canary": 0}, "must not all be 0"),
        ({"stable": -1}, "weight of track stable"),
        ({"blue": 5}, "track must be one of stable, canary"),
    ],
)
def test_bad_route_weights_are_refused(weights: dict[str, int], message: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        m.http_route("s", gateway="web", gateway_namespace=None, weights=weights, settings=m.PodSettings(image="i:1"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"track": "blue"}, "track must be one of"),
        ({"replicas": -1}, "replicas must be a whole number"),
        ({"model_version": "v 4"}, "not a valid label value"),
        ({"model_uri": ""}, "model URI must be non-empty"),
        ({"secret_keys": ["TOKEN"], "settings": m.PodSettings(image="i:1")}, "TOKEN but no secret_name"),
    ],
)
def test_bad_server_inputs_are_refused(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        server(**overrides)


def test_server_names_must_leave_room_for_the_track() -> None:
    with pytest.raises(ConfigurationError, match="server name"):
        m.server_service("Digits", m.PodSettings(image="i:1"))
    with pytest.raises(ConfigurationError, match="server name"):
        m.server_service("x" * 41, m.PodSettings(image="i:1"))


# --- RBAC and the work pool template -----------------------------------------------------------------------------


@pytest.mark.parametrize("http_routes", [False, True])
def test_rbac_is_valid_and_grants_only_what_flows_use(http_routes: bool) -> None:
    documents = m.rbac_manifests("gpuflow", http_routes=http_routes)
    for document in documents:
        validate(document)
    role = next(d for d in documents if d["kind"] == "Role")
    granted = {
        (g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]
    }
    assert not any(r == "secrets" for _, r, _ in granted), "flows never read Secrets"
    assert not any(v in ("*", "escalate", "bind", "impersonate") for _, _, v in granted)
    assert ("batch", "jobs", "create") in granted and ("", "pods/log", "get") in granted
    assert ("", "pods/proxy", "get") in granted and ("apps", "deployments", "patch") in granted
    assert (("gateway.networking.k8s.io", "httproutes", "patch") in granted) is http_routes
    workload = next(
        d for d in documents if d["kind"] == "ServiceAccount" and d["metadata"]["name"] == "gpuflow-workload"
    )
    assert workload["automountServiceAccountToken"] is False
    binding = next(d for d in documents if d["kind"] == "RoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "gpuflow-flows", "namespace": "gpuflow"}]


def test_committed_rbac_yaml_is_what_the_code_generates() -> None:
    committed = list(yaml.safe_load_all((PROJECT_ROOT / "deployments" / "kubernetes" / "rbac.yaml").read_text()))
    assert committed == m.rbac_manifests("gpuflow", http_routes=False)


def test_committed_base_job_template_is_what_the_code_generates() -> None:
    assert Path(TEMPLATE_PATH).read_text() == render()
    template = json.loads(Path(TEMPLATE_PATH).read_text())
    assert {"gpu_count", "node_selector", "tolerations"} <= set(template["variables"]["properties"])


# --- the image ---------------------------------------------------------------------------------------------------


def _instructions(text: str) -> list[tuple[str, str]]:
    """Dockerfile instructions as (KEYWORD, arguments), continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in joined.splitlines() if line.strip()]


def test_dockerfile_is_multi_stage_non_root_with_the_torch_pin_and_no_secrets() -> None:
    """No Docker engine here to build it; this checks what can be checked from the text."""
    import tomllib

    instructions = _instructions((PROJECT_ROOT / "workloads" / "Dockerfile").read_text())
    stages = [args for keyword, args in instructions if keyword == "FROM"]
    assert len(stages) >= 2 and all(s.startswith("${BASE}") for s in stages)
    base = next(args for keyword, args in instructions if keyword == "ARG" and args.startswith("BASE="))
    assert base.startswith("BASE=nvidia/cuda:") and "runtime" in base
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    users = [args for keyword, args in instructions[last_from:] if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root") and users[-1].split(":")[0].isdigit()
    assert int(users[-1].split(":")[0]) == m.RUN_AS
    pyproject = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    (pin,) = [d for d in pyproject["project"]["dependencies"] if d.replace(" ", "").startswith("torch==")]
    torch_arg = next(args for keyword, args in instructions if keyword == "ARG" and args.startswith("TORCH_VERSION="))
    assert torch_arg.split("=", 1)[1] == pin.split("==", 1)[1]
    for keyword, args in instructions:
        if keyword in ("ENV", "ARG"):
            assert not re.search(r"(SECRET|PASSWORD|TOKEN|ACCESS_KEY)", args, re.IGNORECASE), args
    ignore = (PROJECT_ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in ignore and "!workloads/" in ignore  # only what the image needs enters the build context
