"""One model server's objects on the cluster, over :class:`tasks.kube.api.RawApi`: its pods by track, their
/metrics and logs through the API server's pod proxy, its Deployments, Services and HTTPRoute, and what this
rollout created (so a failed first rollout can take it away again)."""

from __future__ import annotations

import json
import time
from typing import Any

import urllib3
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from tasks.core.errors import ConfigurationError, RetryableError
from tasks.core.types import Track
from tasks.kube.api import MERGE_PATCH, RawApi
from tasks.kube.pod_settings import LABEL_TRACK, Manifest
from tasks.kube.routes import route_status
from tasks.kube.server_manifests import SERVER_CONTAINER, SERVER_PORT, server_selector, track_name
from tasks.kube.server_pods import PodView, ProxyEndpoint
from tasks.rollout.serving import ServerUnreachable
from tasks.rollout.traffic import EndpointFactory

SCRAPE_TIMEOUT_SECONDS = 5.0
LOG_TAIL_LINES = 30


class ServerObjects:
    """The objects of server ``name`` in one namespace; ``created`` lists (plural, name) this rollout created."""

    def __init__(self, api: k8s.ApiClient, namespace: str, name: str) -> None:
        self.api = api
        self.raw = RawApi(api, namespace)
        self.namespace = namespace
        self.name = name
        self.created: list[tuple[str, str]] = []  # (kind, name) this rollout created, in order

    def track_name(self, role: Track) -> str:
        return track_name(self.name, role)

    # -- pods -------------------------------------------------------------------------------------------

    def pods(self, role: Track) -> list[PodView]:
        selector = ",".join(f"{k}={v}" for k, v in {**server_selector(self.name), LABEL_TRACK: role}.items())
        listed = json.loads(self.raw.request("GET", self.raw.path("pods"), query=[("labelSelector", selector)]))
        return sorted((PodView.of(item) for item in listed.get("items") or []), key=lambda p: p.name)

    def scrape(self, role: Track, pod: PodView) -> str:
        """The pod's /metrics through the pod proxy; an unreachable pod is a ``ServerUnreachable``."""
        path = self.raw.path("pods", f"{pod.name}:{SERVER_PORT}", "proxy") + "/metrics"
        try:
            data = self.raw.request("GET", path, timeout=SCRAPE_TIMEOUT_SECONDS, raw_errors=True)
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise ServerUnreachable(f"{role} pod {pod.name}: GET {path} failed: {exc}") from exc
        return data.decode("utf-8", errors="replace")

    def log_tail(self, pod: PodView) -> list[str]:
        """The server container's last lines (the previous container's after a restart); [] if unreadable."""
        for previous in ("true", "false") if pod.restarts else ("false",):
            query = [("container", SERVER_CONTAINER), ("tailLines", str(LOG_TAIL_LINES)), ("previous", previous)]
            try:
                return (
                    self.raw.request("GET", self.raw.path("pods", pod.name, "log"), query=query, raw_errors=True)
                    .decode("utf-8", errors="replace")
                    .splitlines()
                )
            except (ApiException, urllib3.exceptions.HTTPError, OSError):
                continue
        return []

    def proxy_factory(self, service: str, timeout: float) -> EndpointFactory:
        """Predict requests to ``service`` through the API server's service proxy."""
        path = self.raw.path("services", f"{service}:http", "proxy")
        return lambda: ProxyEndpoint(self.api, path, timeout)

    # -- Deployments and Services -----------------------------------------------------------------------

    def read_deployment(self, name: str) -> dict[str, Any] | None:
        return self.raw.get(self.raw.path("deployments", name))

    def patch_deployment(self, name: str, patch: dict[str, Any]) -> None:
        self.raw.request("PATCH", self.raw.path("deployments", name), body=patch, content_type=MERGE_PATCH)

    def replicas(self, role: Track) -> int:
        found = self.read_deployment(self.track_name(role)) or {}
        return int((found.get("spec") or {}).get("replicas") or 0)

    def create(self, manifest: Manifest) -> None:
        plural, name = manifest["kind"].lower() + "s", manifest["metadata"]["name"]
        self.raw.request("POST", self.raw.path(plural), body=manifest)
        self.created.append((plural, name))

    def ensure(self, manifest: Manifest) -> None:
        """Create a Service unless it exists (Services outlive rollouts; their selectors never change)."""
        if self.raw.get(self.raw.path("services", manifest["metadata"]["name"])) is None:
            self.create(manifest)

    def delete(self, plural: str, name: str) -> None:
        """Delete one object (a Deployment's pods follow in the background); one already gone is fine."""
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        try:
            self.raw.request("DELETE", self.raw.path(plural, name), body=body)
        except ApiException as exc:
            if exc.status != 404:
                raise
        self.created = [item for item in self.created if item != (plural, name)]

    # -- the HTTPRoute ----------------------------------------------------------------------------------

    def put_route(self, route: Manifest) -> str:
        """Create the route, or patch its spec (the weights) if it exists; returns its path."""
        path = self.raw.path("httproutes", self.name)
        if self.raw.get(path) is None:
            self.raw.request("POST", self.raw.path("httproutes"), body=route)
            self.created.append(("httproutes", self.name))
        else:
            self.raw.request("PATCH", path, body={"spec": route["spec"]}, content_type=MERGE_PATCH)
        return path

    def wait_route(self, path: str, gateway: str, gateway_namespace: str | None, timeout: float, poll: float) -> None:
        """Until the Gateway reports Accepted at the route's current generation (:mod:`tasks.kube.routes`); a
        refusal is a ``ConfigurationError``, no answer in time a ``RetryableError``."""
        deadline = time.monotonic() + timeout
        while True:
            route = self.raw.get(path) or {}
            status = route_status(route, gateway, gateway_namespace)
            what = f"HTTPRoute {self.namespace}/{self.name}"
            if status.state == "accepted":
                return
            if status.state == "rejected":
                raise ConfigurationError(f"{what}: {status.detail}")
            now = time.monotonic()
            if now > deadline:
                raise RetryableError(f"{what} was not accepted within {timeout:g}s: {status.detail}")
            time.sleep(min(poll, 0.2, max(0.05, deadline - now)))
