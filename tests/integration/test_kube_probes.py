"""Startup and liveness probes on the emulated cluster restart containers as the real kubelet does."""

from __future__ import annotations

from typing import Any

import kubernetes

from tests.fixtures.kube import KubeCluster
from tests.integration.test_kube_emulator import IMAGE, RESTRICTED_CONTAINER, RESTRICTED_POD

# Answers /healthz 200 until the file named by $SICK exists (then 500); /started only after $WARMUP seconds.
SERVER = """
import http.server, os, pathlib, time
born = time.monotonic()
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/healthz":
            code = 500 if pathlib.Path(os.environ["SICK"]).exists() else 200
        else:
            code = 200 if time.monotonic() - born > float(os.environ["WARMUP"]) else 503
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["GPUFLOW_SERVER_PORT"])), Handler).serve_forever()
"""


def _pod(name: str, sick: str, warmup: float, **probes: Any) -> dict[str, Any]:
    container = {
        "name": "server",
        "image": IMAGE,
        "command": ["python", "-c", SERVER],
        "env": [
            {"name": "GPUFLOW_SERVER_PORT", "value": "8080"},
            {"name": "SICK", "value": sick},
            {"name": "WARMUP", "value": str(warmup)},
        ],
        "ports": [{"name": "http", "containerPort": 8080}],
        "securityContext": dict(RESTRICTED_CONTAINER),
        **probes,
    }
    spec = {"securityContext": dict(RESTRICTED_POD), "containers": [container], "terminationGracePeriodSeconds": 1}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def _status(cluster: KubeCluster, name: str) -> dict[str, Any]:
    pod = cluster.get("Pod", name) or {}
    return ((pod.get("status") or {}).get("containerStatuses") or [{}])[0]


def _reasons(cluster: KubeCluster, name: str) -> dict[str, int]:
    """The probe events of a pod: "<reason>: <message>" -> count (the recorder aggregates repeats)."""
    return {
        f"{e['reason']}: {e['message']}": int(e.get("count", 1))
        for e in cluster.events(name)
        if e["reason"] in ("Unhealthy", "Killing")
    }


def test_a_failing_liveness_probe_restarts_the_container(kube_cluster: KubeCluster, tmp_path: Any) -> None:
    sick = tmp_path / "sick"
    liveness = {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 1, "failureThreshold": 2}
    core = kubernetes.client.CoreV1Api(kube_cluster.api)
    core.create_namespaced_pod(kube_cluster.namespace, _pod("lively", str(sick), 0, livenessProbe=liveness))
    kube_cluster.wait_for(lambda: _status(kube_cluster, "lively").get("started"), 20, "the container to run")
    assert _status(kube_cluster, "lively")["restartCount"] == 0

    sick.touch()
    kube_cluster.wait_for(lambda: _status(kube_cluster, "lively").get("restartCount") == 1, 20, "a restart")
    sick.unlink()  # the restarted container is healthy again and stays up
    reasons = _reasons(kube_cluster, "lively")
    assert reasons["Unhealthy: Liveness probe failed: HTTP probe failed with statuscode: 500"] >= 1
    assert reasons["Killing: Container server failed liveness probe, will be restarted"] == 1
    last = _status(kube_cluster, "lively")["lastState"]["terminated"]
    assert last["exitCode"] in (137, 143)
    kube_cluster.wait_for(lambda: "running" in _status(kube_cluster, "lively")["state"], 20, "running again")


def test_a_startup_probe_holds_readiness_and_liveness_then_restarts_a_container_that_never_starts(
    kube_cluster: KubeCluster, tmp_path: Any
) -> None:
    sick = tmp_path / "sick"  # absent: /healthz answers 200 throughout
    # /started fails for the first 2.5 s: a liveness probe on it that ran before startup passed would kill at once.
    probes = {
        "startupProbe": {"httpGet": {"path": "/started", "port": "http"}, "periodSeconds": 1, "failureThreshold": 8},
        "readinessProbe": {"httpGet": {"path": "/started", "port": "http"}, "periodSeconds": 1},
        "livenessProbe": {"httpGet": {"path": "/started", "port": "http"}, "periodSeconds": 1, "failureThreshold": 1},
    }
    core = kubernetes.client.CoreV1Api(kube_cluster.api)
    core.create_namespaced_pod(kube_cluster.namespace, _pod("slow", str(sick), 2.5, **probes))
    kube_cluster.wait_for(lambda: "running" in _status(kube_cluster, "slow").get("state", {}), 20, "running")
    assert _status(kube_cluster, "slow")["started"] is False and _status(kube_cluster, "slow")["ready"] is False
    kube_cluster.wait_for(lambda: _status(kube_cluster, "slow").get("ready"), 20, "started, then ready")
    assert _status(kube_cluster, "slow")["started"] is True
    reasons = _reasons(kube_cluster, "slow")
    assert reasons.get("Unhealthy: Startup probe failed: HTTP probe failed with statuscode: 503", 0) >= 1
    assert _status(kube_cluster, "slow")["restartCount"] == 0, "liveness waited for startup to pass"
    assert not [r for r in reasons if "Liveness" in r or "Killing" in r], reasons

    never = {"httpGet": {"path": "/started", "port": "http"}, "periodSeconds": 1, "failureThreshold": 2}
    core.create_namespaced_pod(kube_cluster.namespace, _pod("stuck", str(sick), 600, startupProbe=never))
    kube_cluster.wait_for(lambda: _status(kube_cluster, "stuck").get("restartCount", 0) >= 1, 20, "a restart")
    assert "Killing: Container server failed startup probe, will be restarted" in _reasons(kube_cluster, "stuck")
