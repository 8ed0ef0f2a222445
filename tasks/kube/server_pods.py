"""Server pods as the rollout sees them: :class:`PodView` (ready, version, restarts, how it crashed) over the raw
pod JSON, and :class:`ProxyEndpoint`, predict requests through the API server's proxy of a Service."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import urllib3
from kubernetes import client as k8s

from tasks.kube import diagnosis
from tasks.kube.pod_settings import LABEL_MODEL_VERSION
from tasks.rollout.traffic import PREDICT_PATH, VERSION_HEADER, Answer, read_answer
from workloads.server.config import EXIT_ERROR, EXIT_LISTEN, EXIT_UNAVAILABLE, EXIT_USAGE

THROTTLE_BACKOFF_SECONDS = 0.05  # the first wait after the API server's own 429; doubles on each

SERVER_EXIT_MEANINGS: dict[int, str] = {
    **diagnosis.GENERIC_EXIT_MEANINGS,
    EXIT_ERROR: "the server failed unexpectedly",
    EXIT_USAGE: "bad arguments, or the model does not exist or cannot be served",
    EXIT_UNAVAILABLE: "MLflow or the artifact store could not be reached",
    EXIT_LISTEN: "it cannot listen on its port",
}


@dataclass(frozen=True)
class PodView:
    """The few things the rollout reads from a server pod (camelCase API JSON kept in ``raw`` for diagnosis)."""

    name: str
    version: str | None
    ready: bool
    deleting: bool
    restarts: int
    raw: dict[str, Any]

    @classmethod
    def of(cls, raw: dict[str, Any]) -> PodView:
        meta, status = raw.get("metadata") or {}, raw.get("status") or {}
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
        restarts = sum(int(c.get("restartCount") or 0) for c in status.get("containerStatuses") or [])
        return cls(
            name=str(meta.get("name")),
            version=(meta.get("labels") or {}).get(LABEL_MODEL_VERSION),
            ready=ready,
            deleting=bool(meta.get("deletionTimestamp")),
            restarts=restarts,
            raw=raw,
        )

    def crash(self, baseline: int = 0) -> tuple[int | None, str] | None:
        """How the server container ended, when it has ended, is backing off, or restarted more than
        ``baseline`` times: (exit code, words); None while it runs as before."""
        for status in (self.raw.get("status") or {}).get("containerStatuses") or []:
            state, last = status.get("state") or {}, status.get("lastState") or {}
            ended = state.get("terminated") or last.get("terminated")
            waiting = (state.get("waiting") or {}).get("reason")
            restarted = int(status.get("restartCount") or 0) > baseline
            if not (state.get("terminated") or waiting == "CrashLoopBackOff" or restarted):
                continue
            if not ended:
                return None, str(waiting or "restarted")
            code = int(ended.get("exitCode", -1))
            why = (
                "OOMKilled (memory limit)"
                if ended.get("reason") == "OOMKilled"
                else diagnosis.exit_text(code, SERVER_EXIT_MEANINGS)
            )
            backoff = ", now in CrashLoopBackOff" if waiting == "CrashLoopBackOff" else ""
            return code, f"{why}{backoff}"
        return None


class ProxyEndpoint:
    """Predict requests through the API server's proxy of a Service, with the client's own credentials.

    A busy API server answers ``429 TooManyRequests`` itself (API Priority and Fairness) before any pod sees the
    request; such an answer names no model version. It says nothing about either track, so it is sent again
    after a backoff (doubling from :data:`THROTTLE_BACKOFF_SECONDS`, never past the server's ``Retry-After``)
    until the request's timeout: the Service then balances it like any other, so the canary's share stays the
    replica ratio. A model server's own 429 carries its version and is its answer. The latency recorded is the
    answered attempt's, so throttling of the shared path does not count against either track.
    """

    def __init__(self, api: k8s.ApiClient, service_proxy: str, timeout: float) -> None:
        _, self._url, self._headers, _, _ = api.param_serialize(
            "POST",
            service_proxy + PREDICT_PATH,
            header_params={"Content-Type": "application/json"},
            auth_settings=["BearerToken"],
        )
        self._pool = api.rest_client.pool_manager
        self._timeout = timeout
        self.throttled = 0  # the API server's 429s this endpoint waited out

    def predict(self, body: bytes) -> Answer:
        deadline = time.perf_counter() + self._timeout
        backoff = THROTTLE_BACKOFF_SECONDS
        while True:
            started = time.perf_counter()
            try:
                response = self._pool.request(
                    "POST",
                    self._url,
                    body=body,
                    headers=self._headers,
                    timeout=urllib3.Timeout(total=max(0.001, deadline - started)),
                    retries=False,
                )
            except urllib3.exceptions.HTTPError:
                return Answer(None, None, time.perf_counter() - started)
            seconds = time.perf_counter() - started
            version = response.headers.get(VERSION_HEADER)
            if response.status != 429 or version is not None:
                return read_answer(response.status, version, response.data, seconds)
            wait = min(backoff, _retry_after(response.headers.get("Retry-After")))
            if time.perf_counter() + wait >= deadline:
                return read_answer(response.status, None, response.data, seconds)
            self.throttled += 1
            time.sleep(wait)
            backoff *= 2

    def close(self) -> None:
        """Connections stay in the client's pool."""


def _retry_after(value: str | None) -> float:
    """Seconds from a ``Retry-After`` header (delay-seconds); 1 when absent or unreadable, as the server's default."""
    try:
        return max(0.0, float(value)) if value is not None else 1.0
    except ValueError:
        return 1.0
