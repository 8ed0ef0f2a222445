"""Training as a Kubernetes Job: the real trainer in pods of the emulated cluster, followed by the real clients.

Each test builds a real ``KubernetesGPUJob`` block (the flow test saves it, as a user would) and asserts what a
user would see: the model in MLflow, the pods' lines in the log, the reason a Job failed, and nothing left on
the cluster afterwards. As on a cluster, the pods reach MLflow through a real ``mlflow server`` and the store
through S3 (moto's server), with the store's keys in a Secret: they cannot read the test's files.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient
from prefect_kubernetes.credentials import KubernetesClusterConfig, KubernetesCredentials

from blocks.kubernetes import KubernetesGPUJob
from flows.train import train
from tasks.core.errors import ConfigurationError, PermanentError, ServiceUnavailable, WorkloadFailed
from tasks.core.workload import WorkloadSpec
from tasks.kube.manifests import LABEL_JOB, job_name
from tasks.tracking.runs import experiment_id
from tasks.training.trainer_job import trainer_workload
from tests.conftest import MlflowServer, S3Server, free_port
from tests.fixtures.cluster_services import ClusterServices, cluster_services
from tests.fixtures.datasets import write_digits_dataset
from tests.fixtures.flow_env import no_heartbeat_wait  # noqa: F401
from tests.fixtures.kube import KubeCluster
from tests.integration.test_train_flow import flow_run_logs

IMAGE = "gpuflow/workloads:test"
MANAGED = "app.kubernetes.io/managed-by=gpuflow"


@dataclasses.dataclass
class Training:
    """A dataset, an MLflow run to log into, and the cluster: what a trainer pod needs."""

    cluster: KubeCluster
    services: ClusterServices
    dataset_uri: str
    run_id: str

    def block(self, **overrides: Any) -> KubernetesGPUJob:
        """Tiny pods, quick polling, short deadlines: a fast test of the same code paths."""
        fields: dict[str, Any] = {
            "image": IMAGE,
            "namespace": self.cluster.namespace,
            "cpu_request": "100m",
            "cpu_limit": "2",
            "memory_request": "256Mi",
            "memory_limit": "4Gi",
            "active_deadline_seconds": 300,
            "poll_interval_seconds": 0.2,
            "image_pull_grace_seconds": 1,
            "delete_failed_jobs": False,
            "secret_name": self.services.secret_name,
        }
        return KubernetesGPUJob(**{**fields, **overrides})

    def spec(self, training_id: str, *, epochs: int = 2, hidden_size: int = 16, batch_size: int = 64) -> WorkloadSpec:
        return trainer_workload(
            dataset_uri=self.dataset_uri,
            training_id=training_id,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=3e-3,
            hidden_size=hidden_size,
            seed=1,
            device="cpu",
            run_id=self.run_id,
            tracking=self.services.tracking,
            store=self.services.store,
            model_name="kube-test",
            telemetry_interval=0.5,
        )

    def history(self, key: str) -> list[int]:
        return sorted(m.step for m in self.mlflow().get_metric_history(self.run_id, key))

    def mlflow(self) -> MlflowClient:
        return MlflowClient(self.services.tracking.uri)

    def assert_nothing_left(self) -> None:
        """No Job, pod or Service with gpuflow's labels, and no pod process alive."""
        self.cluster.wait_for(
            lambda: not self.cluster.pods(MANAGED) and not self.cluster.live_pids(), 30, "the pods to be gone"
        )
        assert not _listed(self.cluster, "jobs", MANAGED)
        assert not _listed(self.cluster, "services", MANAGED)


def _listed(cluster: KubeCluster, kind: str, selector: str) -> list[Any]:
    import kubernetes

    if kind == "jobs":
        return (
            kubernetes.client.BatchV1Api(cluster.api)
            .list_namespaced_job(cluster.namespace, label_selector=selector)
            .items
        )
    return (
        kubernetes.client.CoreV1Api(cluster.api)
        .list_namespaced_service(cluster.namespace, label_selector=selector)
        .items
    )


