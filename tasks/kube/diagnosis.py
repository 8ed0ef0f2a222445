"""Why a training Job is stuck or failed, in words a user can act on: pure functions over API objects.

Everything here reads Job, Pod, Deployment and Event objects as the API server returns them (through
:mod:`tasks.kube.pod_status`) and never talks to a cluster, so each diagnosis is unit-tested with status dicts
shaped like real Kubernetes ones and :mod:`tasks.kube.jobs` only has to fetch and act.

A :class:`Failure` also says whether running the same thing again could pass (``permanent``): a bad image,
a bad configuration, a dataset error, an out-of-memory kill, a deadline or no node with the GPUs asked for
all fail again; a crash of unknown cause or a lost pod may not. :func:`workload_error` turns it into a
:class:`~tasks.core.errors.WorkloadFailed` that is also a :class:`~tasks.core.errors.PermanentError` or a
:class:`~tasks.core.errors.RetryableError`, which is what decides Prefect's retries.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from kubernetes.utils import parse_quantity

from tasks.core.errors import PermanentWorkloadFailure, RetryableWorkloadFailure, WorkloadFailed
from tasks.kube.pod_status import (
    Obj,
    container_spec,
    find_condition,
    finished_at,
    is_scheduled,
    last_termination,
    meta_of,
    parse_time,
    pod_name,
    start_problem,
    status_of,
    unschedulable_message,
)
from workloads.trainer.config import EXIT_CONFIG, EXIT_DATA, EXIT_FAILED

GENERIC_EXIT_MEANINGS: dict[int, str] = {
    126: "the command is not executable in the image",
    127: "the command was not found in the image (python or the module missing?)",
    128 + 2: "interrupted (SIGINT)",
    128 + 9: "killed by SIGKILL (out of memory, or stopped by Kubernetes)",
    128 + 15: "terminated by SIGTERM (pod deleted, evicted or preempted)",
}
TRAINER_EXIT_MEANINGS: dict[int, str] = {
    **GENERIC_EXIT_MEANINGS,
    EXIT_FAILED: "trainer: unexpected failure (MLflow or the store unreachable, or a crash); a retry may pass",
    EXIT_CONFIG: "trainer: configuration error (bad argument or environment variable); retrying will not help",
    EXIT_DATA: "trainer: dataset error (missing or unusable dataset); retrying will not help",
}


def exit_meanings(module: str) -> dict[int, str]:
    """What exit codes mean for this workload module: the trainer contract's codes (the launcher and the built-in
    trainer keep them), else only the shell's."""
    return TRAINER_EXIT_MEANINGS if module in ("workloads.launcher", "workloads.trainer") else GENERIC_EXIT_MEANINGS


@dataclass(frozen=True)
class Failure:
    """One diagnosed failure: the sentence for the user, the exit code when a container ended, retry or not."""

    reason: str
    exit_code: int | None
    permanent: bool
    pod: str | None = None


def workload_error(name: str, failure: Failure, tail: list[str]) -> WorkloadFailed:
    """The exception to raise for ``failure``: permanent or retryable, with the last log lines."""
    cls = PermanentWorkloadFailure if failure.permanent else RetryableWorkloadFailure
    return cls(name, failure.exit_code, tail, reason=failure.reason)


# --------------------------------------------------------------------------------------------- pods refused

_POD_NAME = re.compile(r'pods "[^"]*"')
_QUOTA = re.compile(
    r"exceeded quota: (?P<quota>[^,]+), requested: (?P<requested>.+?), used: .+?, limited: (?P<limited>.+)$"
)


def creation_refusal(events: Iterable[Obj], uid: str | None = None) -> tuple[str, bool] | None:
    """Why the cluster refuses to create a controller's pods, from its newest ``FailedCreate`` Warning event
    (``uid``: only events about that object): the sentence, and whether waiting can never fix it.

    The API server refuses a pod before it exists, so no pod status tells it: only the Job's (or ReplicaSet's)
    events do. A quota that the pod fits once other pods end may pass by waiting; a pod that alone asks more than
    the quota, Pod Security, an admission webhook or a LimitRange will refuse it again.
    """
    about = [e for e in events if uid is None or (e.get("involvedObject") or {}).get("uid") in (None, uid)]
    refused = [e for e in about if e.get("reason") == "FailedCreate" and e.get("type", "Warning") == "Warning"]
    if not refused:
        return None
    newest = max(refused, key=_event_time)
    created = [_event_time(e) for e in about if e.get("reason") == "SuccessfulCreate"]
    if created and max(created) >= _event_time(newest):
        return None  # it has created a pod since: whatever refused it then has passed
    return _refused(str(newest.get("message") or ""))


def replica_failure(deployment: Obj) -> tuple[str, bool] | None:
    """The same for a Deployment, from the ``ReplicaFailure`` condition its controller copies from its
    ReplicaSet; None while it can create its pods."""
    condition = find_condition(deployment, "ReplicaFailure")
    if not condition or condition.get("status") != "True":
        return None
    return _refused(str(condition.get("message") or condition.get("reason") or "FailedCreate"))


