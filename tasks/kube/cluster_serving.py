"""The rollout's stable and canary on a Kubernetes cluster (the :class:`~tasks.rollout.serving.Serving` seam).

Objects, all from :mod:`tasks.kube.server_manifests` (``<name>`` is the block's ``server_name`` or the model's name):

- Deployment ``<name>-stable``: the champion. It outlives the rollout: a promotion patches it to the new
  version (its pods roll), a rollback leaves its pod template alone.
- Deployment ``<name>-canary`` and Service ``<name>-canary``: the candidate, removed when the rollout ends,
  whatever ends it.
- Service ``<name>``: what clients use, both tracks behind it; Service ``<name>-stable``: stable alone, the
  HTTPRoute's stable backend and where the traffic driver sends retries and shadow requests.
- With a Gateway: HTTPRoute ``<name>`` whose backend weights are the canary's share.

The split. Without a Gateway it is the replica ratio: ``replicas`` pods in all, ``canary_replicas(total,
weight)`` of them canary (rounded half up, at least 1 during a step, and at least 1 stable below 100%),
so each step's real share is canary pods / total (``StepFigures.effective_weight``). With a Gateway the
route's weights are exactly the policy's and stable's Deployment is never touched; the canary gets the same
pod count as it would with replicas, as capacity.

The replayed labelled traffic goes where a client's would: ``service_url`` (in-cluster, or the gateway), else
the API server's ``services/<name>:http/proxy``. Answers are attributed to a track by ``X-Model-Version``.
Each track's figures are its pods' /metrics summed (:mod:`tasks.kube.cluster_metrics`), read through
``pods/<pod>:8080/proxy/metrics`` or from Prometheus. The API calls are :mod:`tasks.kube.server_objects`',
the waits for a track (ready, gone, down) :mod:`tasks.kube.track_readiness`'.
"""

from __future__ import annotations

import math
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any

from kubernetes import client as k8s

from tasks.core.errors import ConfigurationError, RetryableError, WorkloadFailed
from tasks.core.types import LogFn, Track
from tasks.kube import pod_status
from tasks.kube.api import api_client
from tasks.kube.cluster_metrics import TrackCounters, prometheus_samples, prometheus_startup
from tasks.kube.pod_settings import LABEL_MODEL_VERSION
from tasks.kube.server_manifests import http_route, server_service, track_service
from tasks.kube.server_objects import ServerObjects
from tasks.kube.servers import block_server_name, track_deployment
from tasks.kube.track_readiness import TrackReadiness
from tasks.rollout.server_metrics import ServerSample, parse_server_metrics, startup_seconds
from tasks.rollout.traffic import Routes, http_endpoint
from tasks.tracking.model_registry import RegisteredVersion

if TYPE_CHECKING:
    from blocks.kubernetes_serving import KubernetesServing

GONE_TIMEOUT_SECONDS = 60.0


# -- pure helpers ------------------------------------------------------------------------------------


def canary_replicas(total: int, weight: int) -> int:
    """Canary pods for ``weight`` percent of ``total`` pods: rounded half up, never 0 during a step, and
    leaving at least one stable pod until the weight is 100."""
    if weight >= 100 or total <= 1:
        return total
    return max(1, min(total - 1, math.floor(total * weight / 100 + 0.5)))


# -- the backend -----------------------------------------------------------------------------------


