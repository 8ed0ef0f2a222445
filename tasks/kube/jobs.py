"""Run a workload as a Kubernetes Job, follow it to its end, and tell the user exactly what happened.

The Job is created through prefect-kubernetes (``KubernetesJob(...).trigger()``, awaited as its async
implementation ``atrigger``). Its ``wait_for_completion`` is not used: it reads one pod's log to the end
before it looks at the next pod or at the Job again, so it cannot stream the pods of an Indexed Job side by
side, notice while a pod is pending that its image cannot be pulled, or say why a Job failed beyond the
condition's reason. The follower (:mod:`tasks.kube.job_follower`) uses the same credentials' clients
(``credentials.get_client``, kubernetes_asyncio) in its own thread and event loop: it reads the Job and its pods
every ``poll_interval_seconds``, follows every pod's log concurrently (:mod:`tasks.kube.pod_logs`), prints one
line per change of a pod's state, and turns a failure into a sentence (:mod:`tasks.kube.diagnosis`); here,
in the caller's thread, its lines are passed on to the Prefect logs.

Nothing is left behind: the Job (and with it its pods, ``propagationPolicy: Foreground``, waited for) is
deleted on success, on any exception in the caller's thread (KeyboardInterrupt, Prefect's cancellation) and
when it failed fast (an image that cannot be pulled, a missing Secret: the pod would otherwise hold its GPU
request until the deadline); a Job that failed is kept for inspection unless ``delete_failed_jobs``, until
its ``ttlSecondsAfterFinished``. The headless Service of a distributed training is owner-referenced to the
Job and deleted with it in every case.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections import deque
from typing import Any, Protocol

from prefect_kubernetes.credentials import KubernetesCredentials

from tasks.core.types import LogFn
from tasks.core.workload import WorkloadResult, WorkloadSpec
from tasks.kube.diagnosis import Failure, workload_error
from tasks.kube.job_follower import Completed, JobFollower
from tasks.kube.job_manifests import JobSettings, training_manifests
from tasks.kube.job_objects import DELETE_WAIT_SECONDS
from tasks.kube.pod_logs import REQUEST_TIMEOUT

TAIL_LINES = 20


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
