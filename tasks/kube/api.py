"""Talking to the Kubernetes API, in one place: a client from credentials, one mapping of refusals to gpuflow
errors, "not found" as None, and raw JSON requests.

The Job runner (:mod:`tasks.kube.jobs`, asynchronous: prefect-kubernetes' ``credentials.get_client`` and
``KubernetesJob``) and cluster serving (:mod:`tasks.kube.cluster_serving`, synchronous: :func:`api_client` and
:class:`RawApi`) both read statuses through :func:`check_status` and map refusals with :func:`api_error`: a 404
means "not there" (the callers' None), 401/403 a missing Role, 400/409/422 a configuration error, anything else
(5xx, 429, an API that does not answer) a ``ServiceUnavailable`` that may pass.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import TYPE_CHECKING, Any

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from tasks.core.errors import ConfigurationError, ServiceUnavailable

if TYPE_CHECKING:
    from prefect_kubernetes.credentials import KubernetesCredentials

API_TIMEOUT_SECONDS = 15.0
ROUTE_GROUP, ROUTE_VERSION = "gateway.networking.k8s.io", "v1"
MERGE_PATCH = "application/merge-patch+json"


def api_client(credentials: KubernetesCredentials) -> k8s.ApiClient:
    """A synchronous client from a prefect-kubernetes credentials block: its kubeconfig when it holds one, else
    the in-cluster service account, else KUBECONFIG / ~/.kube/config (read now, not at import)."""
    configuration = k8s.Configuration()
    cluster = credentials.cluster_config
    if cluster is not None:
        k8s_config.load_kube_config_from_dict(
            cluster.config, context=cluster.context_name, client_configuration=configuration
        )
    else:
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)
        except k8s_config.ConfigException:
            path = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
            k8s_config.load_kube_config(config_file=path, client_configuration=configuration)
    return k8s.ApiClient(configuration)


def api_error(exc: Any, what: str) -> Exception:
    """An API refusal (an ``ApiException`` of either client) as a gpuflow error: permission, namespace or schema
    problems are configuration errors, the rest a service that may come back."""
    message = exc.reason or ""
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        message = json.loads(exc.body or "").get("message") or message
    if exc.status in (401, 403):
        return ConfigurationError(
            f"Kubernetes refused to {what}: {exc.status} {message}; the flow's service account needs the Role "
            "from `gpuflow manifests rbac`"
        )
    if exc.status in (400, 404, 409, 422):
        return ConfigurationError(f"Kubernetes refused to {what}: {exc.status} {message}")
    return ServiceUnavailable(f"Kubernetes API failed to {what}: {exc.status} {message}")


def check_status(status: int, body: bytes | str, reason: str | None, what: str) -> bool:
    """True for a 2xx answer, False for a 404 (the object is not there); any other status raises
    :func:`api_error`'s gpuflow error, naming ``what`` was refused and the server's message."""
    if 200 <= status < 300:
        return True
    if status == 404:
        return False
    error = ApiException(status=status, reason=reason)
    error.body = body.decode(errors="replace") if isinstance(body, bytes) else body
    raise api_error(error, what)


class RawApi:
    """Raw JSON requests in one namespace over the synchronous client (its auth, TLS and connection pool): the
    objects exactly as the server sends them, which is what :mod:`tasks.kube.diagnosis` reads."""

    def __init__(self, api: k8s.ApiClient, namespace: str) -> None:
        self.api = api
        self.namespace = namespace

    def path(self, plural: str, name: str | None = None, sub: str | None = None) -> str:
        base = {
            "deployments": "/apis/apps/v1",
            "httproutes": f"/apis/{ROUTE_GROUP}/{ROUTE_VERSION}",
        }.get(plural, "/api/v1")
        path = f"{base}/namespaces/{self.namespace}/{plural}"
        return path + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")

    def request(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float = API_TIMEOUT_SECONDS,
        raw_errors: bool = False,
    ) -> bytes:
        """One API request. A refusal is a gpuflow error (:func:`api_error`: the server's message, and
        the Role to grant on a 403) and an unreachable API a ``ServiceUnavailable``; with ``raw_errors`` (or a
        404, which callers read as "not there") the :class:`ApiException` itself, for callers that handle it."""
        headers = {"Accept": "application/json", "Content-Type": content_type} if body is not None else {}
        request = self.api.param_serialize(
            method, path, query_params=query, header_params=headers, body=body, auth_settings=["BearerToken"]
        )
        try:
            response = self.api.call_api(*request, _request_timeout=timeout)
            data = bytes(response.read() or b"")
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            if raw_errors:
                raise
            raise ServiceUnavailable(f"the Kubernetes API did not answer {method} {path}: {exc}") from exc
        if not 200 <= response.status < 300:
            error = ApiException(status=response.status, reason=f"{method} {path}")
            error.body = data.decode(errors="replace")
            if raw_errors or response.status == 404:
                raise error
            check_status(response.status, error.body, f"{method} {path}", f"{method} {path}")
        return data

    def get(self, path: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = json.loads(self.request("GET", path))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return found
