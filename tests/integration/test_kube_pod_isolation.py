"""Pods of the emulated cluster are isolated like containers: they see the image and their volumes, not the test.

Each pod runs from the image laid out from workloads/Dockerfile (tests/fixtures/kube/image.py) with its own
/scratch as HOME and TMPDIR, the image's /app as working directory, and Landlock rules (sandbox.py) that refuse
the test's files, the working tree included, and every write outside the pod's writable volumes, as a read-only
root filesystem would.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.kube import KubeCluster
from tests.fixtures.kube.image import ROOT
from tests.fixtures.kube.sandbox import abi
from tests.integration.test_kube_emulator import RESTRICTED_CONTAINER, RESTRICTED_POD, batch, wait_job

pytestmark = pytest.mark.skipif(abi() < 1, reason="this kernel has no Landlock: pod file isolation is not enforced")

PROBE = r"""
import json, os, sys

def attempt(fn):
    try:
        result = fn()
        return "ok" if result is None else result
    except Exception as exc:
        return type(exc).__name__

def write(path):
    with open(path, "w") as f:
        f.write("x")

out = {
    "cwd": os.getcwd(),
    "home": os.environ.get("HOME"),
    "tmpdir": os.environ.get("TMPDIR"),
    "read_test_file": attempt(lambda: open(os.environ["TEST_FILE"]).read()),
    "list_test_dir": attempt(lambda: os.listdir(os.path.dirname(os.environ["TEST_FILE"]))),
    "read_repo": attempt(lambda: open(os.environ["REPO_FILE"]).read()),
    "import_tests": attempt(lambda: __import__("tests.conftest")),
    "workloads_from": attempt(lambda: __import__("workloads").__file__),
    "write_cwd": attempt(lambda: write("written.txt")),
    "write_home": attempt(lambda: write(os.path.join(os.environ["HOME"], "x"))),
    "write_tmp": attempt(lambda: __import__("tempfile").mkstemp() and None),
    "write_shm": attempt(lambda: write("/dev/shm/x")),
    "read_secret": attempt(lambda: open("/etc/creds/token").read()),
    "write_secret": attempt(lambda: write("/etc/creds/other")),
}
print("PROBE " + json.dumps(out))
"""


def _probe_job(name: str, env: dict[str, str]) -> dict[str, Any]:
    container = {
        "name": "main",
        "image": "gpuflow/workloads:test",
        "command": ["python", "-c", PROBE],
        "env": [{"name": k, "value": v} for k, v in env.items()],
        "securityContext": {**RESTRICTED_CONTAINER, "readOnlyRootFilesystem": True},
        "volumeMounts": [
            {"name": "scratch", "mountPath": "/scratch"},
            {"name": "shm", "mountPath": "/dev/shm"},
            {"name": "creds", "mountPath": "/etc/creds", "readOnly": True},
        ],
    }
    pod = {
        "restartPolicy": "Never",
        "securityContext": dict(RESTRICTED_POD),
        "containers": [container],
        "volumes": [
            {"name": "scratch", "emptyDir": {}},
            {"name": "shm", "emptyDir": {"medium": "Memory"}},
            {"name": "creds", "secret": {"secretName": "creds"}},
        ],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {"backoffLimit": 0, "template": {"spec": pod}},
    }


def _run_probe(cluster: KubeCluster, name: str, env: dict[str, str]) -> dict[str, Any]:
    job: Any = _probe_job(name, env)
    batch(cluster).create_namespaced_job(cluster.namespace, job)
    wait_job(cluster, name, "Complete", "Failed", timeout=60)
    (pod,) = cluster.pods(f"job-name={name}")
    log = cluster.pod_log(pod["metadata"]["name"])
    line = next((x for x in log.splitlines() if x.startswith("PROBE ")), None)
    assert line is not None, log
    return dict(json.loads(line.removeprefix("PROBE ")))


def test_a_pod_cannot_read_the_tests_files_or_write_outside_its_volumes(
    kube_cluster: KubeCluster, tmp_path: Path
) -> None:
    mlflow_file = tmp_path / "mlflow.db"  # what a test's own MLflow file or store looks like
    mlflow_file.write_text("the test's runs")
    kube_cluster.create_secret("creds", {"token": "s3cr3t"})

    seen = _run_probe(kube_cluster, "probe", {"TEST_FILE": str(mlflow_file), "REPO_FILE": str(ROOT / "README.md")})
    other = _run_probe(kube_cluster, "probe-2", {"TEST_FILE": str(mlflow_file), "REPO_FILE": str(ROOT / "README.md")})

    assert seen["read_test_file"] == seen["list_test_dir"] == "PermissionError"
    assert seen["read_repo"] == "PermissionError"
    assert seen["import_tests"] == "ModuleNotFoundError"  # the working tree is not on the pod's sys.path
    app = kube_cluster.image.host_path("/app")
    assert seen["cwd"] == str(app) and seen["workloads_from"] == str(app / "workloads" / "__init__.py")
    assert seen["write_cwd"] == "PermissionError"  # the image is read-only, as with readOnlyRootFilesystem
    assert seen["write_secret"] == "PermissionError" and seen["read_secret"] == "s3cr3t"
    assert seen["write_home"] == seen["write_tmp"] == seen["write_shm"] == "ok"
    assert seen["home"] == seen["tmpdir"] and seen["home"] != os.environ.get("HOME")
    assert not Path(seen["home"]).is_relative_to(ROOT)
    assert other["home"] != seen["home"], "every pod has its own /scratch"
