"""The Kubernetes work pool against a real Prefect API: its base job template, rendered by prefect-kubernetes' own
worker code into a valid, restricted Job, and `bootstrap` creating the pool (with that template) once."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from deployments.kubernetes_template import TEMPLATE_PATH, gpu_base_job_template
from tests.fixtures.kube import pod_security
from tests.fixtures.manifest_schema import validate


def _rendered_job_manifest(values: dict[str, Any]) -> dict[str, Any]:
    """The Job a Prefect Kubernetes worker would create from the template: prefect-kubernetes' own code path."""
    from prefect.client.schemas.objects import FlowRun
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    async def build() -> dict[str, Any]:
        config = await KubernetesWorkerJobConfiguration.from_template_and_values(gpu_base_job_template(), values)
        config.prepare_for_flow_run(FlowRun(id=uuid.uuid4(), name="brave-fox", flow_id=uuid.uuid4()))
        return config.job_manifest

    return asyncio.run(build())


@pytest.mark.usefixtures("prefect_api")
def test_base_job_template_renders_gpu_values_into_a_valid_job() -> None:
    manifest = _rendered_job_manifest(
        {
            "image": "registry.example.com/gpuflow:0.1.0",
            "namespace": "gpuflow",
            "gpu_count": 2,
            "node_selector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        }
    )
    pod = manifest["spec"]["template"]["spec"]
    (box,) = pod["containers"]
    assert box["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["serviceAccountName"] == "gpuflow-flows"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert box["securityContext"]["readOnlyRootFilesystem"] is True
    env = {e["name"]: e.get("value") for e in box["env"]}
    assert env["HOME"] == "/scratch" and env["PREFECT_HOME"] == "/scratch/.prefect"
    # prefect-kubernetes insists on these two inside the pod spec (its own template puts them there); the API
    # server drops them as unknown fields with a warning. Everything else must pass the strict schema.
    assert pod.pop("parallelism") == 1 and pod.pop("completions") == 1
    validate(manifest)
    assert pod_security.violations(pod, "restricted") == [], "admitted where Pod Security enforces restricted"

    cpu = _rendered_job_manifest({"image": "img:1", "tolerations": []})
    cpu_pod = cpu["spec"]["template"]["spec"]
    assert cpu_pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 0
    assert cpu_pod["tolerations"] == [] and cpu_pod["nodeSelector"] == {}
    cpu_pod.pop("parallelism"), cpu_pod.pop("completions")
    validate(cpu)


@pytest.mark.usefixtures("prefect_api")
def test_bootstrap_creates_the_kubernetes_pool_with_the_gpu_template_once() -> None:
    from prefect.client.orchestration import get_client

    from deployments.bootstrap import KUBERNETES_POOL, BootstrapReport, ensure_kubernetes_pool

    first, second = BootstrapReport(), BootstrapReport()
    ensure_kubernetes_pool(first)
    ensure_kubernetes_pool(second)
    assert first.created["work_pools"] == [KUBERNETES_POOL] and second.existing["work_pools"] == [KUBERNETES_POOL]
    for slug in ("gpuflow-kubernetes-gpu-job", "gpuflow-kubernetes-serving"):
        assert slug in first.created["block_types"] + first.existing["block_types"]
    with get_client(sync_client=True) as client:
        pool = client.read_work_pool(KUBERNETES_POOL)
    assert pool.type == "kubernetes"
    assert pool.base_job_template == json.loads(Path(TEMPLATE_PATH).read_text())
