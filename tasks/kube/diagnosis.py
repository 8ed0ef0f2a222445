"""Why a training Job is stuck or failed, in words a user can act on: pure functions over API objects.

Everything here reads Job and Pod objects as the API server returns them (camelCase JSON dicts, timestamps as
RFC 3339 strings) and never talks to a cluster, so each diagnosis is unit-tested with status dicts shaped
like real Kubernetes ones and :mod:`tasks.kube.jobs` only has to fetch and act.

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
from typing import Any, cast

from kubernetes.utils import parse_quantity

from tasks.core.errors import PermanentWorkloadFailure, RetryableWorkloadFailure, WorkloadFailed
from workloads.trainer.config import EXIT_CONFIG, EXIT_DATA, EXIT_FAILED

Obj = Mapping[str, Any]

IMAGE_PULL_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"})
CONFIG_REASONS = frozenset({"CreateContainerConfigError", "CreateContainerError"})
IMMEDIATE_REASONS = frozenset({"InvalidImageName", "ErrImageNeverPull"})  # waiting cannot fix these
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"

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
    """What exit codes mean for this workload module: the trainer's own codes, else only the shell's."""
    return TRAINER_EXIT_MEANINGS if module == "workloads.trainer" else GENERIC_EXIT_MEANINGS


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


# --------------------------------------------------------------------------------------------- reading objects


def parse_time(value: object) -> datetime | None:
    """An API timestamp (``2024-05-01T10:00:00Z``, with or without fractions) as an aware datetime."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _meta(obj: Obj) -> Obj:
    return obj.get("metadata") or {}


def _status(obj: Obj) -> Obj:
    return obj.get("status") or {}


def pod_name(pod: Obj) -> str:
    return str(_meta(pod).get("name", "?"))


def pod_index(pod: Obj) -> str | None:
    """The completion index of a pod of an Indexed Job (annotation, or the label newer clusters add)."""
    meta = _meta(pod)
    for source in (meta.get("annotations") or {}, meta.get("labels") or {}):
        if COMPLETION_INDEX in source:
            return str(source[COMPLETION_INDEX])
    return None


def _condition(obj: Obj, kind: str) -> Obj | None:
    for condition in _status(obj).get("conditions") or []:
        if condition.get("type") == kind:
            return cast(Obj, condition)
    return None


def _container_statuses(pod: Obj) -> list[Obj]:
    status = _status(pod)
    return [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]


def _container_spec(pod: Obj, name: str) -> Obj:
    spec = pod.get("spec") or {}
    for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        if container.get("name") == name:
            return cast(Obj, container)
    return {}


def _image(pod: Obj, status: Obj) -> str:
    """The image as the pod asked for it (the status may hold a resolved digest or registry prefix)."""
    return str(_container_spec(pod, str(status.get("name", ""))).get("image") or status.get("image") or "?")


def job_finished(job: Obj) -> str | None:
    """``"Complete"`` or ``"Failed"`` once the Job has that condition, else None."""
    for condition in _status(job).get("conditions") or []:
        if condition.get("type") in ("Complete", "Failed") and condition.get("status") == "True":
            return str(condition["type"])
    return None


def unschedulable_message(pod: Obj) -> str | None:
    """The scheduler's reason a pending pod has no node, without its preemption postscript; None if scheduled."""
    condition = _condition(pod, "PodScheduled")
    if not condition or condition.get("status") != "False" or condition.get("reason") != "Unschedulable":
        return None
    message = str(condition.get("message") or "no node fits the pod").strip()
    message = message.split(" preemption:", 1)[0].strip()
    return message.removesuffix(".")


def pod_ended(pod: Obj) -> bool:
    """Whether the pod has finished for good (Succeeded or Failed): it will run nothing more."""
    return _status(pod).get("phase") in ("Succeeded", "Failed")


def is_scheduled(pod: Obj) -> bool:
    condition = _condition(pod, "PodScheduled")
    return bool(condition and condition.get("status") == "True") or bool((pod.get("spec") or {}).get("nodeName"))


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
    condition = _condition(deployment, "ReplicaFailure")
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
    return parse_time(_meta(event).get("creationTimestamp")) or datetime.min.replace(tzinfo=UTC)


def _asks_more_than_limited(requested: str, limited: str) -> bool:
    """Whether a pod's own request (``requests.nvidia.com/gpu=2,pods=1``) is above a quota's hard limit."""
    asked, hard = _quantities(requested), _quantities(limited)
    try:
        return any(key in hard and parse_quantity(value) > parse_quantity(hard[key]) for key, value in asked.items())
    except ValueError:
        return False


def _quantities(text: str) -> dict[str, str]:
    return dict(item.strip().split("=", 1) for item in text.split(",") if "=" in item)


# --------------------------------------------------------------------------------------------- while it runs