@pytest.fixture
def training(
    kube_cluster: KubeCluster, gpuflow_home: Path, s3_server: S3Server, mlflow_server: MlflowServer
) -> Training:
    kube_cluster.extra_env["GPUFLOW_TORCH_THREADS"] = "1"
    services = cluster_services(kube_cluster, s3_server, mlflow_server)
    dataset_uri = write_digits_dataset(services.store.root, store=services.store.object_store())
    run_id = MlflowClient(services.tracking.uri).create_run(experiment_id(services.tracking)).info.run_id
    return Training(kube_cluster, services, dataset_uri, run_id)


# --------------------------------------------------------------------------------------------- success


@pytest.mark.usefixtures("prefect_api", "no_heartbeat_wait")
def test_train_flow_on_kubernetes_logs_the_model_and_timings_and_deletes_the_job(training: Training) -> None:
    training.block().save("k8s-test", overwrite=True)
    blocks = training.services.save()

    state = train(
        **blocks,
        dataset_uri=training.dataset_uri,
        model_name="kube-flow",
        epochs=2,
        hidden_size=16,
        learning_rate=3e-3,
        compute="gpuflow-kubernetes-gpu-job/k8s-test",
        return_state=True,
    )
    trained = state.result()

    assert trained.metrics["val_accuracy"] > 0.5  # two epochs of a tiny model: trained, not tuned
    assert set(trained.timings) == {"k8s_queue_seconds", "k8s_start_seconds"}
    assert all(0 <= v < 30 for v in trained.timings.values())
    run = training.mlflow().get_run(trained.run_id)
    assert run.data.tags["gpuflow.model_uri"] == trained.model_uri
    assert run.data.tags["gpuflow.compute.backend"] == "kubernetes"
    assert {"k8s_queue_seconds", "k8s_start_seconds"} <= set(run.data.metrics)

    messages = flow_run_logs(state.state_details.flow_run_id, "trainer on kubernetes: ")
    assert [m.split()[1] for m in messages if m.startswith("epoch ")] == ["1/2", "2/2"]  # pod lines, each once
    assert any(m.startswith("kubernetes: created job ") for m in messages)
    assert any("is running" in m for m in messages)
    assert any(m.startswith("trainer on kubernetes: k8s_queue_seconds=") for m in messages)
    training.assert_nothing_left()


def test_two_node_training_runs_two_gloo_processes(training: Training) -> None:
    lines: list[str] = []
    spec = training.spec("ddp-1", epochs=2)

    result = training.block(nodes=2).run_workload(spec, lines.append)

    assert result.backend == "kubernetes" and result.exit_code == 0
    assert any(line.startswith("[1] launcher: rank 1: starting ") for line in lines), lines
    assert [line.split()[2] for line in lines if line.startswith("[0] epoch ")] == ["1/2", "2/2"]
    assert training.history("val_accuracy") == [1, 2]
    run = training.mlflow().get_run(training.run_id)
    assert run.data.tags.get("gpuflow.model_uri")
    params = run.data.params
    assert (params["world_size"], params["backend"], params["global_batch_size"]) == ("2", "gloo", str(2 * 64))
    training.assert_nothing_left()


# --------------------------------------------------------------------------------------------- faults


def test_pod_deleted_mid_training_is_replaced_and_resumes_from_its_checkpoint(training: Training) -> None:
    spec = training.spec("resume-k8s", epochs=12, hidden_size=512, batch_size=8)  # ~0.15 s an epoch
    name = job_name(spec)
    lines: list[str] = []
    deleted: list[str] = []

    def log(line: str) -> None:
        lines.append(line)
        if line.startswith("epoch 1/12") and not deleted:  # the first checkpoint is written before this line
            (pod,) = training.cluster.pods(f"{LABEL_JOB}={name}")
            deleted.append(pod["metadata"]["name"])
            training.cluster.delete_pod(deleted[0])

    result = training.block().run_workload(spec, log)

    assert result.exit_code == 0 and deleted
    epochs = [int(line.split()[1].split("/")[0]) for line in lines if line.startswith("epoch ")]
    assert epochs == list(range(1, 13)), lines  # every epoch once, in order: none redone, none lost
    assert any("resumed from the checkpoint of step" in line for line in lines), lines
    assert training.history("val_loss") == list(range(1, 13))
    training.assert_nothing_left()


