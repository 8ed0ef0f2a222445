"""The emulated Kubernetes cluster, driven through the real `kubernetes` / `kubernetes_asyncio` clients over HTTP."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import kubernetes
import pytest
import requests
from kubernetes.client import ApiException

from tests.fixtures.kube import KubeCluster

IMAGE = "gpuflow/workloads:test"
# What the "restricted" Pod Security level the fixture's namespace enforces asks of every pod and container.
RESTRICTED_POD = {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}}
RESTRICTED_CONTAINER = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def job_manifest(name: str, code: str, **spec: Any) -> dict[str, Any]:
    container = {
        "name": "main",
        "image": spec.pop("image", IMAGE),
        "command": ["python", "-c", code],
        "securityContext": dict(RESTRICTED_CONTAINER),
    }
    container.update(spec.pop("container", {}))
    pod_spec = {
        "restartPolicy": "Never",
        "securityContext": dict(RESTRICTED_POD),
        "containers": [container],
        **spec.pop("pod", {}),
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {"backoffLimit": 0, "template": {"spec": pod_spec}, **spec},
    }


def batch(cluster: KubeCluster) -> kubernetes.client.BatchV1Api:
    return kubernetes.client.BatchV1Api(cluster.api)


def core(cluster: KubeCluster) -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(cluster.api)


def job_condition(cluster: KubeCluster, name: str, *types: str) -> Any:
    job = batch(cluster).read_namespaced_job(name, cluster.namespace)
    for cond in job.status.conditions or []:
        if cond.type in types and cond.status == "True":
            return cond
    return None


def wait_job(cluster: KubeCluster, name: str, *types: str, timeout: float = 20) -> Any:
    return cluster.wait_for(lambda: job_condition(cluster, name, *types), timeout, f"Job {name} to reach {types}")


def job_pods(cluster: KubeCluster, name: str) -> list[Any]:
    return core(cluster).list_namespaced_pod(cluster.namespace, label_selector=f"job-name={name}").items


def test_job_runs_to_complete_and_serves_its_log(kube_cluster: KubeCluster) -> None:
    created = batch(kube_cluster).create_namespaced_job(kube_cluster.namespace, job_manifest("hello", "print('hi')"))
    assert created.metadata.uid and created.metadata.resource_version
    labels = created.spec.template.metadata.labels
    assert labels["controller-uid"] == created.metadata.uid and labels["job-name"] == "hello"
    with pytest.raises(ApiException) as conflict:
        batch(kube_cluster).create_namespaced_job(kube_cluster.namespace, job_manifest("hello", "print('hi')"))
    assert conflict.value.status == 409 and "already exists" in conflict.value.body

    cond = wait_job(kube_cluster, "hello", "Complete")
    assert cond.reason == "CompletionsReached"
    job = batch(kube_cluster).read_namespaced_job("hello", kube_cluster.namespace)
    assert job.status.succeeded == 1 and job.status.completion_time is not None
    (pod,) = job_pods(kube_cluster, "hello")
    assert pod.status.phase == "Succeeded"
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (0, "Completed")
    assert kube_cluster.pod_log(pod.metadata.name) == "hi\n"
    reasons = {
        e.reason
        for e in core(kube_cluster)
        .list_namespaced_event(kube_cluster.namespace, field_selector=f"involvedObject.name={pod.metadata.name}")
        .items
    }
    assert {"Scheduled", "Pulled", "Created", "Started"} <= reasons


def test_pod_failure_policy_fail_job_stops_without_retries(kube_cluster: KubeCluster) -> None:
    manifest = job_manifest(
        "exit3",
        "import sys; sys.exit(3)",
        backoffLimit=5,
        podFailurePolicy={
            "rules": [
                {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [3]}},
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            ]
        },
    )
    batch(kube_cluster).create_namespaced_job(kube_cluster.namespace, manifest)
    cond = wait_job(kube_cluster, "exit3", "Failed")
    assert cond.reason == "PodFailurePolicy"
    assert "Container main for pod gpuflow-test/exit3-" in cond.message
    assert "failed with exit code 3 matching FailJob rule at index 0" in cond.message
    assert job_condition(kube_cluster, "exit3", "FailureTarget") is not None
    assert len(job_pods(kube_cluster, "exit3")) == 1


def test_backoff_limit_retries_then_fails(kube_cluster: KubeCluster) -> None:
    batch(kube_cluster).create_namespaced_job(
        kube_cluster.namespace, job_manifest("flaky", "raise SystemExit(1)", backoffLimit=1)
    )
    cond = wait_job(kube_cluster, "flaky", "Failed")
    assert cond.reason == "BackoffLimitExceeded"
    assert batch(kube_cluster).read_namespaced_job("flaky", kube_cluster.namespace).status.failed == 2
    assert len(job_pods(kube_cluster, "flaky")) == 2


def test_indexed_job_sets_completion_index_and_hostnames(kube_cluster: KubeCluster) -> None:
    code = "import os; print('index', os.environ['JOB_COMPLETION_INDEX'], os.environ['HOSTNAME'])"
    manifest = job_manifest("idx", code, completions=2, parallelism=2, completionMode="Indexed")
    batch(kube_cluster).create_namespaced_job(kube_cluster.namespace, manifest)
    wait_job(kube_cluster, "idx", "Complete")
    assert batch(kube_cluster).read_namespaced_job("idx", kube_cluster.namespace).status.completed_indexes == "0-1"
    for index in ("0", "1"):
        (pod,) = (
            core(kube_cluster)
            .list_namespaced_pod(
                kube_cluster.namespace, label_selector=f"job-name=idx,batch.kubernetes.io/job-completion-index={index}"
            )
            .items
        )
        assert pod.metadata.name.startswith(f"idx-{index}-")
        assert kube_cluster.pod_log(pod.metadata.name) == f"index {index} idx-{index}\n"


def test_label_and_field_selectors(kube_cluster: KubeCluster) -> None:
    api = core(kube_cluster)
    for name, labels in (
        ("a", {"tier": "web", "env": "prod"}),
        ("b", {"tier": "db", "env": "prod"}),
        ("c", {"tier": "web"}),
    ):
        api.create_namespaced_config_map(
            kube_cluster.namespace, {"metadata": {"name": name, "labels": labels}, "data": {"k": name}}
        )

    def names(**kwargs: str) -> list[str]:
        return sorted(i.metadata.name for i in api.list_namespaced_config_map(kube_cluster.namespace, **kwargs).items)

    assert names(label_selector="tier=web") == ["a", "c"]
    assert names(label_selector="tier!=web") == ["b"]
    assert names(label_selector="tier in (db,cache),env") == ["b"]
    assert names(label_selector="tier notin (db)") == ["a", "c"]
    assert names(label_selector="!env") == ["c"]
    assert names(label_selector="env,tier==web") == ["a"]
    assert names(field_selector="metadata.name=b") == ["b"]
    assert names(field_selector="metadata.name!=b") == ["a", "c"]


def test_watch_sees_pod_status_transitions(kube_cluster: KubeCluster) -> None:
    start_rv = core(kube_cluster).list_namespaced_pod(kube_cluster.namespace).metadata.resource_version
    batch(kube_cluster).create_namespaced_job(kube_cluster.namespace, job_manifest("w", "print('x')"))
    seen: list[tuple[str, str | None]] = []
    watch = kubernetes.watch.Watch()
    for event in watch.stream(
        core(kube_cluster).list_namespaced_pod,
        kube_cluster.namespace,
        label_selector="job-name=w",
        resource_version=start_rv,
        timeout_seconds=20,
    ):
        seen.append((event["type"], event["object"].status.phase))
        if event["object"].status.phase == "Succeeded":
            watch.stop()
    assert seen[0] == ("ADDED", "Pending")
    phases = [phase for _, phase in seen]
    assert phases.index("Running") < phases.index("Succeeded")


def test_unschedulable_gpu_pod_says_why(kube_cluster: KubeCluster) -> None:
    gpu = {"resources": {"limits": {"nvidia.com/gpu": "1"}}}
    batch(kube_cluster).create_namespaced_job(kube_cluster.namespace, job_manifest("gpu", "pass", container=gpu))

    def scheduled_condition() -> Any:
        pods = job_pods(kube_cluster, "gpu")
        conds = [c for p in pods for c in p.status.conditions or [] if c.type == "PodScheduled"]
        return conds[0] if conds else None

    cond = kube_cluster.wait_for(scheduled_condition, 10, "a PodScheduled condition")
    assert (cond.status, cond.reason) == ("False", "Unschedulable")
    assert cond.message == "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."

    kube_cluster.gpu_node(gpus=1)
    expected = (
        "0/2 nodes are available: 1 Insufficient nvidia.com/gpu, "
        "1 node(s) had untolerated taint {nvidia.com/gpu: present}."
    )
    kube_cluster.wait_for(lambda: scheduled_condition().message == expected, 10, f"the message {expected!r}")
    toleration = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    batch(kube_cluster).create_namespaced_job(
        kube_cluster.namespace, job_manifest("gpu2", "pass", container=gpu, pod={"tolerations": toleration})
    )
    wait_job(kube_cluster, "gpu2", "Complete")
    assert job_pods(kube_cluster, "gpu2")[0].spec.node_name == "gpu-node-1"


def test_unknown_image_backs_off_and_stays_pending(kube_cluster: KubeCluster) -> None:
    batch(kube_cluster).create_namespaced_job(
        kube_cluster.namespace, job_manifest("img", "pass", image="registry.invalid/nope:1")
    )

    def waiting_reason() -> str | None:
        pods = job_pods(kube_cluster, "img")
        statuses = pods[0].status.container_statuses if pods else None
        waiting = statuses[0].state.waiting if statuses else None
        return waiting.reason if waiting and waiting.reason == "ImagePullBackOff" else None

    kube_cluster.wait_for(waiting_reason, 10, "ImagePullBackOff")
    (pod,) = job_pods(kube_cluster, "img")
    assert pod.status.phase == "Pending"
    assert "registry.invalid/nope:1" in pod.status.container_statuses[0].state.waiting.message
    with pytest.raises(ApiException) as err:
        kube_cluster.pod_log(pod.metadata.name)
    assert err.value.status == 400 and "waiting to start" in err.value.body


def test_memory_limit_kills_with_oomkilled(kube_cluster: KubeCluster) -> None:
    code = "import time; b = b'x' * (300 * 2**20); time.sleep(30)"
    batch(kube_cluster).create_namespaced_job(
        kube_cluster.namespace, job_manifest("oom", code, container={"resources": {"limits": {"memory": "100Mi"}}})
    )
    wait_job(kube_cluster, "oom", "Failed")
    terminated = job_pods(kube_cluster, "oom")[0].status.container_statuses[0].state.terminated
    assert (terminated.reason, terminated.exit_code) == ("OOMKilled", 137)


def test_deleted_running_pod_is_replaced(kube_cluster: KubeCluster) -> None:
    code = (
        "import os, time, pathlib; p = pathlib.Path(os.environ['MARK']); first = not p.exists(); p.touch(); "
        "print('first' if first else 'second', flush=True); time.sleep(30 if first else 0)"
    )
    # Pods share no disk but a volume: the mark outlives the first pod on a persistentVolumeClaim, as on a cluster.
    manifest = job_manifest(
        "del",
        code,
        backoffLimit=0,
        container={
            "env": [{"name": "MARK", "value": "/state/mark"}],
            "volumeMounts": [{"name": "state", "mountPath": "/state"}],
        },
        pod={"volumes": [{"name": "state", "persistentVolumeClaim": {"claimName": "state"}}]},
        podFailurePolicy={"rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]},
    )
    batch(kube_cluster).create_namespaced_job(kube_cluster.namespace, manifest)
    first = kube_cluster.wait_for(
        lambda: [p for p in job_pods(kube_cluster, "del") if p.status.phase == "Running"], 10, "a running pod"
    )[0]
    kube_cluster.wait_for(lambda: "first" in kube_cluster.pod_log(first.metadata.name), 10, "the first run's log")
    kube_cluster.delete_pod(first.metadata.name)
    wait_job(kube_cluster, "del", "Complete")
    (second,) = job_pods(kube_cluster, "del")
    assert second.metadata.name != first.metadata.name
    assert kube_cluster.pod_log(second.metadata.name) == "second\n"
    assert not batch(kube_cluster).read_namespaced_job("del", kube_cluster.namespace).status.failed


def test_active_deadline_exceeded(kube_cluster: KubeCluster) -> None:
    batch(kube_cluster).create_namespaced_job(
        kube_cluster.namespace, job_manifest("slow", "import time; time.sleep(60)", activeDeadlineSeconds=1)
    )
    cond = wait_job(kube_cluster, "slow", "Failed", timeout=15)
    assert (cond.reason, cond.message) == ("DeadlineExceeded", "Job was active longer than specified deadline")
    kube_cluster.wait_for(lambda: not kube_cluster.live_pids(), 10, "the pod processes to end")


def test_cascade_delete_leaves_no_pods_or_processes(kube_cluster: KubeCluster) -> None:
    batch(kube_cluster).create_namespaced_job(
        kube_cluster.namespace, job_manifest("long", "import time; time.sleep(60)", parallelism=2, completions=2)
    )
    kube_cluster.wait_for(lambda: len(kube_cluster.live_pids()) == 2, 10, "two running pod processes")
    batch(kube_cluster).delete_namespaced_job("long", kube_cluster.namespace, propagation_policy="Foreground")
    kube_cluster.wait_for(lambda: not job_pods(kube_cluster, "long"), 15, "the Job's pods to be gone")
    kube_cluster.wait_for(lambda: kube_cluster.get("Job", "long") is None, 5, "the Job to be gone")
    assert kube_cluster.live_pids() == []


def test_kubernetes_asyncio_client_lists_and_watches(kube_cluster: KubeCluster) -> None:
    import kubernetes_asyncio as ka

    async def run() -> list[str]:
        await ka.config.load_kube_config(config_file=str(kube_cluster.kubeconfig))
        async with ka.client.ApiClient() as api:
            batch_api = ka.client.BatchV1Api(api)
            await batch_api.create_namespaced_job(kube_cluster.namespace, job_manifest("aio", "print('async')"))
            types: list[str] = []
            async with ka.watch.Watch() as watch:
                async for event in watch.stream(
                    batch_api.list_namespaced_job,
                    kube_cluster.namespace,
                    field_selector="metadata.name=aio",
                    timeout_seconds=20,
                ):
                    conds = event["object"].status.conditions or []
                    types.extend(c.type for c in conds if c.status == "True")
                    if "Complete" in types:
                        break
            return types

    assert "Complete" in asyncio.run(run())


def test_prefect_kubernetes_job_block_runs_against_the_emulator(kube_cluster: KubeCluster) -> None:
    from prefect_kubernetes.credentials import KubernetesCredentials
    from prefect_kubernetes.jobs import KubernetesJob

    lines: list[str] = []
    block = KubernetesJob(
        v1_job=job_manifest("pk", "print('from prefect-kubernetes')"),
        credentials=KubernetesCredentials(),
        namespace=kube_cluster.namespace,
        interval_seconds=1,
    )
    run = block.trigger()
    run.wait_for_completion(lines.append)
    assert any("from prefect-kubernetes" in line for line in lines)
    kube_cluster.wait_for(lambda: kube_cluster.get("Job", "pk") is None, 10, "the block to delete its Job")
    kube_cluster.wait_for(lambda: not kube_cluster.pods("job-name=pk"), 10, "the Job's pods to go with it")


SERVER = """
import os, http.server
class Handler(http.server.BaseHTTPRequestHandler):
    def reply(self):
        size = int(self.headers.get("Content-Length") or 0)
        payload = self.rfile.read(size).decode()
        body = f"{os.environ['HOSTNAME']} {self.command} {self.path} {payload} {os.environ['GREETING']}"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Served-By", os.environ["HOSTNAME"])
        self.end_headers()
        self.wfile.write(body.encode())
    do_GET = do_POST = reply
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["GPUFLOW_SERVER_PORT"])), Handler).serve_forever()
"""


def deployment(replicas: int, greeting: str = "hello") -> dict[str, Any]:
    container = {
        "name": "server",
        "image": IMAGE,
        "command": ["python", "-c", SERVER],
        "env": [{"name": "GPUFLOW_SERVER_PORT", "value": "8080"}, {"name": "GREETING", "value": greeting}],
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 5},
        "securityContext": dict(RESTRICTED_CONTAINER),
    }
    pod_spec = {"securityContext": dict(RESTRICTED_POD), "containers": [container]}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": pod_spec},
        },
    }


def test_deployment_service_proxy_round_robin_scale_and_rollout(kube_cluster: KubeCluster) -> None:
    apps = kubernetes.client.AppsV1Api(kube_cluster.api)
    ns = kube_cluster.namespace
    apps.create_namespaced_deployment(ns, deployment(2))
    core(kube_cluster).create_namespaced_service(
        ns,
        {
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
        },
    )

    def ready(replicas: int) -> bool:
        """The rollout is complete, judged as `kubectl rollout status` does."""
        deploy = apps.read_namespaced_deployment("web", ns)
        status = deploy.status
        available = [c for c in status.conditions or [] if c.type == "Available" and c.status == "True"]
        counts = {status.replicas or 0, status.updated_replicas or 0, status.ready_replicas or 0}
        return status.observed_generation == deploy.metadata.generation and counts == {replicas} and bool(available)

    kube_cluster.wait_for(lambda: ready(2), 15, "2 ready replicas")
    endpoints = core(kube_cluster).read_namespaced_endpoints("web", ns)
    assert len(endpoints.subsets[0].addresses) == 2 and endpoints.subsets[0].ports[0].port == 8080

    served = {
        core(kube_cluster).connect_get_namespaced_service_proxy_with_path("web:http", ns, "who").split()[0]
        for _ in range(4)
    }
    assert len(served) == 2  # round-robin over both ready pods
    pod = kube_cluster.pods("app=web")[0]["metadata"]["name"]
    reply = requests.post(
        f"{kube_cluster.url}/api/v1/namespaces/{ns}/pods/{pod}:8080/proxy/echo?x=1",
        data=b"payload",
        headers=kube_cluster.admin_headers,
        timeout=10,
    )
    assert reply.status_code == 200 and reply.headers["X-Served-By"] == pod
    assert reply.text == f"{pod} POST /echo?x=1 payload hello"

    # A template change (strategic merge by container name) rolls the pods onto a new ReplicaSet.
    apps.patch_namespaced_deployment(
        "web",
        ns,
        {
            "spec": {
                "template": {
                    "spec": {"containers": [{"name": "server", "env": [{"name": "GREETING", "value": "bonjour"}]}]}
                }
            }
        },
    )
    kube_cluster.wait_for(lambda: ready(2), 20, "the rollout")
    live = [p for p in kube_cluster.pods("app=web") if not p["metadata"].get("deletionTimestamp")]
    assert len(live) == 2 and pod not in {p["metadata"]["name"] for p in live}
    assert core(kube_cluster).connect_get_namespaced_service_proxy_with_path("web", ns, "x").endswith("bonjour")
    assert len(apps.list_namespaced_replica_set(ns, label_selector="app=web").items) == 2

    apps.patch_namespaced_deployment_scale("web", ns, {"spec": {"replicas": 0}})
    kube_cluster.wait_for(lambda: not kube_cluster.pods("app=web"), 15, "the pods to be scaled away")
    with pytest.raises(ApiException) as err:
        core(kube_cluster).connect_get_namespaced_service_proxy_with_path("web", ns, "who")
    assert err.value.status == 503 and "no endpoints available" in err.value.body

    apps.patch_namespaced_deployment_scale("web", ns, {"spec": {"replicas": 1}})
    kube_cluster.wait_for(lambda: ready(1), 15, "1 ready replica")
    apps.delete_namespaced_deployment("web", ns)
    kube_cluster.wait_for(
        lambda: not kube_cluster.pods("app=web") and not kube_cluster.live_pids(),
        15,
        "the Deployment's pods and processes to be gone",
    )
    assert apps.list_namespaced_replica_set(ns).items == []


RENDEZVOUS = """
import os, socket, sys, time
host, port = sys.argv[1].rsplit(":", 1)
if os.environ["JOB_COMPLETION_INDEX"] == "0":
    with socket.create_server((host, int(port))) as server:
        conn, _ = server.accept()
        print("got", conn.recv(100).decode())