def progress(pod: Obj) -> str:
    """Where a pod is, in a few words: shown once per change so a user sees why nothing happens yet."""
    name = pod_name(pod)
    if _meta(pod).get("deletionTimestamp"):
        return f"pod {name} is terminating"
    phase = _status(pod).get("phase", "Pending")
    if phase == "Pending":
        message = unschedulable_message(pod)
        if message is not None:
            return f"pod {name} is waiting for a node: {message}"
        if not is_scheduled(pod):
            return f"pod {name} is waiting to be scheduled"
        node = (pod.get("spec") or {}).get("nodeName") or "?"
        for status in _container_statuses(pod):
            waiting = (status.get("state") or {}).get("waiting") or {}
            reason = waiting.get("reason")
            if reason in IMAGE_PULL_REASONS | CONFIG_REASONS:
                return f"pod {name} on node {node}: {reason}: {waiting.get('message', '')}".rstrip(": ")
            if reason:
                return f"pod {name} on node {node}: {reason} (pulling image {_image(pod, status)!r}, starting)"
        return f"pod {name} scheduled on node {node}"
    if phase == "Running":
        return f"pod {name} is running"
    if phase == "Succeeded":
        return f"pod {name} succeeded"
    ended = last_termination(pod)
    code = f" with exit code {ended[1]}" if ended else ""
    why = _status(pod).get("reason") or (ended[2] if ended else "")
    return f"pod {name} failed{code}" + (f" ({why})" if why else "")


def start_problem(pod: Obj) -> tuple[str, bool] | None:
    """A container that cannot start (image pull, missing Secret or ConfigMap): the sentence, and whether
    waiting can never fix it (an invalid image name). None when nothing is wrong (yet)."""
    for status in _container_statuses(pod):
        waiting = (status.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        message = str(waiting.get("message") or "").strip()
        detail = f"{reason}: {message}" if message else str(reason)
        if reason in IMAGE_PULL_REASONS:
            text = f"image pull failed for {_image(pod, status)!r}: {detail}"
            return text, reason in IMMEDIATE_REASONS
        if reason in CONFIG_REASONS:
            text = f"container {status.get('name')} of pod {pod_name(pod)} cannot be created: {detail}"
            return text, False
    return None


def last_termination(pod: Obj) -> tuple[str, int, str] | None:
    """The main container's end as (container, exit code, reason), for a pod whose container ended."""
    for status in reversed(_container_statuses(pod)):
        terminated = (status.get("state") or {}).get("terminated")
        if terminated and "exitCode" in terminated:
            return str(status.get("name")), int(terminated["exitCode"]), str(terminated.get("reason") or "")
    return None


def _finished_at(pod: Obj) -> datetime:
    ends = [
        parse_time(((s.get("state") or {}).get("terminated") or {}).get("finishedAt")) for s in _container_statuses(pod)
    ]
    known = [t for t in ends if t is not None]
    return max(known) if known else parse_time(_meta(pod).get("creationTimestamp")) or datetime.min.replace(tzinfo=UTC)


# --------------------------------------------------------------------------------------------- failures


def exit_text(code: int, meanings: Mapping[int, str]) -> str:
    meaning = meanings.get(code)
    return f"exit code {code} ({meaning})" if meaning else f"exit code {code}"


def oom_text(pod: Obj, container: str) -> str:
    limit = ((_container_spec(pod, container).get("resources") or {}).get("limits") or {}).get("memory")
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
    return sorted(ended, key=_finished_at)


def job_failure(job: Obj, pods: Iterable[Obj], meanings: Mapping[int, str], permanent_codes: Iterable[int]) -> Failure:
    """Why a Job with the ``Failed`` condition failed; ``pods`` are all its pods seen, deleted ones included."""
    condition = _condition(job, "Failed") or {}
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
        text = last.reason if last else message
        pod = last.pod if last else None
        return Failure(f"{text}; the Job's podFailurePolicy failed it without retrying", code, True, pod)
    if reason == "BackoffLimitExceeded":
        tries = f"{_status(job).get('failed', len(failed))} pod(s) failed, backoffLimit {spec.get('backoffLimit', '?')}"
        if last is None:
            return Failure(f"BackoffLimitExceeded: {tries} reached", None, False)
        return Failure(f"{last.reason}; BackoffLimitExceeded: {tries} reached", code, last.permanent, last.pod)
    text = f"Job failed: {reason or 'no reason given'}" + (f": {message}" if message else "")
    if last is not None:
        return Failure(f"{text}; {last.reason}", code, last.permanent, last.pod)
    return Failure(text, None, False)


# --------------------------------------------------------------------------------------------- timings


def _started_at(pod: Obj) -> datetime | None:
    starts = []
    for status in _container_statuses(pod):
        state = status.get("state") or {}
        for key in ("running", "terminated"):
            if state.get(key):
                starts.append(parse_time(state[key].get("startedAt")))
    known = [t for t in starts if t is not None]
    return min(known) if known else None


def startup_timings(job: Obj, pods: Iterable[Obj]) -> dict[str, float]:
    """``k8s_queue_seconds`` (Job created -> first pod scheduled) and ``k8s_start_seconds`` (that pod scheduled ->
    its container running: image pull and start), as far as known; from the API's own timestamps.

    Real clusters give whole seconds and the Job's creation may carry a finer clock than a pod condition, so a
    difference below zero is read as zero.
    """
    created = parse_time(_meta(job).get("creationTimestamp"))
    scheduled: list[tuple[datetime, Obj]] = []
    for pod in pods:
        condition = _condition(pod, "PodScheduled")
        if not condition or condition.get("status") != "True":
            continue
        when = parse_time(condition.get("lastTransitionTime"))
        if when is not None:
            scheduled.append((when, pod))
    if created is None or not scheduled:
        return {}
    when, first = min(scheduled, key=lambda item: item[0])
    timings = {"k8s_queue_seconds": max(0.0, (when - created).total_seconds())}
    started = _started_at(first)
    if started is not None:
        timings["k8s_start_seconds"] = max(0.0, (started - when).total_seconds())
    return timings