def test_unschedulable_job_fails_within_its_deadline_saying_no_node_has_the_gpus(training: Training) -> None:
    started = time.monotonic()
    with pytest.raises(WorkloadFailed) as failed:
        training.block(gpus=1, active_deadline_seconds=3).run_workload(training.spec("no-gpu"), lambda line: None)

    assert isinstance(failed.value, PermanentError)
    assert failed.value.reason.startswith("unschedulable: 0/1 nodes are available: 1 Insufficient nvidia.com/gpu")
    assert "deadline exceeded after 3s (activeDeadlineSeconds)" in failed.value.reason
    assert time.monotonic() - started < 15


def test_unschedulable_timeout_fails_long_before_the_deadline_and_deletes_the_job(training: Training) -> None:
    started = time.monotonic()
    with pytest.raises(WorkloadFailed) as failed:
        block = training.block(gpus=2, active_deadline_seconds=600, unschedulable_timeout_seconds=1)
        block.run_workload(training.spec("no-gpu-soon"), lambda line: None)

    assert isinstance(failed.value, PermanentError)
    assert failed.value.reason == (
        "unschedulable: 0/1 nodes are available: 1 Insufficient nvidia.com/gpu; "
        "no node for 1s (unschedulable_timeout_seconds)"
    )
    assert time.monotonic() - started < 15
    training.assert_nothing_left()


def _gpu_quota(cluster: KubeCluster, gpus: int) -> None:
    import kubernetes

    quota = {"metadata": {"name": "gpu-quota"}, "spec": {"hard": {"requests.nvidia.com/gpu": str(gpus)}}}
    kubernetes.client.CoreV1Api(cluster.api).create_namespaced_resource_quota(cluster.namespace, quota)


def _pending_gpu_pod(cluster: KubeCluster) -> None:
    """Another team's pod holding the quota's one GPU (pending: the emulated node has no GPU; quota counts it)."""
    import kubernetes

    security = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    pod = {
        "metadata": {"name": "other-team"},
        "spec": {
            "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "main",
                    "image": IMAGE,
                    "command": ["python", "-c", "pass"],
                    "resources": {"limits": {"nvidia.com/gpu": "1"}},
                    "securityContext": security,
                }
            ],
        },
    }
    kubernetes.client.CoreV1Api(cluster.api).create_namespaced_pod(cluster.namespace, pod)


def test_a_full_gpu_quota_is_waited_on_then_fails_after_the_unschedulable_timeout(training: Training) -> None:
    _gpu_quota(training.cluster, 1)
    _pending_gpu_pod(training.cluster)
    notes: list[str] = []
    started = time.monotonic()
    with pytest.raises(WorkloadFailed) as failed:
        block = training.block(gpus=1, active_deadline_seconds=600, unschedulable_timeout_seconds=2)
        block.run_workload(training.spec("quota-full"), notes.append)

    assert isinstance(failed.value, PermanentError)
    assert failed.value.reason.startswith("the cluster refuses to create its pods: pods ")
    assert failed.value.reason.endswith(
        "is forbidden: exceeded quota: gpu-quota, requested: requests.nvidia.com/gpu=1, "
        "used: requests.nvidia.com/gpu=1, limited: requests.nvidia.com/gpu=1; "
        "still refused after 2s (unschedulable_timeout_seconds)"
    )
    assert any("exceeded quota: gpu-quota" in note for note in notes), "said while waiting, not only at the end"
    assert 2 <= time.monotonic() - started < 20
    training.assert_nothing_left()