class ClusterServing:
    """Stable and canary as Deployments on the cluster the block names; see the module docstring."""

    backend = "kubernetes"

    def __init__(
        self,
        block: KubernetesServing,
        *,
        tracking_uri: str,
        model_name: str,
        log: LogFn = lambda line: None,
        api: k8s.ApiClient | None = None,
    ) -> None:
        block.check()
        block.check_reachable(tracking_uri)
        self._block = block
        self._pod = block.pod_settings()
        self._ns = self._pod.namespace
        self._name = block_server_name(block, model_name)
        self._tracking_uri = tracking_uri
        self._log = log
        self._api = api or api_client(block.credentials)
        self._objects = ServerObjects(self._api, self._ns, self._name)
        self._waits = TrackReadiness(self._objects, block.poll_interval_seconds, block.image_pull_grace_seconds, log)
        self._gateway = bool(block.gateway)
        self._versions: dict[Track, RegisteredVersion] = {}
        self._counters: dict[Track, TrackCounters] = {"stable": TrackCounters(), "canary": TrackCounters()}
        self._stable_before: dict[str, Any] | None = None  # stable's replicas and template before the rollout
        self._steady = block.replicas  # stable's replicas outside a rollout
        self._stable_ready = False
        self._stable_changed = False  # stable's template was patched and is not ready like that yet
        self._policy_timeout = 600.0
        self._canary_live = False
        self._down: str | None = None
        self._down_checked = 0.0

    # -- context ----------------------------------------------------------------------------------------

    def __enter__(self) -> ClusterServing:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        """Remove the canary, put stable back as it was, and drop a stable this rollout created that never
        became ready; nothing here waits, so a cancellation is not held up."""
        try:
            self._clean_up()
        except Exception as exc:
            self._log(f"cleaning up the canary of {self._name} failed: {exc}")
            if error is None:
                raise
        finally:
            self._api.close()

    def _clean_up(self) -> None:
        if self._canary_live:
            self._log(f"removing the canary of {self._name} (the rollout did not finish)")
            if self._gateway:
                self._set_route({"stable": 100}, strict=False)
        self._restore_stable()
        if self._canary_live:
            self._remove_canary(wait=False)
        stable = self._objects.track_name("stable")
        if ("deployments", stable) in self._objects.created and not self._stable_ready:
            self._log(f"removing {stable}: this rollout created it and it never became ready")
            for kind, name in reversed(self._objects.created):
                self._objects.delete(kind, name)
            self._objects.created.clear()

    # -- starting ---------------------------------------------------------------------------------------

    def serve_first(self, version: RegisteredVersion, timeout: float) -> None:
        """No champion yet: ``version`` becomes the stable Deployment (created, or patched if one is left)."""
        self.start("stable", version)
        self.wait_ready("stable", timeout)

    def start(self, role: Track, version: RegisteredVersion) -> None:
        self._versions[role] = version
        if role == "stable":
            self._start_stable(version)
        else:
            self._start_canary(version)

    def _start_stable(self, version: RegisteredVersion) -> None:
        name = self._objects.track_name("stable")
        existing = self._objects.read_deployment(name)
        if existing is None:
            self._objects.create(self._deployment("stable", version, self._block.replicas))
        else:
            spec = existing.get("spec") or {}
            self._stable_before = {
                "replicas": spec.get("replicas") or 0,
                "template": spec.get("template") or {},
                "labels": (existing.get("metadata") or {}).get("labels") or {},
            }
            self._steady = int(spec.get("replicas") or 0) or self._block.replicas
            served = ((spec.get("template") or {}).get("metadata") or {}).get("labels", {}).get(LABEL_MODEL_VERSION)
            if served != version.version or not spec.get("replicas"):
                self._log(
                    f"Deployment {name} serves version {served} with {spec.get('replicas')} pods but the champion is "
                    f"{version.version}: moving it to {version.version} with {self._steady} pods first"
                )
                self._stable_changed = True
                self._objects.patch_deployment(name, self._stable_patch(version, self._steady))
        self._objects.ensure(server_service(self._name, self._pod))
        self._objects.ensure(track_service(self._name, "stable", self._pod))
        if self._gateway:
            self._set_route({"stable": 100})

    def _start_canary(self, version: RegisteredVersion) -> None:
        name = self._objects.track_name("canary")
        if self._objects.read_deployment(name) is not None:
            self._log(f"Deployment {name} is left from an earlier rollout that did not finish: replacing it")
            self._objects.delete("deployments", name)
            self._waits.gone("canary", GONE_TIMEOUT_SECONDS)
        self._canary_live = True
        self._objects.ensure(track_service(self._name, "canary", self._pod))
        self._objects.create(self._deployment("canary", version, 1))

    def wait_ready(self, role: Track, timeout: float) -> None:
        """Every pod of the track ready on its version, and no other pod left; a pod that crashes, cannot pull
        its image or has no node is reported with its state."""
        name = self._objects.track_name(role)
        deployment = self._objects.read_deployment(name)
        desired = int(((deployment or {}).get("spec") or {}).get("replicas") or 0)
        self._waits.ready(role, self._versions[role], desired, self._timeout(timeout))
        if role == "stable":
            self._stable_ready = True
            self._keep_stable()

    # -- reading figures --------------------------------------------------------------------------------

    def sample(self, role: Track) -> ServerSample:
        counters = self._counters[role]
        pods = [p for p in self._objects.pods(role) if not p.deleting]
        if self._block.prometheus_url:
            samples = prometheus_samples(self._block.prometheus_url, self._ns, [p.name for p in pods])
            for name, found in samples.items():
                counters.update(name, found)
            return counters.total()
        for pod in pods:
            if pod.ready:
                counters.update(pod.name, parse_server_metrics(self._objects.scrape(role, pod)))
        return counters.total()

    def startup(self, role: Track) -> dict[str, float]:
        """The slowest ready pod's model load and warm-up seconds."""
        pods = [p for p in self._objects.pods(role) if p.ready and not p.deleting]
        if self._block.prometheus_url:
            return prometheus_startup(self._block.prometheus_url, self._ns, [p.name for p in pods])
        found: dict[str, float] = {}
        for pod in pods:
            for key, value in startup_seconds(self._objects.scrape(role, pod)).items():
                found[key] = max(found.get(key, 0.0), value)
        return found

    def down(self, role: Track) -> str | None:
        """Why the track stopped serving: a pod crashed (restarted or backing off), or none is left. Read at
        most every ``poll_interval_seconds`` (0.5 s at most); once down, it stays down."""
        if self._down is not None and role == "canary":
            return self._down
        now = time.monotonic()
        if role == "canary" and now - self._down_checked < min(self._block.poll_interval_seconds, 0.5):
            return None
        reason = self._waits.down(role)
        if role == "canary":
            self._down_checked = now
            self._down = reason
        return reason

    def failure(self, role: Track, detail: str) -> WorkloadFailed:
        pods = self._objects.pods(role)
        states = [pod_status.progress(p.raw) for p in pods] or ["(no pods)"]
        return WorkloadFailed(f"{role} Deployment {self._objects.track_name(role)} in {self._ns}", None, states, detail)

    # -- traffic ----------------------------------------------------------------------------------------

    def routes(self, timeout: float) -> Routes:
        """User requests where a client's go; retries and shadows to stable's own Service."""
        stable = self._objects.proxy_factory(self._objects.track_name("stable"), timeout)
        if self._block.service_url:
            split = http_endpoint(self._block.service_url, timeout)
        else:
            split = self._objects.proxy_factory(self._name, timeout)
        versions: dict[str, Track] = {
            self._versions["stable"].version: "stable",
            self._versions["canary"].version: "canary",
        }
        return Routes(stable=stable, split_by=split, versions=versions)

    def set_weight(self, weight: int, timeout: float) -> float:
        """Scale the tracks (replica ratio) or set the route's weights; returns the canary's real share."""
        total = self._block.replicas
        canary_n = canary_replicas(total, weight)
        timeout = self._timeout(timeout)
        if self._gateway:
            self._scale("canary", canary_n, timeout)
            self._set_route({"stable": 100 - weight, "canary": weight})
            self._log(f"canary weight {weight}%: route {100 - weight}/{weight}; {canary_n} canary pods")
            return float(weight)
        stable_n = total - canary_n
        order: list[tuple[Track, int]] = [("canary", canary_n), ("stable", stable_n)]
        if canary_n < self._objects.replicas("canary"):
            order.reverse()
        for role, count in order:  # add capacity before taking any away
            self._scale(role, count, timeout)
        effective = 100.0 * canary_n / total
        self._log(f"canary weight {weight}%: {stable_n} stable + {canary_n} canary pods ({effective:.1f}% canary)")
        return effective

    # -- the decision -----------------------------------------------------------------------------------

    def promote(self) -> None:
        """Stable moves to the candidate (its pods roll) and becomes ready, then the canary goes."""
        version = self._versions["canary"]
        name = self._objects.track_name("stable")
        self._stable_changed = True
        self._versions["stable"] = version
        self._objects.patch_deployment(name, self._stable_patch(version, self._steady))
        self._waits.ready("stable", self._versions["stable"], self._steady, self._timeout())
        self._keep_stable()
        if self._gateway:
            self._set_route({"stable": 100})
        self._remove_canary(wait=True)
        self._log(f"Deployment {name} now serves version {version.version} on {self._steady} pods")

    def roll_back(self) -> None:
        """The canary goes; stable gets its pods back (replica ratio) before it does, its template untouched."""
        if not self._canary_live:
            return
        if self._gateway:
            self._set_route({"stable": 100}, strict=False)
        elif self._objects.replicas("stable") != self._steady:
            self._scale("stable", self._steady, self._timeout())
        self._remove_canary(wait=True)

    # -- pieces -----------------------------------------------------------------------------------------

    def _timeout(self, policy_timeout: float | None = None) -> float:
        """The block's readiness timeout, else the policy's (the last one the flow passed)."""
        if policy_timeout is not None:
            self._policy_timeout = policy_timeout
        return float(self._block.ready_timeout_seconds or self._policy_timeout)

    def _keep_stable(self) -> None:
        """Stable is ready as it is now: that is the state to put back if the rollout fails from here on."""
        current = self._objects.read_deployment(self._objects.track_name("stable")) or {}
        spec = current.get("spec") or {}
        self._stable_before = {
            "replicas": self._steady,
            "template": spec.get("template") or {},
            "labels": (current.get("metadata") or {}).get("labels") or {},
        }
        self._stable_changed = False

    def _deployment(self, role: Track, version: RegisteredVersion, replicas: int) -> dict[str, Any]:
        return track_deployment(
            self._block,
            self._name,
            track=role,
            model_uri=version.model_uri,
            model_version=version.version,
            replicas=replicas,
            tracking_uri=self._tracking_uri,
            pod=self._pod,
        )

    def _stable_patch(self, version: RegisteredVersion, replicas: int) -> dict[str, Any]:
        """A merge patch moving stable to ``version``: lists (containers) are replaced whole."""
        manifest = self._deployment("stable", version, replicas)
        return {
            "metadata": {"labels": manifest["metadata"]["labels"]},
            "spec": {"replicas": replicas, "template": manifest["spec"]["template"]},
        }

    def _restore_stable(self) -> None:
        """Put stable's replicas, and its template if this rollout changed it and that never became ready, back
        as they were; no waiting."""
        before = self._stable_before
        current = self._objects.read_deployment(self._objects.track_name("stable"))
        if before is None or current is None:
            return
        patch: dict[str, Any] = {}
        if (current.get("spec") or {}).get("replicas") != before["replicas"]:
            patch["spec"] = {"replicas": before["replicas"]}
        if self._stable_changed:
            patch.setdefault("spec", {})["template"] = before["template"]
            patch["metadata"] = {"labels": before["labels"]}
        if patch:
            self._log(f"putting Deployment {self._objects.track_name('stable')} back as it was before the rollout")
            self._objects.patch_deployment(self._objects.track_name("stable"), patch)

    def _remove_canary(self, *, wait: bool) -> None:
        self._objects.delete("deployments", self._objects.track_name("canary"))
        self._objects.delete("services", self._objects.track_name("canary"))
        self._canary_live = False
        if wait:
            self._waits.gone("canary", GONE_TIMEOUT_SECONDS)

    def _scale(self, role: Track, count: int, timeout: float) -> None:
        if self._objects.replicas(role) != count:
            self._objects.patch_deployment(self._objects.track_name(role), {"spec": {"replicas": count}})
        self._waits.ready(role, self._versions[role], count, timeout)

    def _set_route(self, weights: dict[str, int], *, strict: bool = True) -> None:
        """Write the route's weights and wait until the Gateway accepted them (:mod:`tasks.kube.routes`).

        ``strict``: a refusal or no answer in time raises; otherwise (taking a canary off) it is logged and the
        caller goes on, since keeping a failed canary would be worse than a route that is late.
        """
        assert self._block.gateway
        route = http_route(
            self._name,
            gateway=self._block.gateway,
            gateway_namespace=self._block.gateway_namespace,
            weights=weights,
            settings=self._pod,
        )
        path = self._objects.put_route(route)
        try:
            self._objects.wait_route(
                path,
                self._block.gateway,
                self._block.gateway_namespace,
                self._block.route_accept_timeout_seconds,
                self._block.poll_interval_seconds,
            )
        except (ConfigurationError, RetryableError) as exc:
            if strict:
                raise
            self._log(f"going on without the Gateway's answer: {exc}")
