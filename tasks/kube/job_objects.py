"""One training's Job and headless Service on the cluster, over kubernetes_asyncio: create (replacing a finished
leftover of the same training id), read, list its pods and events, delete and wait until they are gone.

The Job is created through prefect-kubernetes (``KubernetesJob(...).trigger()``, awaited as its async
implementation ``atrigger``); everything else reads raw JSON (``_preload_content=False``), the objects exactly
as the server sends them, which is what :mod:`tasks.kube.pod_status` and :mod:`tasks.kube.diagnosis` read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any, cast

import aiohttp
from kubernetes_asyncio.client import BatchV1Api, CoreV1Api, V1DeleteOptions
from kubernetes_asyncio.client.exceptions import ApiException
from prefect_kubernetes.credentials import KubernetesCredentials
from prefect_kubernetes.jobs import KubernetesJob

from tasks.core.errors import RetryableWorkloadFailure, ServiceUnavailable
from tasks.core.types import LogFn
from tasks.kube.api import api_error, check_status
from tasks.kube.job_manifests import JobSettings
from tasks.kube.pod_logs import REQUEST_TIMEOUT, raw
from tasks.kube.pod_settings import LABEL_JOB, Manifest
from tasks.kube.pod_status import job_finished, pod_name

DELETE_WAIT_SECONDS = 60.0  # for the Job and its pods to be gone


class JobObjects:
    """The Job (and Service) of one workload; ``created`` says whether a Job of ours may exist (clean up then)."""

    def __init__(
        self,
        credentials: KubernetesCredentials,
        workload: str,
        settings: JobSettings,
        manifests: list[Manifest],
        note: LogFn,
        poll: float,
    ) -> None:
        self.credentials, self.workload, self.settings, self.note, self.poll = (
            credentials,
            workload,
            settings,
            note,
            poll,
        )
        self.job_manifest = next(m for m in manifests if m["kind"] == "Job")
        self.service_manifest = next((m for m in manifests if m["kind"] == "Service"), None)
        self.name: str = self.job_manifest["metadata"]["name"]
        self.namespace: str = self.job_manifest["metadata"]["namespace"]
        self.uid: str | None = None
        self.created = False
        self.batch: BatchV1Api
        self.core: CoreV1Api

    def attach(self, batch: BatchV1Api, core: CoreV1Api) -> None:
        """The clients of the follower's event loop (``credentials.get_client``)."""
        self.batch, self.core = batch, core

    # --- create -----------------------------------------------------------------------------------------------

    async def create(self) -> None:
        job = KubernetesJob(
            v1_job=self.job_manifest,
            credentials=self.credentials,
            namespace=self.namespace,
            delete_after_completion=False,
        )
        what = f"create job {self.name} in namespace {self.namespace}"
        self.created = True  # from here on a Job of ours may exist, even if the request fails half-way
        try:
            try:
                await job.atrigger()
            except ApiException as exc:
                if exc.status != 409:
                    self.created = False
                    raise
                await self._replace_leftover()
                self.created = True
                await job.atrigger()
        except ApiException as exc:
            raise api_error(exc, what) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ServiceUnavailable(f"could not {what}: the Kubernetes API did not answer: {exc}") from exc
        found = await self.read_job()
        if found is None:
            raise RetryableWorkloadFailure(
                self.workload, None, [], reason=f"job {self.name} vanished right after creation"
            )
        self.uid = found["metadata"].get("uid")
        if self.service_manifest is not None:
            await self._create_service()
        pod = self.settings.pod
        gpus = f"{pod.gpus} {pod.gpu_resource} per pod" if pod.gpus else "no GPU"
        self.note(
            f"created job {self.name} in namespace {self.namespace}: {self.settings.nodes} pod(s), image {pod.image}, "
            f"{gpus}, deadline {self.settings.active_deadline_seconds}s; "
            f"see it with: kubectl -n {self.namespace} get pods -l {LABEL_JOB}={self.name}"
        )

    async def _replace_leftover(self) -> None:
        """A Job of the same name exists: the same training id ran before. Finished: replace it; running: refuse."""
        old = await self.read_job()
        if old is not None and job_finished(old) is None:
            self.created = False
            created = old["metadata"].get("creationTimestamp", "?")
            raise RetryableWorkloadFailure(
                self.workload,
                None,
                [],
                reason=(
                    f"cannot start: job {self.name} for this training id is already running in namespace "
                    f"{self.namespace} (created {created}); wait for it, or delete it with "
                    f"kubectl -n {self.namespace} delete job {self.name}"
                ),
            )
        if old is not None:
            self.uid = old["metadata"].get("uid")
            await self.delete(f"left finished ({job_finished(old)}) by an earlier attempt of this training")
            self.uid = None

    async def _create_service(self) -> None:
        """The headless Service torchrun's rendezvous resolves, owned by the Job so it goes with it."""
        assert self.service_manifest is not None
        body = json.loads(json.dumps(self.service_manifest))
        body["metadata"]["ownerReferences"] = [
            {"apiVersion": "batch/v1", "kind": "Job", "name": self.name, "uid": self.uid}
        ]
        for attempt in (1, 2):
            try:
                await self.core.create_namespaced_service(self.namespace, body, _request_timeout=REQUEST_TIMEOUT)
                return
            except ApiException as exc:
                if exc.status == 409 and attempt == 1:  # left by an earlier Job of this name
                    await self.delete_service()
                    continue
                raise api_error(exc, f"create headless service {self.name}") from None

    # --- read -------------------------------------------------------------------------------------------------

    async def read_job(self) -> dict[str, Any] | None:
        return await _get_json(
            self.batch.read_namespaced_job(self.name, self.namespace, **_raw()), f"read job {self.name}"
        )

    async def list_pods(self) -> list[dict[str, Any]]:
        """The Job's pods (by its label, and owned by this Job once its uid is known)."""
        found = await _get_json(
            self.core.list_namespaced_pod(self.namespace, label_selector=f"{LABEL_JOB}={self.name}", **_raw()),
            f"list the pods of job {self.name}",
        )
        return [p for p in (found or {}).get("items") or [] if self._owned(p)]

    async def list_events(self) -> list[dict[str, Any]]:
        """The events about the Job (why the cluster refuses to create its pods)."""
        events = await _get_json(
            self.core.list_namespaced_event(
                self.namespace, field_selector=f"involvedObject.name={self.name}", **_raw()
            ),
            f"list the events of job {self.name}",
        )
        return list((events or {}).get("items") or [])

    def _owned(self, pod: dict[str, Any]) -> bool:
        owners = pod.get("metadata", {}).get("ownerReferences") or []
        return not owners or self.uid is None or any(o.get("uid") == self.uid for o in owners)

    # --- delete -----------------------------------------------------------------------------------------------

    async def delete(self, why: str) -> None:
        """Delete the Job with its pods (Foreground) and the Service, and wait until they are gone."""
        await self.delete_service()
        try:
            await self.batch.delete_namespaced_job(
                self.name,
                self.namespace,
                body=V1DeleteOptions(propagation_policy="Foreground"),
                propagation_policy="Foreground",
                _request_timeout=REQUEST_TIMEOUT,
            )
        except ApiException as exc:
            if exc.status != 404:
                self.note(f"could not delete job {self.name}: {exc.status} {exc.reason}")
                return
        deadline = time.monotonic() + DELETE_WAIT_SECONDS
        left: list[str] = []
        while time.monotonic() < deadline:
            job = await self.read_job()
            left = [pod_name(p) for p in await self.list_pods()]
            if job is None and not left:
                self.created = False
                self.note(f"deleted job {self.name} and its pods ({why})")
                return
            await asyncio.sleep(min(self.poll, 0.5))
        self.note(
            f"job {self.name} ({why}) was deleted but is not gone after {DELETE_WAIT_SECONDS:g}s; pods left: {left}"
        )

    async def delete_service(self) -> None:
        if self.service_manifest is None:
            return
        with contextlib.suppress(ApiException):
            await self.core.delete_namespaced_service(self.name, self.namespace, _request_timeout=REQUEST_TIMEOUT)


async def _get_json(call: Any, what: str) -> dict[str, Any] | None:
    """The JSON body of a raw (``_preload_content=False``) GET; None on 404, refusals as :func:`check_status`."""
    response = raw(await call)
    try:
        body = await response.read()
        if not check_status(response.status, body, response.reason, what):
            return None
        return cast(dict[str, Any], json.loads(body))
    finally:
        response.release()


def _raw() -> dict[str, Any]:
    """Read raw JSON: API objects as the server sends them, as :mod:`tasks.kube.pod_status` expects."""
    return {"_preload_content": False, "_request_timeout": REQUEST_TIMEOUT}