def test_pods_no_quota_or_policy_will_ever_admit_fail_at_once_and_leave_nothing(training: Training) -> None:
    _gpu_quota(training.cluster, 1)
    started = time.monotonic()
    with pytest.raises(WorkloadFailed) as above_quota:
        training.block(gpus=2).run_workload(training.spec("quota-too-small"), lambda line: None)
    training.cluster.deny_pods("policy.example.com", "pods in this namespace need a cost-center label")
    with pytest.raises(WorkloadFailed) as denied:
        training.block().run_workload(training.spec("denied"), lambda line: None)

    assert isinstance(above_quota.value, PermanentError) and isinstance(denied.value, PermanentError)
    assert "requested: requests.nvidia.com/gpu=2, used: requests.nvidia.com/gpu=0" in above_quota.value.reason
    assert denied.value.reason == (
        'the cluster refuses to create its pods: admission webhook "policy.example.com" denied the request: '
        "pods in this namespace need a cost-center label"
    )
    assert time.monotonic() - started < 20, "neither waited for its deadline"
    training.assert_nothing_left()


def test_without_permission_to_read_events_a_refused_job_is_still_followed_to_its_deadline(training: Training) -> None:
    training.cluster.forbid("list", "events")  # a Role from before gpuflow read events
    training.cluster.deny_pods("policy.example.com", "pods in this namespace need a cost-center label")
    notes: list[str] = []
    with pytest.raises(WorkloadFailed) as failed:
        training.block(active_deadline_seconds=3).run_workload(training.spec("no-events"), notes.append)

    assert failed.value.reason == "deadline exceeded after 3s (activeDeadlineSeconds)"
    unreadable = [note for note in notes if "cannot read job" in note]
    assert len(unreadable) == 1, notes
    assert 'cannot list resource "events"' in unreadable[0] and "show at the deadline" in unreadable[0]


@pytest.mark.parametrize(("verb", "resource"), [("create", "jobs"), ("get", "jobs"), ("list", "pods")])
def test_a_role_missing_one_verb_fails_the_stage_naming_the_verb_and_the_resource(
    training: Training, verb: str, resource: str
) -> None:
    """RBAC is enforced with the Role `gpuflow manifests rbac` prints; take one verb out, as an older or
    hand-edited Role would lack it, and the stage says which verb on which resource its account lacks."""
    training.cluster.forbid(verb, resource)
    started = time.monotonic()
    with pytest.raises(ConfigurationError) as refused:
        training.block().run_workload(training.spec(f"no-{verb}"), lambda line: None)

    message = str(refused.value)
    assert f'cannot {verb} resource "{resource}"' in message, message
    assert 'User "system:serviceaccount:gpuflow-test:gpuflow-flows"' in message
    assert message.endswith("the flow's service account needs the Role from `gpuflow manifests rbac`")
    assert time.monotonic() - started < 30, "refused at once, not at the deadline"


def test_without_permission_to_read_logs_the_training_still_runs_and_says_why_no_line_shows(
    training: Training,
) -> None:
    training.cluster.forbid("get", "pods/log")
    notes: list[str] = []
    result = training.block().run_workload(training.spec("no-logs", epochs=1), notes.append)

    assert result.exit_code == 0
    refused = [note for note in notes if "cannot stream pod" in note]
    assert len(refused) == 1, notes  # said once, not retried every second
    assert 'cannot get resource "pods/log"' in refused[0]
    assert refused[0].endswith("the flow's service account needs the Role from `gpuflow manifests rbac`")


def test_bad_image_fails_fast_naming_the_image_and_leaves_nothing(training: Training) -> None:
    notes: list[str] = []
    started = time.monotonic()
    with pytest.raises(WorkloadFailed) as failed:
        training.block(image="registry.invalid/gpuflow:nope").run_workload(training.spec("bad-image"), notes.append)

    assert isinstance(failed.value, PermanentError)
    assert failed.value.reason.startswith("image pull failed for 'registry.invalid/gpuflow:nope': ")
    assert "ErrImagePull" in failed.value.reason or "ImagePullBackOff" in failed.value.reason
    assert time.monotonic() - started < 15
    training.assert_nothing_left()


