"""Run a workload as a Kubernetes Job, follow it to its end, and tell the user exactly what happened.

The Job is created through prefect-kubernetes (``KubernetesJob(...).trigger()``, awaited as its async
implementation ``atrigger``). Its ``wait_for_completion`` is not used: it reads one pod's log to the end
before it looks at the next pod or at the Job again, so it cannot stream the pods of an Indexed Job side by
side, notice while a pod is pending that its image cannot be pulled, or say why a Job failed beyond the
condition's reason. The follower here uses the same credentials' clients (``credentials.get_client``,
kubernetes_asyncio) in its own thread and event loop: it reads the Job and its pods every
``poll_interval_seconds``, follows every pod's log concurrently (:mod:`tasks.kube.pod_logs`), prints one
line per change of a pod's state, and turns a failure into a sentence (:mod:`tasks.kube.diagnosis`).

Nothing is left behind: the Job (and with it its pods, ``propagationPolicy: Foreground``, waited for) is
deleted on success, on any exception in the caller's thread (KeyboardInterrupt, Prefect's cancellation) and
when it failed fast (an image that cannot be pulled, a missing Secret: the pod would otherwise hold its GPU
request until the deadline); a Job that failed is kept for inspection unless ``delete_failed_jobs``, until
its ``ttlSecondsAfterFinished``. The headless Service of a distributed training is owner-referenced to the
Job and deleted with it in every case.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import aiohttp
from kubernetes_asyncio.client import BatchV1Api, CoreV1Api, V1DeleteOptions
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config import ConfigException
from prefect_kubernetes.credentials import KubernetesCredentials
from prefect_kubernetes.jobs import KubernetesJob

from tasks.core.errors import ConfigurationError, RetryableWorkloadFailure, ServiceUnavailable
from tasks.core.types import LogFn
from tasks.core.workload import WorkloadResult, WorkloadSpec
from tasks.kube.api import api_error, check_status
from tasks.kube.diagnosis import (
    Failure,
    creation_refusal,
    exit_meanings,
    job_failure,
    job_finished,
    pod_ended,
    pod_index,
    pod_name,
    progress,
    same_refusal,
    start_problem,
    startup_timings,
    unschedulable_message,
    workload_error,
)
from tasks.kube.manifests import LABEL_JOB, JobSettings, Manifest, training_manifests
from tasks.kube.pod_logs import REQUEST_TIMEOUT, PodLogFollower, raw

TAIL_LINES = 20
LOG_DRAIN_SECONDS = 15.0  # after the Job ended, for the last lines to arrive
DELETE_WAIT_SECONDS = 60.0  # for the Job and its pods to be gone
API_OUTAGE_SECONDS = 60.0  # the API unreachable this long while following: give up (and try to clean up)
DEADLINE_GRACE_SECONDS = 120.0  # a Job still not ended this long after its deadline: stop waiting for it
NOTE = "kubernetes: "


class KubeTarget(Protocol):
    """What the runner needs of its block (``blocks.kubernetes.KubernetesGPUJob``)."""

    credentials: KubernetesCredentials
    delete_failed_jobs: bool
    image_pull_grace_seconds: float
    unschedulable_timeout_seconds: float | None
    poll_interval_seconds: float

    def job_settings(self) -> JobSettings: ...


def run_job(target: KubeTarget, spec: WorkloadSpec, log: LogFn) -> WorkloadResult:
    """Create the Job (and headless Service) for ``spec``, stream its pods' output to ``log``, wait for the end.

    Lines of an Indexed Job's pods are prefixed with the pod's index (``[1] ...``); lines that start with
    ``kubernetes:`` are the runner's own notes. Returns with ``backend="kubernetes"`` and
    ``timings`` {``k8s_queue_seconds``, ``k8s_start_seconds``} when the Job completed.

    Raises:
        PermanentWorkloadFailure / RetryableWorkloadFailure: the Job failed (both are ``WorkloadFailed``:
            the reason, exit code and last lines inside; permanent ones must not be retried).
        ConfigurationError: the settings or the cluster refused the manifests (RBAC, namespace, schema).
        ServiceUnavailable: the Kubernetes API could not be reached.
    """
    settings = target.job_settings()
    follower = JobFollower(target, spec, settings, training_manifests(spec, settings))
    events: queue.Queue[tuple[str, Any]] = queue.Queue()
    thread = threading.Thread(target=follower.run, args=(events,), name=f"{follower.name}-follow", daemon=True)
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    thread.start()
    try:
        outcome = _relay(events, tail, log)
    except BaseException:
        follower.cancel()
        thread.join(timeout=DELETE_WAIT_SECONDS + 2 * REQUEST_TIMEOUT)
        with contextlib.suppress(Exception):
            _relay(events, tail, log, wait=0.0)
        raise
    thread.join(timeout=REQUEST_TIMEOUT)
    if isinstance(outcome, Completed):
        return WorkloadResult(spec.name, 0, outcome.seconds, list(tail), backend="kubernetes", timings=outcome.timings)
    if isinstance(outcome, Failure):
        raise workload_error(spec.name, outcome, list(tail))
    raise outcome


@dataclass(frozen=True)
class Completed:
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)


def _relay(events: queue.Queue[tuple[str, Any]], tail: deque[str], log: LogFn, wait: float | None = None) -> Any:
    """Pass lines on in the caller's thread (where Prefect's logger and cancellation live) until the end."""
    deadline = None if wait is None else time.monotonic() + wait
    while True:
        try:
            kind, payload = events.get(timeout=0.2)
        except queue.Empty:
            if deadline is not None and time.monotonic() >= deadline:
                return None
            continue
        if kind == "end":
            return payload
        if kind == "line":
            tail.append(payload)
        log(payload)


class JobFollower:
    """Creates one training's Job and follows it; runs in its own thread with its own event loop."""

    def __init__(self, target: KubeTarget, spec: WorkloadSpec, settings: JobSettings, manifests: list[Manifest]):
        self.target, self.spec, self.settings = target, spec, settings
        self.job_manifest = next(m for m in manifests if m["kind"] == "Job")
        self.service_manifest = next((m for m in manifests if m["kind"] == "Service"), None)
        self.name: str = self.job_manifest["metadata"]["name"]
        self.namespace: str = self.job_manifest["metadata"]["namespace"]
        self.container: str = self.job_manifest["spec"]["template"]["spec"]["containers"][0]["name"]
        self.poll = float(target.poll_interval_seconds)
        self.uid: str | None = None
        self.created = False  # a Job of ours may exist: clean up on the way out
        self.pods: dict[str, dict[str, Any]] = {}  # every pod seen, in its last seen state (deleted ones too)
        self.shown: dict[str, str] = {}  # last progress line shown per pod
        self.streams: dict[str, asyncio.Task[None]] = {}
        self.problem_since: dict[str, float] = {}
        self.unschedulable_since: dict[str, float] = {}
        self.refused: str | None = None  # why the cluster refuses to create the Job's pods, while it does
        self.refused_since: float | None = None
        self.events_readable = True
        self.timings: dict[str, float] = {}
        self._events: queue.Queue[tuple[str, Any]] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        self._cancelled = threading.Event()
        self.batch: BatchV1Api
        self.core: CoreV1Api

    # --- thread side ------------------------------------------------------------------------------------------

    def run(self, events: queue.Queue[tuple[str, Any]]) -> None:
        self._events = events
        outcome: Any
        try:
            outcome = asyncio.run(self._main())
        except BaseException as exc:  # handed to the caller's thread, which raises it
            outcome = exc
        events.put(("end", outcome))

    def cancel(self) -> None:
        """Stop following and delete the Job (thread-safe; the caller then joins the thread)."""
        self._cancelled.set()
        loop, task = self._loop, self._task
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed: nothing left to stop
                loop.call_soon_threadsafe(task.cancel)

    def note(self, text: str) -> None:
        assert self._events is not None
        self._events.put(("note", NOTE + text))

    def line(self, text: str) -> None:
        assert self._events is not None
        self._events.put(("line", text))

    # --- the run ----------------------------------------------------------------------------------------------

    async def _main(self) -> Completed | Failure:
        self._loop, self._task = asyncio.get_running_loop(), asyncio.current_task()
        try:
            return await self._with_clients()
        except ConfigException as exc:
            raise ConfigurationError(
                f"no usable Kubernetes credentials ({exc}): set the block's credentials, or KUBECONFIG / "
                "~/.kube/config, or run inside the cluster"
            ) from exc

    async def _with_clients(self) -> Completed | Failure:
        credentials = self.target.credentials
        async with credentials.get_client("batch") as batch, credentials.get_client("core") as core:
            self.batch, self.core = cast(BatchV1Api, batch), cast(CoreV1Api, core)
            try:
                if self._cancelled.is_set():
                    raise asyncio.CancelledError
                return await self._run()
            except BaseException as exc:
                task = asyncio.current_task()
                if task is not None:
                    task.uncancel()  # so the clean-up's own timeouts work
                if self.created:
                    why = "cancelled" if isinstance(exc, asyncio.CancelledError) else f"{type(exc).__name__}"
                    await self._stop_streams()
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(self._delete(why), DELETE_WAIT_SECONDS + REQUEST_TIMEOUT)
                raise

    async def _run(self) -> Completed | Failure:
        started = time.monotonic()
        await self._create()
        outcome, still_active = await self._follow()
        await self._drain_streams()
        if isinstance(outcome, Completed):
            await self._delete("succeeded")
            return Completed(time.monotonic() - started, dict(self.timings))
        self.note(f"job {self.name} failed: {outcome.reason}")
        if still_active:
            await self._delete("still active: it would have held its GPU request until its deadline")
        elif self.target.delete_failed_jobs:
            await self._delete("failed; delete_failed_jobs is set")
        else:
            await self._delete_service()
            ttl = self.settings.ttl_seconds_after_finished
            self.note(
                f"kept failed job {self.name} for inspection (Kubernetes deletes it {ttl}s after it finished): "
                f"kubectl -n {self.namespace} describe job {self.name}"
            )
        return outcome

    # --- create -----------------------------------------------------------------------------------------------

    async def _create(self) -> None:
        job = KubernetesJob(
            v1_job=self.job_manifest,
            credentials=self.target.credentials,
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
        found = await self._get_json(
            self.batch.read_namespaced_job(self.name, self.namespace, **_raw()), f"read job {self.name}"
        )
        if found is None:
            raise RetryableWorkloadFailure(
                self.spec.name, None, [], reason=f"job {self.name} vanished right after creation"
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
        old = await self._get_json(
            self.batch.read_namespaced_job(self.name, self.namespace, **_raw()), f"read job {self.name}"
        )
        if old is not None and job_finished(old) is None:
            self.created = False
            created = old["metadata"].get("creationTimestamp", "?")
            raise RetryableWorkloadFailure(
                self.spec.name,
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
            await self._delete(f"left finished ({job_finished(old)}) by an earlier attempt of this training")
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
                    await self._delete_service()
                    continue
                raise api_error(exc, f"create headless service {self.name}") from None

    # --- follow -----------------------------------------------------------------------------------------------

    async def _follow(self) -> tuple[Completed | Failure, bool]:
        """Poll until the Job completes or fails, or a pod fails in a way waiting cannot fix (then True: the Job is
        still active and must be stopped)."""
        outage_since: float | None = None
        meanings = exit_meanings(self.spec.module)
        deadline = self.settings.active_deadline_seconds
        give_up = time.monotonic() + deadline + DEADLINE_GRACE_SECONDS
        while True:
            if time.monotonic() > give_up:
                reason = (
                    f"job {self.name} had not ended {DEADLINE_GRACE_SECONDS:g}s after its deadline of {deadline}s "
                    "(activeDeadlineSeconds): the cluster's Job controller did not end it"
                )
                return Failure(reason, None, False), True
            try:
                job = await self._get_json(
                    self.batch.read_namespaced_job(self.name, self.namespace, **_raw()), f"read job {self.name}"
                )
                pods = await self._list_pods()
            except (aiohttp.ClientError, TimeoutError, ServiceUnavailable) as exc:
                now = time.monotonic()
                if outage_since is None:
                    outage_since = now
                    self.note(f"the Kubernetes API did not answer ({exc}); trying again")
                elif now - outage_since > API_OUTAGE_SECONDS:
                    raise ServiceUnavailable(
                        f"the Kubernetes API did not answer for {API_OUTAGE_SECONDS:g}s while following job "
                        f"{self.name}: {exc}"
                    ) from exc
                await asyncio.sleep(self.poll)
                continue
            outage_since = None
            if job is None:
                self.created = False
                return Failure(f"job {self.name} was deleted while it ran, not by gpuflow", None, False), False
            self._observe(pods)
            if not self.timings.keys() >= {"k8s_queue_seconds", "k8s_start_seconds"}:
                self.timings = {**startup_timings(job, self.pods.values()), **self.timings}
            problem = self._start_problem() or await self._creation_problem(pods)
            if problem is not None:
                return problem, True
            finished = job_finished(job)
            if finished == "Complete":
                self.note(f"job {self.name} completed")
                return Completed(0.0), False
            if finished == "Failed":
                failure = job_failure(job, self.pods.values(), meanings, self.settings.permanent_exit_codes)
                if self.refused is not None and not self.pods:
                    failure = Failure(f"{self.refused}; {failure.reason}", None, True)
                return failure, False
            await asyncio.sleep(self.poll)

    async def _list_pods(self) -> list[dict[str, Any]]:
        found = await self._get_json(
            self.core.list_namespaced_pod(self.namespace, label_selector=f"{LABEL_JOB}={self.name}", **_raw()),
            f"list the pods of job {self.name}",
        )
        return [p for p in (found or {}).get("items") or [] if self._owned(p)]

    def _owned(self, pod: dict[str, Any]) -> bool:
        owners = pod.get("metadata", {}).get("ownerReferences") or []
        return not owners or self.uid is None or any(o.get("uid") == self.uid for o in owners)

    def _observe(self, pods: Iterable[dict[str, Any]]) -> None:
        """Remember each pod, show what changed, start following the log of each pod whose container started."""
        for pod in pods:
            name = pod_name(pod)
            self.pods[name] = pod
            text = progress(pod)
            if self.shown.get(name) != text:
                self.shown[name] = text
                self.note(text)
            if name not in self.streams and _container_started(pod):
                prefix = f"[{pod_index(pod) or '?'}] " if self.settings.nodes > 1 else ""
                emit = self._prefixed(prefix) if prefix else self.line
                follower = PodLogFollower(
                    self.core, self.namespace, name, self.container, emit, retry_seconds=min(self.poll, 1.0)
                )
                self.streams[name] = asyncio.create_task(follower.run(), name=f"log-{name}")

    def _prefixed(self, prefix: str) -> Callable[[str], None]:
        return lambda text: self.line(prefix + text)

    def _start_problem(self) -> Failure | None:
        """A pod that cannot start for ``image_pull_grace_seconds`` (at once for an invalid image name), or has
        no node for ``unschedulable_timeout_seconds`` when the block sets one."""
        now = time.monotonic()
        for name, pod in self.pods.items():
            problem = start_problem(pod)
            if problem is not None:
                text, at_once = problem
                since = self.problem_since.setdefault(name, now)
                if at_once or now - since >= self.target.image_pull_grace_seconds:
                    return Failure(text, None, permanent=True, pod=name)
                continue
            self.problem_since.pop(name, None)
            waiting = unschedulable_message(pod)
            limit = self.target.unschedulable_timeout_seconds
            if waiting is None or limit is None:
                self.unschedulable_since.pop(name, None)
                continue
            since = self.unschedulable_since.setdefault(name, now)
            if now - since >= limit:
                text = f"unschedulable: {waiting}; no node for {limit:g}s (unschedulable_timeout_seconds)"
                return Failure(text, None, permanent=True, pod=name)
        return None

    async def _creation_problem(self, pods: list[dict[str, Any]]) -> Failure | None:
        """Pods the cluster refuses to create (Job events): at once when waiting cannot help, after
        ``unschedulable_timeout_seconds`` for a quota that is full for now (like a GPU node that is missing)."""
        live = [p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp") and not pod_ended(p)]
        if len(live) >= self.settings.nodes or not self.events_readable:
            self.refused, self.refused_since = None, None
            return None
        try:
            events = await self._get_json(
                self.core.list_namespaced_event(
                    self.namespace, field_selector=f"involvedObject.name={self.name}", **_raw()
                ),
                f"list the events of job {self.name}",
            )
        except (ConfigurationError, ServiceUnavailable, aiohttp.ClientError, TimeoutError) as exc:
            # Events only explain; following the Job does not need them (an older Role may lack `events list`).
            self.events_readable = False
            self.note(f"cannot read job {self.name}'s events ({exc}): pods the cluster refuses show at the deadline")
            return None
        refusal = creation_refusal((events or {}).get("items") or [], self.uid)
        if refusal is None:
            self.refused, self.refused_since = None, None
            return None
        text, hopeless = refusal
        if not same_refusal(text, self.refused):
            self.note(f"job {self.name}: {text}")
        self.refused = text
        if hopeless:
            return Failure(text, None, permanent=True)
        now = time.monotonic()
        self.refused_since = self.refused_since or now
        limit = self.target.unschedulable_timeout_seconds
        if limit is not None and now - self.refused_since >= limit:
            return Failure(f"{text}; still refused after {limit:g}s (unschedulable_timeout_seconds)", None, True)
        return None

    async def _drain_streams(self) -> None:
        pending = [t for t in self.streams.values() if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=LOG_DRAIN_SECONDS)
        await self._stop_streams()

    async def _stop_streams(self) -> None:
        tasks = list(self.streams.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- delete -----------------------------------------------------------------------------------------------

    async def _delete(self, why: str) -> None:
        """Delete the Job with its pods (Foreground) and the Service, and wait until they are gone."""
        await self._delete_service()
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
            job = await self._get_json(
                self.batch.read_namespaced_job(self.name, self.namespace, **_raw()), f"read job {self.name}"
            )
            left = [pod_name(p) for p in await self._list_pods()]
            if job is None and not left:
                self.created = False
                self.note(f"deleted job {self.name} and its pods ({why})")
                return
            await asyncio.sleep(min(self.poll, 0.5))
        self.note(
            f"job {self.name} ({why}) was deleted but is not gone after {DELETE_WAIT_SECONDS:g}s; pods left: {left}"
        )

    async def _delete_service(self) -> None:
        if self.service_manifest is None:
            return
        with contextlib.suppress(ApiException):
            await self.core.delete_namespaced_service(self.name, self.namespace, _request_timeout=REQUEST_TIMEOUT)

    # --- API helpers ------------------------------------------------------------------------------------------

    @staticmethod
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
    """Read raw JSON: API objects as the server sends them, as :mod:`tasks.kube.diagnosis` expects."""
    return {"_preload_content": False, "_request_timeout": REQUEST_TIMEOUT}


def _container_started(pod: dict[str, Any]) -> bool:
    for status in pod.get("status", {}).get("containerStatuses") or []:
        state = status.get("state") or {}
        if state.get("running") or state.get("terminated"):
            return True
    return False
