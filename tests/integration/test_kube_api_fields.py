"""What the emulated API server does to the objects it is sent, as a real one does: unknown fields dropped with
a warning (refused under Strict), quantities returned in canonical form."""

from __future__ import annotations

from typing import Any

import kubernetes
import requests

from tests.fixtures.kube import KubeCluster
from tests.integration.test_kube_emulator import job_manifest


def _jobs_url(cluster: KubeCluster) -> str:
    return f"{cluster.url}/apis/batch/v1/namespaces/{cluster.namespace}/jobs"


def _with_unknown_fields(name: str) -> dict[str, Any]:
    manifest = job_manifest(name, "print('x')")
    manifest["spec"]["foo"] = 1
    manifest["spec"]["template"]["spec"]["containers"][0]["bar"] = "baz"
    return manifest


def test_unknown_fields_are_dropped_with_the_warning_kubectl_prints(kube_cluster: KubeCluster) -> None:
    reply = requests.post(
        _jobs_url(kube_cluster), json=_with_unknown_fields("loose"), headers=kube_cluster.admin_headers, timeout=10
    )

    assert reply.status_code == 201, reply.text
    assert reply.headers["Warning"] == (
        '299 - "unknown field \\"spec.template.spec.containers[0].bar\\"", 299 - "unknown field \\"spec.foo\\""'
    )  # in the order the decoder meets them
    stored = kube_cluster.get("Job", "loose")
    assert stored is not None and "foo" not in stored["spec"]
    assert "bar" not in stored["spec"]["template"]["spec"]["containers"][0]

    strict = requests.post(
        _jobs_url(kube_cluster) + "?fieldValidation=Strict",
        json=_with_unknown_fields("strict"),
        headers=kube_cluster.admin_headers,
        timeout=10,
    )
    assert strict.status_code == 400
    assert strict.json()["message"] == (
        'strict decoding error: unknown field "spec.template.spec.containers[0].bar", unknown field "spec.foo"'
    )
    assert kube_cluster.get("Job", "strict") is None

    patched = requests.patch(
        f"{_jobs_url(kube_cluster)}/loose",
        json={"metadata": {"labels": {"a": "b"}}, "spec": {"qux": True}},
        headers={**kube_cluster.admin_headers, "Content-Type": "application/merge-patch+json"},
        timeout=10,
    )
    assert patched.status_code == 200 and patched.headers["Warning"] == '299 - "unknown field \\"spec.qux\\""'


def test_quantities_read_back_in_canonical_form(kube_cluster: KubeCluster) -> None:
    manifest = job_manifest(
        "sized",
        "print('x')",
        container={"resources": {"requests": {"cpu": "1000m", "memory": "1024Mi"}, "limits": {"cpu": "1.5"}}},
        pod={"volumes": [{"name": "scratch", "emptyDir": {"sizeLimit": "2048Mi"}}]},
    )
    kubernetes.client.BatchV1Api(kube_cluster.api).create_namespaced_job(kube_cluster.namespace, manifest)

    job = kubernetes.client.BatchV1Api(kube_cluster.api).read_namespaced_job("sized", kube_cluster.namespace)
    resources = job.spec.template.spec.containers[0].resources
    assert resources.requests == {"cpu": "1", "memory": "1Gi"}
    assert resources.limits == {"cpu": "1500m"}
    assert job.spec.template.spec.volumes[0].empty_dir.size_limit == "2Gi"
    pod = kube_cluster.wait_for(lambda: kube_cluster.pods("job-name=sized"), 15, "the Job's pod")[0]
    assert pod["spec"]["containers"][0]["resources"]["requests"] == {"cpu": "1", "memory": "1Gi"}
