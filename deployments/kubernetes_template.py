"""The ``gpuflow-kubernetes`` work pool's base job template: prefect-kubernetes' default plus GPUs and a safe pod.

It is the template a Prefect Kubernetes worker uses to run *flows* as Jobs (the flows then start their own
training Jobs through the KubernetesGPUJob block). Built from ``KubernetesWorker``'s default so every
standard variable keeps working, with these additions:

- ``gpu_count`` -> ``resources.limits["nvidia.com/gpu"]`` (0: none). Prefect templates values, not keys, so
  the resource name is fixed; with the GPU Operator's MIG strategy ``single`` MIG slices are advertised as
  ``nvidia.com/gpu`` too (select them with ``node_selector``); for strategy ``mixed`` edit the key.
- ``node_selector`` -> ``nodeSelector``; ``tolerations`` -> ``tolerations`` (default: tolerate the GPU
  Operator's ``nvidia.com/gpu`` NoSchedule taint, harmless on CPU nodes).
- the non-root security context of every gpuflow pod, with ``/scratch`` (HOME, TMPDIR, PREFECT_HOME,
  GPUFLOW_HOME) and a memory-backed ``/dev/shm``; ``service_account_name`` defaults to ``gpuflow-flows``.

``python -m deployments.kubernetes_template`` rewrites ``deployments/kubernetes/base-job-template.json``;
a test checks the committed file is what this builds.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from deployments import PROJECT_ROOT
from tasks.kube.manifests import GPU_RESOURCE, GPU_TOLERATION, SCRATCH, pod_security_context

TEMPLATE_PATH = PROJECT_ROOT / "deployments" / "kubernetes" / "base-job-template.json"
FLOW_SERVICE_ACCOUNT = "gpuflow-flows"
FLOW_ENV = {
    "HOME": SCRATCH,
    "TMPDIR": SCRATCH,
    "PREFECT_HOME": f"{SCRATCH}/.prefect",
    "GPUFLOW_HOME": f"{SCRATCH}/gpuflow",
    "MPLCONFIGDIR": f"{SCRATCH}/matplotlib",
}

GPU_VARIABLES: dict[str, dict[str, Any]] = {
    "gpu_count": {
        "title": "GPU count",
        "description": f"GPUs ({GPU_RESOURCE}) for the flow-run pod; 0 runs it on CPUs.",
        "type": "integer",
        "minimum": 0,
        "default": 0,
    },
    "node_selector": {
        "title": "Node selector",
        "description": "Node labels the flow-run pod requires, e.g. "
        '{"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"} or {"nvidia.com/gpu.present": "true"}.',
        "type": "object",
        "additionalProperties": {"type": "string"},
        "default": {},
    },
    "tolerations": {
        "title": "Tolerations",
        "description": "Pod tolerations; the default tolerates the GPU Operator's nvidia.com/gpu NoSchedule taint.",
        "type": "array",
        "items": {"type": "object"},
        "default": [dict(GPU_TOLERATION)],
    },
}

# Defaults where prefect-kubernetes leaves them empty: a gpuflow flow pod always gets these.
DEFAULTS: dict[str, Any] = {
    "service_account_name": FLOW_SERVICE_ACCOUNT,
    "cpu_request": "500m",
    "cpu_limit": "2",
    "memory_request": "1Gi",
    "memory_limit": "4Gi",
    "finished_job_ttl": 3600,
}


def default_base_job_template() -> dict[str, Any]:
    """prefect-kubernetes' own default template (imported lazily: it pulls in the kubernetes client)."""
    from prefect_kubernetes.worker import KubernetesWorker

    return copy.deepcopy(KubernetesWorker.get_default_base_job_template())


def gpu_base_job_template() -> dict[str, Any]:
    """The default template with the GPU variables, defaults and security settings above wired in."""
    template = default_base_job_template()
    properties = template["variables"]["properties"]
    for name, default in DEFAULTS.items():
        properties[name]["default"] = default
    properties["env"]["default"] = dict(FLOW_ENV)
    properties.update(copy.deepcopy(GPU_VARIABLES))

    pod = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    pod["securityContext"] = pod_security_context()
    pod["nodeSelector"] = "{{ node_selector }}"
    pod["tolerations"] = "{{ tolerations }}"
    pod["volumes"] = [
        {"name": "scratch", "emptyDir": {"sizeLimit": "10Gi"}},
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}},
    ]
    (container,) = pod["containers"]
    container["resources"]["limits"][GPU_RESOURCE] = "{{ gpu_count }}"
    container["securityContext"] = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    container["volumeMounts"] = [
        {"name": "scratch", "mountPath": SCRATCH},
        {"name": "shm", "mountPath": "/dev/shm"},
    ]
    return template


def render() -> str:
    return json.dumps(gpu_base_job_template(), indent=2, sort_keys=False) + "\n"


def main() -> int:
    """Write the template file (tests/unit/test_kube_manifests.py fails while the committed one is out of date)."""
    Path(TEMPLATE_PATH).write_text(render())
    print(f"wrote {TEMPLATE_PATH}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