def _refused(message: str) -> tuple[str, bool]:
    message = message.strip().removeprefix("(combined from similar events): ").removeprefix("Error creating: ")
    quota = _QUOTA.search(message)
    hopeless = quota is None or _asks_more_than_limited(quota["requested"], quota["limited"])
    return f"the cluster refuses to create its pods: {message}", hopeless


def same_refusal(text: str, other: str | None) -> bool:
    """Whether two refusals say the same but for the pod's generated name (each retry has a new one)."""
    return other is not None and _POD_NAME.sub("pods", text) == _POD_NAME.sub("pods", other)


def _event_time(event: Obj) -> datetime:
    for key in ("lastTimestamp", "eventTime", "firstTimestamp"):
        found = parse_time(event.get(key))
        if found is not None:
            return found
    return parse_time(meta_of(event).get("creationTimestamp")) or datetime.min.replace(tzinfo=UTC)


def _asks_more_than_limited(requested: str, limited: str) -> bool:
    """Whether a pod's own request (``requests.nvidia.com/gpu=2,pods=1``) is above a quota's hard limit."""
    asked, hard = _quantities(requested), _quantities(limited)
    try:
        return any(key in hard and parse_quantity(value) > parse_quantity(hard[key]) for key, value in asked.items())
    except ValueError:
        return False


def _quantities(text: str) -> dict[str, str]:
    return dict(item.strip().split("=", 1) for item in text.split(",") if "=" in item)


# --------------------------------------------------------------------------------------------- failures


def exit_text(code: int, meanings: Mapping[int, str]) -> str:
    meaning = meanings.get(code)
    return f"exit code {code} ({meaning})" if meaning else f"exit code {code}"


def oom_text(pod: Obj, container: str) -> str:
    limit = ((container_spec(pod, container).get("resources") or {}).get("limits") or {}).get("memory")
    bound = f"its memory limit {limit}" if limit else "the memory available to it"
    return f"OOMKilled: container {container} of pod {pod_name(pod)} exceeded {bound}"


def pod_failure(pod: Obj, meanings: Mapping[int, str], permanent_codes: Iterable[int]) -> Failure | None:
    """How one failed pod ended (OOM kill or exit code), or None when its container never ended."""
    ended = last_termination(pod)
    if ended is None:
        return None
    container, code, reason = ended
    if reason == "OOMKilled":
        return Failure(oom_text(pod, container), code, permanent=True, pod=pod_name(pod))
    text = f"container {container} of pod {pod_name(pod)} ended with {exit_text(code, meanings)}"
    return Failure(text, code, permanent=code in set(permanent_codes), pod=pod_name(pod))


def _failed_pods(pods: Iterable[Obj]) -> list[Obj]:
    ended = [p for p in pods if (t := last_termination(p)) is not None and t[1] != 0]
    return sorted(ended, key=finished_at)


def job_failure(job: Obj, pods: Iterable[Obj], meanings: Mapping[int, str], permanent_codes: Iterable[int]) -> Failure:
    """Why a Job with the ``Failed`` condition failed; ``pods`` are all its pods seen, deleted ones included."""
    condition = find_condition(job, "Failed") or {}
    reason = str(condition.get("reason") or "")
    message = str(condition.get("message") or "").strip()
    spec = job.get("spec") or {}
    pods = list(pods)
    failed = _failed_pods(pods)
    last = pod_failure(failed[-1], meanings, permanent_codes) if failed else None
    code = last.exit_code if last else None

    if reason == "DeadlineExceeded":
        deadline = f"deadline exceeded after {spec.get('activeDeadlineSeconds', '?')}s (activeDeadlineSeconds)"
        waiting = [m for p in pods if (m := unschedulable_message(p)) is not None]
        if waiting and not any(is_scheduled(p) for p in pods):
            return Failure(f"unschedulable: {waiting[-1]}; {deadline} before any pod got a node", None, True)
        stuck = [s for p in pods if (s := start_problem(p)) is not None]
        if stuck:
            return Failure(f"{stuck[-1][0]}; {deadline}", None, True)
        return Failure(deadline, code, True)
    if reason == "PodFailurePolicy":
        # The pod whose permanent exit matched the policy, not a peer the Job then stopped (SIGTERM, 143).
        found = (pod_failure(p, meanings, permanent_codes) for p in failed)
        cause = next((f for f in found if f is not None and f.permanent), last)
        text = cause.reason if cause else message
        pod = cause.pod if cause else None
        return Failure(
            f"{text}; the Job's podFailurePolicy failed it without retrying",
            cause.exit_code if cause else None,
            True,
            pod,
        )
    if reason == "BackoffLimitExceeded":
        tries = (
            f"{status_of(job).get('failed', len(failed))} pod(s) failed, backoffLimit {spec.get('backoffLimit', '?')}"
        )
        if last is None:
            return Failure(f"BackoffLimitExceeded: {tries} reached", None, False)
        return Failure(f"{last.reason}; BackoffLimitExceeded: {tries} reached", code, last.permanent, last.pod)
    text = f"Job failed: {reason or 'no reason given'}" + (f": {message}" if message else "")
    if last is not None:
        return Failure(f"{text}; {last.reason}", code, last.permanent, last.pod)
    return Failure(text, None, False)
