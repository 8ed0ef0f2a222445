"""RBAC and ServiceAccounts on the emulated cluster, as a real one enforces them, through the real clients.

The `kube_cluster` fixture applies `gpuflow manifests rbac` and points KUBECONFIG at the `gpuflow-flows`
account's token; these tests check what that gives and refuses, and what it means for pods.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import requests
import yaml
from kubernetes.client import ApiException

from tests.fixtures.kube import KubeCluster
from tests.integration.test_kube_emulator import job_manifest

FLOWS_USER = "system:serviceaccount:gpuflow-test:gpuflow-flows"


def _client(kubeconfig: Path) -> kubernetes.client.ApiClient:
    return kubernetes.config.new_client_from_config(config_file=str(kubeconfig))


def _as(cluster: KubeCluster, account: str, tmp_path: Path) -> kubernetes.client.ApiClient:
    """A client speaking as `account` with a token from the TokenRequest API."""
    token = cluster.service_account_token(account)
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    config["users"][0]["user"]["token"] = token
    path = tmp_path / f"{account}.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return _client(path)


def _refusal(call: Any) -> tuple[int, str]:
    with pytest.raises(ApiException) as refused:
        call()
    return refused.value.status, json.loads(refused.value.body)["message"]


def test_the_flows_account_gets_exactly_the_verbs_of_its_role(kube_cluster: KubeCluster) -> None:
    api = _client(kube_cluster.kubeconfig)
    core, batch = kubernetes.client.CoreV1Api(api), kubernetes.client.BatchV1Api(api)
    ns = kube_cluster.namespace

    batch.create_namespaced_job(ns, job_manifest("allowed", "print('hi')"))
    assert [j.metadata.name for j in batch.list_namespaced_job(ns).items] == ["allowed"]
    assert core.list_namespaced_pod(ns).items is not None
    assert kubernetes.client.VersionApi(api).get_code().git_version.startswith("v1.")  # discovery is everyone's

    status, message = _refusal(lambda: core.list_namespaced_secret(ns))
    assert status == 403
    assert message == (
        f'secrets is forbidden: User "{FLOWS_USER}" cannot list resource "secrets" in API group "" '
        f'in the namespace "{ns}"'
    )
    status, message = _refusal(lambda: batch.patch_namespaced_job("allowed", ns, {"metadata": {"labels": {"a": "b"}}}))
    assert (status, message) == (
        403,
        f'jobs.batch "allowed" is forbidden: User "{FLOWS_USER}" cannot patch resource "jobs" in API group '
        f'"batch" in the namespace "{ns}"',
    )
    status, message = _refusal(lambda: core.list_namespace())
    assert 'cannot list resource "namespaces" in API group "" at the cluster scope' in message
    status, message = _refusal(lambda: core.list_namespaced_pod("default"))
    assert status == 403 and 'in the namespace "default"' in message, "a Role holds in its own namespace only"


def test_subresources_are_authorised_on_their_own(kube_cluster: KubeCluster) -> None:
    api = _client(kube_cluster.kubeconfig)
    core = kubernetes.client.CoreV1Api(api)
    ns = kube_cluster.namespace
    kubernetes.client.BatchV1Api(kube_cluster.api).create_namespaced_job(ns, job_manifest("sub", "print('x')"))
    pod = kube_cluster.wait_for(lambda: kube_cluster.pods("job-name=sub"), 15, "the Job's pod")[0]["metadata"]["name"]

    status, message = _refusal(lambda: core.create_namespaced_pod_eviction(pod, ns, {"metadata": {"name": pod}}))
    assert status == 403 and f'pods "{pod}" is forbidden' in message
    assert 'cannot create resource "pods/eviction"' in message

    kube_cluster.forbid("get", "pods/log")
    status, message = _refusal(lambda: core.read_namespaced_pod_log(pod, ns))
    assert 'cannot get resource "pods/log"' in message
    core.read_namespaced_pod(pod, ns)  # the pod itself still reads


def test_the_workload_account_can_do_nothing_and_its_pods_get_no_token(
    kube_cluster: KubeCluster, tmp_path: Path
) -> None:
    workload = kubernetes.client.CoreV1Api(_as(kube_cluster, "gpuflow-workload", tmp_path))
    status, message = _refusal(lambda: workload.list_namespaced_pod(kube_cluster.namespace))
    assert status == 403 and "system:serviceaccount:gpuflow-test:gpuflow-workload" in message

    manifest = job_manifest("job", "print('x')", pod={"serviceAccountName": "gpuflow-workload"})
    kubernetes.client.BatchV1Api(kube_cluster.api).create_namespaced_job(kube_cluster.namespace, manifest)
    pod = kube_cluster.wait_for(lambda: kube_cluster.pods("job-name=job"), 15, "the Job's pod")[0]
    assert not [v for v in pod["spec"].get("volumes") or [] if v["name"].startswith("kube-api-access-")]

    manifest = job_manifest("default-account", "print('x')")
    kubernetes.client.BatchV1Api(kube_cluster.api).create_namespaced_job(kube_cluster.namespace, manifest)
    pod = kube_cluster.wait_for(lambda: kube_cluster.pods("job-name=default-account"), 15, "the Job's pod")[0]
    assert pod["spec"]["serviceAccountName"] == "default"
    mounted = [m for m in pod["spec"]["containers"][0]["volumeMounts"] if m["name"].startswith("kube-api-access-")]
    assert mounted and mounted[0]["mountPath"] == "/var/run/secrets/kubernetes.io/serviceaccount"


def test_tokens_are_checked_and_die_with_their_account(kube_cluster: KubeCluster, tmp_path: Path) -> None:
    url = f"{kube_cluster.url}/api/v1/namespaces/{kube_cluster.namespace}/pods"
    assert requests.get(url, headers={"Authorization": "Bearer made-up"}, timeout=5).status_code == 401
    anonymous = requests.get(url, timeout=5)
    assert anonymous.status_code == 403 and 'User "system:anonymous" cannot list' in anonymous.json()["message"]
    assert requests.get(f"{kube_cluster.url}/version", timeout=5).status_code == 200

    core = kubernetes.client.CoreV1Api(kube_cluster.api)
    core.create_namespaced_service_account(kube_cluster.namespace, {"metadata": {"name": "short-lived"}})
    token = kube_cluster.service_account_token("short-lived")
    who = {"Authorization": f"Bearer {token}"}
    assert requests.get(url, headers=who, timeout=5).status_code == 403  # known, but granted nothing
    core.delete_namespaced_service_account("short-lived", kube_cluster.namespace)
    assert requests.get(url, headers=who, timeout=5).status_code == 401


def test_a_binding_to_a_missing_role_says_so_in_the_refusal(kube_cluster: KubeCluster) -> None:
    rbac = kubernetes.client.RbacAuthorizationV1Api(kube_cluster.api)
    rbac.delete_namespaced_role("gpuflow-flows", kube_cluster.namespace)
    status, message = _refusal(
        lambda: kubernetes.client.CoreV1Api(_client(kube_cluster.kubeconfig)).list_namespaced_pod(
            kube_cluster.namespace
        )
    )
    assert status == 403
    assert message.endswith(': RBAC: role.rbac.authorization.k8s.io "gpuflow-flows" not found')


def test_a_pod_naming_a_missing_service_account_is_refused(kube_cluster: KubeCluster) -> None:
    core = kubernetes.client.CoreV1Api(kube_cluster.api)
    manifest = job_manifest("x", "print('x')")["spec"]["template"]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "lost"}, "spec": manifest["spec"]}
    pod["spec"]["serviceAccountName"] = "nobody"
    status, message = _refusal(lambda: core.create_namespaced_pod(kube_cluster.namespace, pod))
    assert (status, message) == (
        403,
        'pods "lost" is forbidden: error looking up service account gpuflow-test/nobody: serviceaccount "nobody" '
        "not found",
    )

    # A Job's controller meets the same refusal and records it, as on a real cluster.
    job = job_manifest("orphan", "print('x')", pod={"serviceAccountName": "nobody"})
    kubernetes.client.BatchV1Api(kube_cluster.api).create_namespaced_job(kube_cluster.namespace, job)
    failed = kube_cluster.wait_for(
        lambda: [e for e in kube_cluster.events("orphan") if e["reason"] == "FailedCreate"], 15, "FailedCreate"
    )
    assert (
        'error looking up service account gpuflow-test/nobody: serviceaccount "nobody" not found'
        in failed[0]["message"]
    )


def test_every_namespace_gets_a_default_service_account(kube_cluster: KubeCluster) -> None:
    kube_cluster.create_namespace("other")
    core = kubernetes.client.CoreV1Api(kube_cluster.api)
    assert core.read_namespaced_service_account("default", "other").metadata.name == "default"