def test_configuration_error_fails_through_the_pod_failure_policy_without_retries(training: Training) -> None:
    spec = training.spec("bad-config")
    spec = dataclasses.replace(spec, args=[*spec.args, "--dropout", "2"])
    with pytest.raises(WorkloadFailed) as failed:
        training.block(backoff_limit=3).run_workload(spec, lambda line: None)

    error = failed.value
    assert isinstance(error, PermanentError) and error.exit_code == 2
    assert "exit code 2 (trainer: configuration error" in error.reason and "podFailurePolicy" in error.reason
    assert any("--dropout" in line for line in error.tail)
    kept = training.cluster.get("Job", job_name(spec))  # kept for inspection: delete_failed_jobs is off
    assert kept is not None and kept["status"].get("failed") == 1
    assert len(training.cluster.pods(f"{LABEL_JOB}={job_name(spec)}")) == 1  # no retry

    notes: list[str] = []  # the same training again (a retried flow run): the finished Job is replaced
    with pytest.raises(PermanentError):
        training.block(backoff_limit=3).run_workload(spec, notes.append)
    assert any("left finished (Failed) by an earlier attempt" in note for note in notes), notes
    assert training.cluster.get("Job", job_name(spec))["metadata"]["uid"] != kept["metadata"]["uid"]


def test_missing_secret_fails_fast_naming_the_secret(training: Training) -> None:
    spec = dataclasses.replace(training.spec("no-secret"), secret_env={"AWS_SECRET_ACCESS_KEY": "not-shown"})
    with pytest.raises(WorkloadFailed) as failed:
        training.block(secret_name="gpuflow-missing").run_workload(spec, lambda line: None)

    assert isinstance(failed.value, PermanentError)
    assert "cannot be created: CreateContainerConfigError" in failed.value.reason
    assert "gpuflow-missing" in failed.value.reason and "not-shown" not in str(failed.value)
    training.assert_nothing_left()


def test_oom_killed_pod_is_reported_with_its_memory_limit(training: Training) -> None:
    spec = training.spec("oom")
    with pytest.raises(WorkloadFailed) as failed:
        training.block(
            memory_request="64Mi", memory_limit="64Mi", backoff_limit=0, delete_failed_jobs=True
        ).run_workload(spec, lambda line: None)

    error = failed.value
    assert isinstance(error, PermanentError) and error.exit_code == 137
    assert error.reason.startswith("OOMKilled: container trainer of pod ")
    assert "exceeded its memory limit 64Mi" in error.reason
    training.assert_nothing_left()


def test_interrupt_while_following_deletes_the_job_and_its_pods(training: Training) -> None:
    spec = training.spec("cancelled", epochs=200, hidden_size=512, batch_size=8)

    def log(line: str) -> None:
        if line.startswith("epoch 1/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        training.block().run_workload(spec, log)

    assert training.cluster.get("Job", job_name(spec)) is None
    assert not training.cluster.pods(f"{LABEL_JOB}={job_name(spec)}")
    assert not training.cluster.live_pids()
    training.assert_nothing_left()


def _credentials(server: str, context: str = "c") -> KubernetesCredentials:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u", "namespace": "ml"}}],
        "current-context": "c",
    }
    return KubernetesCredentials(cluster_config=KubernetesClusterConfig(config=config, context_name=context))


def test_unreachable_cluster_and_unusable_credentials_are_said_plainly() -> None:
    spec = WorkloadSpec(name="trainer", module="workloads.trainer", labels={"gpuflow.training-id": "offline"})
    offline = KubernetesGPUJob(image=IMAGE, credentials=_credentials(f"http://127.0.0.1:{free_port()}"))
    with pytest.raises(
        ServiceUnavailable, match=r"could not create job gpuflow-trainer-offline-\w+ in namespace default"
    ):
        offline.run_workload(spec, lambda line: None)

    broken = KubernetesGPUJob(image=IMAGE, credentials=_credentials("http://127.0.0.1:1", context="missing"))
    with pytest.raises(ConfigurationError, match="no usable Kubernetes credentials"):
        broken.run_workload(spec, lambda line: None)
