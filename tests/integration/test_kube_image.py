"""A module the image lacks fails the pod, and the stage says why: the emulated pods run the image's files
(laid out from workloads/Dockerfile), not the test's working tree."""

from __future__ import annotations

import importlib.util

import pytest

from blocks.kubernetes import KubernetesGPUJob
from tasks.core.errors import WorkloadFailed
from tasks.core.workload import WorkloadSpec
from tests.fixtures.kube import KubeCluster

MODULE = "examples.breast_cancer_sklearn.train"  # in the repository, never copied into the image


def test_a_module_the_image_lacks_fails_the_pod_with_the_import_error_in_the_failure(kube_cluster: KubeCluster) -> None:
    assert importlib.util.find_spec(MODULE) is not None, "the test's own checkout has it"
    spec = WorkloadSpec(name="trainer", module=MODULE, labels={"gpuflow.training-id": "not-in-image"})
    block = KubernetesGPUJob(
        image="gpuflow/workloads:test",
        namespace=kube_cluster.namespace,
        cpu_request="100m",
        memory_request="128Mi",
        backoff_limit=0,
        poll_interval_seconds=0.2,
        delete_failed_jobs=True,
    )

    with pytest.raises(WorkloadFailed) as failed:
        block.run_workload(spec, lambda line: None)

    assert failed.value.exit_code == 1
    assert "No module named 'examples'" in str(failed.value), str(failed.value)
