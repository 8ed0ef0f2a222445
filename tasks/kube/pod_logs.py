"""Follow one pod's log to its end, each line once, across dropped connections.

The API server's ``follow`` stream ends when the container ends, but also when a connection drops or a
proxy times out. Lines are counted, so a stream opened again skips what was already passed on; the last
read after the container ended (not following) picks up anything written after the stream broke, and a
last line without a newline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any, cast

import aiohttp
from kubernetes_asyncio.client import CoreV1Api

from tasks.core.types import LogFn
from tasks.kube.pod_status import last_termination, pod_ended

REQUEST_TIMEOUT = 30.0  # seconds for a request that is not a stream


def raw(response: object) -> aiohttp.ClientResponse:
    """What a kubernetes_asyncio call made with ``_preload_content=False`` really returns."""
    return cast(aiohttp.ClientResponse, response)


class PodLogFollower:
    """Pass every line of ``container`` in ``pod`` to ``emit`` as it is written, until the container ended.

    ``retry_seconds`` is the pause before a stream is opened again (the container not started yet, or a
    connection lost). A 401/403 (the account may not read logs) ends the following and is told to ``refused``.
    """

    def __init__(
        self,
        core: CoreV1Api,
        namespace: str,
        pod: str,
        container: str,
        emit: LogFn,
        *,
        retry_seconds: float = 1.0,
        refused: LogFn | None = None,
    ) -> None:
        self.core, self.namespace, self.pod, self.container = core, namespace, pod, container
        self.emit = emit
        self.retry_seconds = retry_seconds
        self.refused = refused  # told once when the API refuses the log (RBAC); the log is then given up
        self.delivered = 0

    async def run(self) -> None:
        while True:
            try:
                gone = await self._read(follow=True)
            except (aiohttp.ClientError, TimeoutError):
                gone = False  # connection lost: look at the pod, then read again
            if gone:
                return
            state = await self._pod_state()
            if state != "running":
                if state == "ended":
                    await self._read(follow=False)
                return
            await asyncio.sleep(self.retry_seconds)

    async def _pod_state(self) -> str:
        """``gone``, ``ended`` (its container terminated) or ``running`` (or not started yet)."""
        try:
            response = raw(
                await self.core.read_namespaced_pod(
                    self.pod, self.namespace, _preload_content=False, _request_timeout=REQUEST_TIMEOUT
                )
            )
        except (aiohttp.ClientError, TimeoutError):
            return "running"
        try:
            if response.status == 404:
                return "gone"
            if response.status >= 400:
                return "running"
            pod: dict[str, Any] = json.loads(await response.read())
        finally:
            response.release()
        ended = last_termination(pod) is not None or pod_ended(pod)
        return "ended" if ended else "running"  # a terminating pod's log goes on until its container ends

    async def _read(self, *, follow: bool) -> bool:
        """Read the log from its start, passing on the lines after those already delivered; True: pod gone."""
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None) if follow else REQUEST_TIMEOUT
        response = raw(
            await self.core.read_namespaced_pod_log(
                self.pod,
                self.namespace,
                container=self.container,
                follow=follow,
                _preload_content=False,
                _request_timeout=timeout,
            )
        )
        try:
            if response.status == 404:
                return True
            if response.status in (401, 403):  # no Role allows it: waiting cannot help, and the user must know
                if self.refused is not None:
                    message = await response.text()
                    with contextlib.suppress(ValueError, TypeError, AttributeError):
                        message = json.loads(message).get("message") or message
                    self.refused(
                        f"cannot stream pod {self.pod}'s log: {response.status} {message}; the flow's service "
                        "account needs the Role from `gpuflow manifests rbac`"
                    )
                return True
            if response.status >= 400:  # e.g. 400 "container is waiting to start"
                if follow:
                    await asyncio.sleep(self.retry_seconds)
                return False
            seen, pending = 0, b""
            async for chunk in response.content.iter_any():
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for data in lines:
                    seen += 1
                    self._deliver(seen, data)
            if pending and not follow:  # the container ended: its last line may lack a newline
                self._deliver(seen + 1, pending)
            return False
        finally:
            response.release()

    def _deliver(self, number: int, raw: bytes) -> None:
        if number > self.delivered:
            self.delivered = number
            self.emit(raw.decode("utf-8", errors="replace").rstrip("\r"))
