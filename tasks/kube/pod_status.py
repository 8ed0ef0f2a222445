"""Where a Job and its pods are, read from API objects: pure functions, no cluster access.

Everything here reads Job and Pod objects as the API server returns them (camelCase JSON dicts, timestamps as
RFC 3339 strings), so the Job runner, the server rollout and :mod:`tasks.kube.diagnosis` share one reading,
unit-tested with status dicts shaped like real Kubernetes ones: a pod's progress in a few words, a container
that cannot start, how a container ended, and the Job's start-up timings.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, cast

Obj = Mapping[str, Any]

IMAGE_PULL_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"})
CONFIG_REASONS = frozenset({"CreateContainerConfigError", "CreateContainerError"})
IMMEDIATE_REASONS = frozenset({"InvalidImageName", "ErrImageNeverPull"})  # waiting cannot fix these
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"


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


def meta_of(obj: Obj) -> Obj:
    return obj.get("metadata") or {}


def status_of(obj: Obj) -> Obj:
    return obj.get("status") or {}


def pod_name(pod: Obj) -> str:
    return str(meta_of(pod).get("name", "?"))


def pod_index(pod: Obj) -> str | None:
    """The completion index of a pod of an Indexed Job (annotation, or the label newer clusters add)."""
    meta = meta_of(pod)
    for source in (meta.get("annotations") or {}, meta.get("labels") or {}):
        if COMPLETION_INDEX in source:
            return str(source[COMPLETION_INDEX])
    return None


def find_condition(obj: Obj, kind: str) -> Obj | None:
    for condition in status_of(obj).get("conditions") or []:
        if condition.get("type") == kind:
            return cast(Obj, condition)
    return None


def container_statuses(pod: Obj) -> list[Obj]:
    status = status_of(pod)
    return [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]


def container_spec(pod: Obj, name: str) -> Obj:
    spec = pod.get("spec") or {}
    for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        if container.get("name") == name:
            return cast(Obj, container)
    return {}


def _image(pod: Obj, status: Obj) -> str:
    """The image as the pod asked for it (the status may hold a resolved digest or registry prefix)."""
    return str(container_spec(pod, str(status.get("name", ""))).get("image") or status.get("image") or "?")


def job_finished(job: Obj) -> str | None:
    """``"Complete"`` or ``"Failed"`` once the Job has that condition, else None."""
    for condition in status_of(job).get("conditions") or []:
        if condition.get("type") in ("Complete", "Failed") and condition.get("status") == "True":
            return str(condition["type"])
    return None


def unschedulable_message(pod: Obj) -> str | None:
    """The scheduler's reason a pending pod has no node, without its preemption postscript; None if scheduled."""
    condition = find_condition(pod, "PodScheduled")
    if not condition or condition.get("status") != "False" or condition.get("reason") != "Unschedulable":
        return None
    message = str(condition.get("message") or "no node fits the pod").strip()
    message = message.split(" preemption:", 1)[0].strip()
    return message.removesuffix(".")


def pod_ended(pod: Obj) -> bool:
    """Whether the pod has finished for good (Succeeded or Failed): it will run nothing more."""
    return status_of(pod).get("phase") in ("Succeeded", "Failed")


def is_scheduled(pod: Obj) -> bool:
    condition = find_condition(pod, "PodScheduled")
    return bool(condition and condition.get("status") == "True") or bool((pod.get("spec") or {}).get("nodeName"))


# --------------------------------------------------------------------------------------------- while it runs


def progress(pod: Obj) -> str:
    """Where a pod is, in a few words: shown once per change so a user sees why nothing happens yet."""
    name = pod_name(pod)
    if meta_of(pod).get("deletionTimestamp"):
        return f"pod {name} is terminating"
    phase = status_of(pod).get("phase", "Pending")
    if phase == "Pending":
        message = unschedulable_message(pod)
        if message is not None:
            return f"pod {name} is waiting for a node: {message}"
        if not is_scheduled(pod):
            return f"pod {name} is waiting to be scheduled"
        node = (pod.get("spec") or {}).get("nodeName") or "?"
        for status in container_statuses(pod):
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
    why = status_of(pod).get("reason") or (ended[2] if ended else "")
    return f"pod {name} failed{code}" + (f" ({why})" if why else "")


def start_problem(pod: Obj) -> tuple[str, bool] | None:
    """A container that cannot start (image pull, missing Secret or ConfigMap): the sentence, and whether
    waiting can never fix it (an invalid image name). None when nothing is wrong (yet)."""
    for status in container_statuses(pod):
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
    for status in reversed(container_statuses(pod)):
        terminated = (status.get("state") or {}).get("terminated")
        if terminated and "exitCode" in terminated:
            return str(status.get("name")), int(terminated["exitCode"]), str(terminated.get("reason") or "")
    return None


def finished_at(pod: Obj) -> datetime:
    ends = [
        parse_time(((s.get("state") or {}).get("terminated") or {}).get("finishedAt")) for s in container_statuses(pod)
    ]
    known = [t for t in ends if t is not None]
    return (
        max(known) if known else parse_time(meta_of(pod).get("creationTimestamp")) or datetime.min.replace(tzinfo=UTC)
    )


# --------------------------------------------------------------------------------------------- timings


def _started_at(pod: Obj) -> datetime | None:
    starts = []
    for status in container_statuses(pod):
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
    created = parse_time(meta_of(job).get("creationTimestamp"))
    scheduled: list[tuple[datetime, Obj]] = []
    for pod in pods:
        condition = find_condition(pod, "PodScheduled")
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