else:
    for _ in range(200):
        try:
            conn = socket.create_connection((host, int(port)))
            break
        except OSError:
            time.sleep(0.05)
    conn.sendall(b"hello from 1")
    print("sent")
"""


def test_indexed_job_rendezvous_by_pod_dns_name_and_shared_port(kube_cluster: KubeCluster) -> None:
    ns = kube_cluster.namespace
    core(kube_cluster).create_namespaced_service(
        ns,
        {
            "metadata": {"name": "rdzv"},
            "spec": {"clusterIP": "None", "selector": {"job-name": "rdzv"}, "ports": [{"port": 29500}]},
        },
    )
    env = [{"name": "GPUFLOW_RDZV_HOST", "value": "rdzv-0.rdzv"}, {"name": "GPUFLOW_RDZV_PORT", "value": "29500"}]
    manifest = job_manifest(
        "rdzv",
        RENDEZVOUS,
        completions=2,
        parallelism=2,
        completionMode="Indexed",
        container={"env": env, "args": ["$(GPUFLOW_RDZV_HOST):$(GPUFLOW_RDZV_PORT)"]},
        pod={"subdomain": "rdzv"},
    )
    batch(kube_cluster).create_namespaced_job(ns, manifest)
    wait_job(kube_cluster, "rdzv", "Complete")
    logs = sorted(kube_cluster.pod_log(p.metadata.name) for p in job_pods(kube_cluster, "rdzv"))
    assert logs == ["got hello from 1\n", "sent\n"]


ENV_DUMP = "import json, os; print(json.dumps({k: os.environ.get(k) for k in os.environ['KEYS'].split()}))"


def test_pod_env_resolution_and_missing_secret(kube_cluster: KubeCluster) -> None:
    ns = kube_cluster.namespace
    core(kube_cluster).create_namespaced_config_map(ns, {"metadata": {"name": "cfg"}, "data": {"MODE": "fast"}})
    core(kube_cluster).create_namespaced_service(
        ns, {"metadata": {"name": "mlflow"}, "spec": {"selector": {"app": "mlflow"}, "ports": [{"port": 5000}]}}
    )
    env = [
        {"name": "KEYS", "value": "TOKEN MODE POD NS URL GREETING CFG_MODE HOSTNAME TMPDIR"},
        {"name": "TMPDIR", "value": "/scratch/tmp"},
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "URL", "value": "http://mlflow.gpuflow-test.svc.cluster.local:5000/api"},
        {"name": "GREETING", "value": "pod $(POD) in $(NS), not $$(NS)"},
    ]
    env_from = [{"configMapRef": {"name": "cfg"}}, {"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}]
    batch(kube_cluster).create_namespaced_job(
        ns,
        job_manifest(
            "env",
            ENV_DUMP,
            container={"env": env, "envFrom": env_from, "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]},
            pod={"volumes": [{"name": "scratch", "emptyDir": {}}]},
        ),
    )

    def config_error() -> str | None:
        pods = job_pods(kube_cluster, "env")
        statuses = pods[0].status.container_statuses if pods else None
        waiting = statuses[0].state.waiting if statuses else None
        return waiting.message if waiting and waiting.reason == "CreateContainerConfigError" else None

    assert kube_cluster.wait_for(config_error, 10, "CreateContainerConfigError") == 'secret "creds" not found'
    kube_cluster.create_secret("creds", {"token": "s3cr3t"})
    wait_job(kube_cluster, "env", "Complete")
    (pod,) = job_pods(kube_cluster, "env")
    seen = json.loads(kube_cluster.pod_log(pod.metadata.name))
    name = pod.metadata.name
    tmpdir = seen.pop("TMPDIR")
    assert tmpdir.startswith(str(kube_cluster.base_dir)) and tmpdir.endswith("/volumes/scratch/tmp")
    assert seen == {
        "TOKEN": "s3cr3t",
        "MODE": "fast",
        "CFG_MODE": "fast",
        "POD": name,
        "NS": ns,
        "URL": "http://127.0.0.1:5000/api",
        "GREETING": f"pod {name} in {ns}, not $(NS)",
        "HOSTNAME": name,
    }


def test_eviction_marks_disruption_and_the_job_replaces_the_pod(kube_cluster: KubeCluster) -> None:
    code = (
        "import os, time, pathlib; p = pathlib.Path(os.environ['MARK']); first = not p.exists(); p.touch(); "
        "print('up', flush=True); time.sleep(30 if first else 0)"
    )
    manifest = job_manifest(
        "ev",
        code,
        container={
            "env": [{"name": "MARK", "value": "/state/m"}],
            "volumeMounts": [{"name": "state", "mountPath": "/state"}],
        },
        pod={"volumes": [{"name": "state", "persistentVolumeClaim": {"claimName": "state"}}]},
        podFailurePolicy={"rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]},
    )
    batch(kube_cluster).create_namespaced_job(kube_cluster.namespace, manifest)
    first = kube_cluster.wait_for(
        lambda: [p for p in job_pods(kube_cluster, "ev") if p.status.phase == "Running"], 10, "a running pod"
    )[0]
    kube_cluster.wait_for(lambda: "up" in kube_cluster.pod_log(first.metadata.name), 10, "the first run's log")
    rv = core(kube_cluster).list_namespaced_pod(kube_cluster.namespace).metadata.resource_version
    kube_cluster.evict_pod(first.metadata.name)
    reasons: set[str] = set()
    watch = kubernetes.watch.Watch()
    for event in watch.stream(
        core(kube_cluster).list_namespaced_pod,
        kube_cluster.namespace,
        resource_version=rv,
        field_selector=f"metadata.name={first.metadata.name}",
        timeout_seconds=10,
    ):
        reasons |= {c.reason for c in event["object"].status.conditions or [] if c.type == "DisruptionTarget"}
        if event["type"] == "DELETED":
            watch.stop()
    assert reasons == {"EvictionByEvictionAPI"}
    wait_job(kube_cluster, "ev", "Complete")
    assert not batch(kube_cluster).read_namespaced_job("ev", kube_cluster.namespace).status.failed


def test_ttl_after_finished_deletes_job_and_pods(kube_cluster: KubeCluster) -> None:
    batch(kube_cluster).create_namespaced_job(
        kube_cluster.namespace, job_manifest("ttl", "pass", ttlSecondsAfterFinished=0)
    )
    kube_cluster.wait_for(
        lambda: kube_cluster.get("Job", "ttl") is None and not kube_cluster.pods("job-name=ttl"),
        15,
        "the finished Job and its pods to be deleted",
    )


def test_api_errors_patches_and_other_resources(kube_cluster: KubeCluster) -> None:
    ns = kube_cluster.namespace
    api = core(kube_cluster)
    with pytest.raises(ApiException) as missing:
        api.read_namespaced_pod("nope", ns)
    assert missing.value.status == 404 and '"reason":"NotFound"' in missing.value.body.replace(" ", "")
    with pytest.raises(ApiException) as invalid:
        api.create_namespaced_config_map(ns, {"metadata": {"name": "Bad_Name"}})
    assert invalid.value.status == 422 and "Bad_Name" in invalid.value.body

    cm = api.create_namespaced_config_map(
        ns, {"metadata": {"name": "p", "labels": {"a": "1", "b": "2"}}, "data": {"x": "1"}}
    )
    api.patch_namespaced_config_map("p", ns, [{"op": "add", "path": "/data/y", "value": "2"}])
    merged = api.patch_namespaced_config_map("p", ns, {"metadata": {"labels": {"a": None}}})
    assert merged.metadata.labels == {"b": "2"} and merged.data == {"x": "1", "y": "2"}
    with pytest.raises(ApiException) as conflict:
        api.replace_namespaced_config_map("p", ns, api.api_client.sanitize_for_serialization(cm))
    assert conflict.value.status == 409

    rbac = kubernetes.client.RbacAuthorizationV1Api(kube_cluster.api)
    rbac.create_namespaced_role(
        ns,
        {
            "metadata": {"name": "r"},
            "rules": [{"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create", "get"]}],
        },
    )
    rbac.create_namespaced_role_binding(
        ns,
        {
            "metadata": {"name": "r"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r"},
            "subjects": [{"kind": "ServiceAccount", "name": "gpuflow-workload", "namespace": ns}],
        },
    )
    # the fixture's own binding (gpuflow manifests rbac) is there too
    assert [r.metadata.name for r in rbac.list_namespaced_role_binding(ns).items] == ["gpuflow-flows", "r"]

    custom = kubernetes.client.CustomObjectsApi(kube_cluster.api)
    route = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "split"},
        "spec": {
            "rules": [
                {
                    "backendRefs": [
                        {"name": "stable", "port": 80, "weight": 90},
                        {"name": "canary", "port": 80, "weight": 10},
                    ]
                }
            ]
        },
    }
    custom.create_namespaced_custom_object("gateway.networking.k8s.io", "v1", ns, "httproutes", route)
    custom.patch_namespaced_custom_object(
        "gateway.networking.k8s.io",
        "v1",
        ns,
        "httproutes",
        "split",
        [{"op": "replace", "path": "/spec/rules/0/backendRefs/1/weight", "value": 50}],
        _content_type="application/json-patch+json",
    )
    got = custom.get_namespaced_custom_object("gateway.networking.k8s.io", "v1", ns, "httproutes", "split")
    assert [b["weight"] for b in got["spec"]["rules"][0]["backendRefs"]] == [90, 50]

    from kubernetes.dynamic import DynamicClient

    dynamic = DynamicClient(kube_cluster.api)
    jobs = dynamic.resources.get(api_version="batch/v1", kind="Job")
    assert jobs.namespaced and dynamic.version["kubernetes"]["gitVersion"].startswith("v1.")


def test_deadline_also_ends_a_job_whose_pod_never_scheduled(kube_cluster: KubeCluster) -> None:
    gpu = {"resources": {"limits": {"nvidia.com/gpu": "1"}}}
    batch(kube_cluster).create_namespaced_job(
        kube_cluster.namespace, job_manifest("stuck", "pass", container=gpu, activeDeadlineSeconds=1)
    )
    cond = wait_job(kube_cluster, "stuck", "Failed", timeout=15)
    assert cond.reason == "DeadlineExceeded"
    kube_cluster.wait_for(lambda: not job_pods(kube_cluster, "stuck"), 5, "the pending pod to be deleted")


def test_on_failure_restarts_count_against_the_backoff_limit(kube_cluster: KubeCluster) -> None:
    manifest = job_manifest("restarts", "raise SystemExit(1)", backoffLimit=1, pod={"restartPolicy": "OnFailure"})
    batch(kube_cluster).create_namespaced_job(kube_cluster.namespace, manifest)
    assert wait_job(kube_cluster, "restarts", "Failed").reason == "BackoffLimitExceeded"


# ---- the API server refusing pods: Pod Security, ResourceQuota, a validating webhook --------------------------


def refusal(err: pytest.ExceptionInfo[ApiException]) -> tuple[int, dict[str, Any]]:
    return err.value.status, json.loads(err.value.body)


def test_pod_security_refuses_what_the_namespace_level_forbids_with_the_real_message(
    kube_cluster: KubeCluster,
) -> None:
    api = core(kube_cluster)
    root = {"privileged": True, "runAsUser": 0}
    pod = {
        "metadata": {"generateName": "train-abc-"},
        "spec": {
            "containers": [{"name": "trainer", "image": IMAGE, "command": ["python", "-c", "pass"]}],
            "volumes": [{"name": "host", "hostPath": {"path": "/var/run"}}],
        },
    }
    pod["spec"]["containers"][0]["securityContext"] = root
    with pytest.raises(ApiException) as restricted:
        api.create_namespaced_pod(kube_cluster.namespace, pod)
    code, status = refusal(restricted)
    name = status["details"]["name"]
    assert (code, status["reason"]) == (403, "Forbidden") and name.startswith("train-abc-")
    assert status["message"] == (
        f'pods "{name}" is forbidden: violates PodSecurity "restricted:latest": '
        'privileged (container "trainer" must not set securityContext.privileged=true), '
        "allowPrivilegeEscalation != false "
        '(container "trainer" must set securityContext.allowPrivilegeEscalation=false), '
        'unrestricted capabilities (container "trainer" must set securityContext.capabilities.drop=["ALL"]), '
        'restricted volume types (volume "host" uses restricted volume type "hostPath"), '
        'runAsNonRoot != true (pod or container "trainer" must set securityContext.runAsNonRoot=true), '
        'runAsUser=0 (container "trainer" must not set runAsUser=0), '
        'seccompProfile (pod or container "trainer" must set securityContext.seccompProfile.type to "RuntimeDefault" '
        'or "Localhost")'
    )
    assert api.list_namespaced_pod(kube_cluster.namespace).items == []

    kube_cluster.create_namespace("base", {"pod-security.kubernetes.io/enforce": "baseline"})
    with pytest.raises(ApiException) as baseline:
        api.create_namespaced_pod("base", {**pod, "metadata": {"name": "root"}})
    assert refusal(baseline)[1]["message"] == (
        'pods "root" is forbidden: violates PodSecurity "baseline:latest": hostPath volumes (volume "host"), '
        'privileged (container "trainer" must not set securityContext.privileged=true)'
    )
    pod["spec"]["volumes"] = [{"name": "host", "emptyDir": {}}]
    pod["spec"]["containers"][0]["securityContext"] = {"runAsUser": 0}
    assert api.create_namespaced_pod("base", pod).metadata.name.startswith("train-abc-"), "root alone is baseline"

    kube_cluster.create_namespace("open")  # no enforce label: no check
    pod["spec"]["containers"][0]["securityContext"] = root
    assert api.create_namespaced_pod("open", pod).spec.containers[0].security_context.privileged is True


def test_a_job_whose_pods_pod_security_refuses_is_admitted_and_says_why_in_a_warning_event(
    kube_cluster: KubeCluster,
) -> None:
    manifest = job_manifest("rooted", "pass", container={"securityContext": {}}, pod={"securityContext": {}})
    batch(kube_cluster).create_namespaced_job(kube_cluster.namespace, manifest)  # workloads are not refused

    event = kube_cluster.wait_for(lambda: failed_create(kube_cluster, "rooted"), 10, "a FailedCreate event")
    assert event.type == "Warning" and event.involved_object.kind == "Job"
    assert event.message.startswith('Error creating: pods "rooted-')
    assert event.message.endswith(
        '" is forbidden: violates PodSecurity "restricted:latest": '
        'allowPrivilegeEscalation != false (container "main" must set securityContext.allowPrivilegeEscalation=false), '
        'unrestricted capabilities (container "main" must set securityContext.capabilities.drop=["ALL"]), '
        'runAsNonRoot != true (pod or container "main" must set securityContext.runAsNonRoot=true), '
        'seccompProfile (pod or container "main" must set securityContext.seccompProfile.type to "RuntimeDefault" '
        'or "Localhost")'
    )
    assert job_pods(kube_cluster, "rooted") == []


def failed_create(cluster: KubeCluster, name: str) -> Any:
    events = core(cluster).list_namespaced_event(cluster.namespace, field_selector=f"involvedObject.name={name}")
    refused = [e for e in events.items if e.reason == "FailedCreate"]
    return refused[-1] if refused else None


def gpu_pod(name: str, code: str) -> dict[str, Any]:
    container = {
        "name": "main",
        "image": IMAGE,
        "command": ["python", "-c", code],
        "resources": {"limits": {"nvidia.com/gpu": "1"}},
        "securityContext": RESTRICTED_CONTAINER,
    }
    toleration = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    spec = {"restartPolicy": "Never", "securityContext": RESTRICTED_POD, "containers": [container]}
    return {"metadata": {"name": name}, "spec": {**spec, "tolerations": [toleration]}}


def gpu_quota(cluster: KubeCluster) -> None:
    quota = {"metadata": {"name": "gpu-quota"}, "spec": {"hard": {"requests.nvidia.com/gpu": "1", "pods": "10"}}}
    core(cluster).create_namespaced_resource_quota(cluster.namespace, quota)


def exceeded(name: str) -> str:
    return (
        f'pods "{name}" is forbidden: exceeded quota: gpu-quota, requested: requests.nvidia.com/gpu=1, '
        "used: requests.nvidia.com/gpu=1, limited: requests.nvidia.com/gpu=1"
    )


def test_a_gpu_quota_refuses_a_second_gpu_pod_until_the_first_ends_or_is_deleted(kube_cluster: KubeCluster) -> None:
    api, ns = core(kube_cluster), kube_cluster.namespace
    kube_cluster.gpu_node(gpus=2)  # the node has room: only the quota refuses
    gpu_quota(kube_cluster)
    api.create_namespaced_pod(ns, gpu_pod("first", "import time; time.sleep(3)"))
    with pytest.raises(ApiException) as full:
        api.create_namespaced_pod(ns, gpu_pod("second", "import time; time.sleep(60)"))
    code, status = refusal(full)
    assert (code, status["reason"], status["message"]) == (403, "Forbidden", exceeded("second"))

    def quota_used() -> dict[str, str]:
        status = api.read_namespaced_resource_quota("gpu-quota", ns).status
        return dict(status.used or {}) if status else {}

    kube_cluster.wait_for(lambda: quota_used() == {"requests.nvidia.com/gpu": "1", "pods": "1"}, 5, "quota usage")
    kube_cluster.wait_for(
        lambda: api.read_namespaced_pod("first", ns).status.phase == "Succeeded", 15, "the first pod to end"
    )
    api.create_namespaced_pod(ns, gpu_pod("second", "import time; time.sleep(60)"))  # an ended pod uses no quota

    with pytest.raises(ApiException) as again:
        api.create_namespaced_pod(ns, gpu_pod("third", "pass"))
    assert refusal(again)[1]["message"] == exceeded("third")
    kube_cluster.delete_pod("second")

    def third_admitted() -> bool:
        try:
            api.create_namespaced_pod(ns, gpu_pod("third", "pass"))
        except ApiException as err:
            assert json.loads(err.body)["message"] == exceeded("third")
            return False
        return True

    kube_cluster.wait_for(third_admitted, 15, "the deleted pod to free the quota")


def test_a_job_refused_by_a_full_quota_warns_and_gets_its_pod_once_the_quota_frees(kube_cluster: KubeCluster) -> None:
    api, ns = core(kube_cluster), kube_cluster.namespace
    kube_cluster.gpu_node(gpus=2)
    gpu_quota(kube_cluster)
    api.create_namespaced_pod(ns, gpu_pod("holder", "import time; time.sleep(60)"))
    gpu = {"resources": {"limits": {"nvidia.com/gpu": "1"}}}
    toleration = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    batch(kube_cluster).create_namespaced_job(
        ns, job_manifest("queued", "print('trained')", container=gpu, pod={"tolerations": toleration})
    )

    event = kube_cluster.wait_for(lambda: failed_create(kube_cluster, "queued"), 10, "a FailedCreate event")
    assert (event.type, event.involved_object.kind, event.source.component) == ("Warning", "Job", "job-controller")
    prefix = 'Error creating: pods "queued-'
    assert event.message.startswith(prefix)
    pod_name = event.message.removeprefix("Error creating: pods ").split('"')[1]
    assert event.message == f"Error creating: {exceeded(pod_name)}"
    assert job_pods(kube_cluster, "queued") == []

    kube_cluster.delete_pod("holder")
    wait_job(kube_cluster, "queued", "Complete", timeout=30)
    (pod,) = job_pods(kube_cluster, "queued")
    assert kube_cluster.pod_log(pod.metadata.name) == "trained\n"


def test_a_webhook_denial_refuses_pods_and_a_deployment_shows_replica_failure_until_lifted(
    kube_cluster: KubeCluster,
) -> None:
    api, apps, ns = core(kube_cluster), kubernetes.client.AppsV1Api(kube_cluster.api), kube_cluster.namespace
    denied = 'admission webhook "policy.example.com" denied the request: pods need a cost-center label'
    kube_cluster.deny_pods("policy.example.com", "pods need a cost-center label")
    with pytest.raises(ApiException) as direct:
        api.create_namespaced_pod(ns, gpu_pod("direct", "pass"))
    code, status = refusal(direct)
    assert (code, status["message"], status.get("reason")) == (400, denied, None)

    apps.create_namespaced_deployment(ns, deployment(1))

    def replica_failure(kind: str) -> Any:
        read = apps.read_namespaced_deployment if kind == "Deployment" else apps.read_namespaced_replica_set
        name = "web" if kind == "Deployment" else apps.list_namespaced_replica_set(ns).items[0].metadata.name
        conds = read(name, ns).status.conditions or []
        return next((c for c in conds if c.type == "ReplicaFailure"), None)

    cond = kube_cluster.wait_for(lambda: replica_failure("Deployment"), 10, "the Deployment's ReplicaFailure")
    assert (cond.status, cond.reason, cond.message) == ("True", "FailedCreate", denied)
    rs_cond = replica_failure("ReplicaSet")
    assert (rs_cond.status, rs_cond.reason, rs_cond.message) == ("True", "FailedCreate", denied)
    rs_name = apps.list_namespaced_replica_set(ns).items[0].metadata.name
    event = failed_create(kube_cluster, rs_name)
    assert (event.type, event.message) == ("Warning", f"Error creating: {denied}")
    assert kube_cluster.pods("app=web") == []

    kube_cluster.allow_pods()
    kube_cluster.wait_for(lambda: kube_cluster.pods("app=web"), 15, "the ReplicaSet's pod once the denial is lifted")
    kube_cluster.wait_for(
        lambda: replica_failure("Deployment") is None and replica_failure("ReplicaSet") is None,
        5,
        "ReplicaFailure to be removed",
    )
