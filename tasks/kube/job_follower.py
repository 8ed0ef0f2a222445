"""Follow one training's Job to its end, in a thread of its own with its own event loop.

It uses the block's credentials' clients (``credentials.get_client``, kubernetes_asyncio): it reads the Job and
its pods every ``poll_interval_seconds``, follows every pod's log concurrently (:mod:`tasks.kube.pod_logs`),
prints one line per change of a pod's state, fails fast on a pod that cannot start or that the cluster refuses
to create, and turns a failure into a sentence (:mod:`tasks.kube.diagnosis`). The Job itself is created and
deleted by :mod:`tasks.kube.job_objects`; :func:`tasks.kube.jobs.run_job` relays what this thread says.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import aiohttp
from kubernetes_asyncio.client import BatchV1Api, CoreV1Api
from kubernetes_asyncio.config import ConfigException

from tasks.core.errors import ConfigurationError, ServiceUnavailable
from tasks.core.types import LogFn
from tasks.core.workload import WorkloadSpec
from tasks.kube.diagnosis import Failure, creation_refusal, exit_meanings, job_failure, same_refusal
from tasks.kube.job_manifests import JobSettings
from tasks.kube.job_objects import DELETE_WAIT_SECONDS, JobObjects
from tasks.kube.pod_logs import REQUEST_TIMEOUT, PodLogFollower
from tasks.kube.pod_settings import Manifest
from tasks.kube.pod_status import (
    job_finished,
    pod_ended,
    pod_index,
    pod_name,
    progress,
    start_problem,
    startup_timings,
    unschedulable_message,
)

if TYPE_CHECKING:
    from tasks.kube.jobs import KubeTarget

LOG_DRAIN_SECONDS = 15.0  # after the Job ended, for the last lines to arrive
API_OUTAGE_SECONDS = 60.0  # the API unreachable this long while following: give up (and try to clean up)
DEADLINE_GRACE_SECONDS = 120.0  # a Job still not ended this long after its deadline: stop waiting for it
NOTE = "kubernetes: "


@dataclass(frozen=True)
class Completed:
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)


class JobFollower:
    """Creates one training's Job and follows it; runs in its own thread with its own event loop."""

    def __init__(self, target: KubeTarget, spec: WorkloadSpec, settings: JobSettings, manifests: list[Manifest]):
        self.target, self.spec, self.settings = target, spec, settings
        self.poll = float(target.poll_interval_seconds)
        self.objects = JobObjects(target.credentials, spec.name, settings, manifests, self.note, self.poll)
        self.name, self.namespace = self.objects.name, self.objects.namespace
        self.container: str = self.objects.job_manifest["spec"]["template"]["spec"]["containers"][0]["name"]
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
            self.core = cast(CoreV1Api, core)
            self.objects.attach(cast(BatchV1Api, batch), self.core)
            try:
                if self._cancelled.is_set():
                    raise asyncio.CancelledError
                return await self._run()
            except BaseException as exc:
                task = asyncio.current_task()
                if task is not None:
                    task.uncancel()  # so the clean-up's own timeouts work
                if self.objects.created:
                    why = "cancelled" if isinstance(exc, asyncio.CancelledError) else f"{type(exc).__name__}"
                    await self._stop_streams()
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(self.objects.delete(why), DELETE_WAIT_SECONDS + REQUEST_TIMEOUT)
                raise

    async def _run(self) -> Completed | Failure:
        started = time.monotonic()
        await self.objects.create()
        outcome, still_active = await self._follow()
        await self._drain_streams()
        if isinstance(outcome, Completed):
            await self.objects.delete("succeeded")
            return Completed(time.monotonic() - started, dict(self.timings))
        self.note(f"job {self.name} failed: {outcome.reason}")
        if still_active:
            await self.objects.delete("still active: it would have held its GPU request until its deadline")
        elif self.target.delete_failed_jobs:
            await self.objects.delete("failed; delete_failed_jobs is set")
        else:
            await self.objects.delete_service()
            ttl = self.settings.ttl_seconds_after_finished
            self.note(
                f"kept failed job {self.name} for inspection (Kubernetes deletes it {ttl}s after it finished): "
                f"kubectl -n {self.namespace} describe job {self.name}"
            )
        return outcome

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
                job = await self.objects.read_job()
                pods = await self.objects.list_pods()
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
                self.objects.created = False
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
                    self.core,
                    self.namespace,
                    name,
                    self.container,
                    emit,
                    retry_seconds=min(self.poll, 1.0),
                    refused=self.note,
                )
                self.streams[name] = asyncio.create_task(follower.run(), name=f"log-{name}")

    def _prefixed(self, prefix: str) -> LogFn:
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
            events = await self.objects.list_events()
        except (ConfigurationError, ServiceUnavailable, aiohttp.ClientError, TimeoutError) as exc:
            # Events only explain; following the Job does not need them (an older Role may lack `events list`).
            self.events_readable = False
            self.note(f"cannot read job {self.name}'s events ({exc}): pods the cluster refuses show at the deadline")
            return None
        refusal = creation_refusal(events, self.objects.uid)
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


def _container_started(pod: dict[str, Any]) -> bool:
    for status in pod.get("status", {}).get("containerStatuses") or []:
        state = status.get("state") or {}
        if state.get("running") or state.get("terminated"):
            return True
    return False
