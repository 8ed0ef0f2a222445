"""Waiting for a track of a model server to be ready on its version, or gone, and saying why it is not or why
it went down.

A pod that crashes before it is ready, cannot pull its image past the grace (at once for an invalid image
name), or that the Deployment cannot create (quota, Pod Security, a webhook) fails the wait at once with its
state and last log lines; at the deadline every pod that is not ready is described.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from tasks.core.types import LogFn, Track
from tasks.kube import diagnosis, pod_status
from tasks.kube.server_objects import ServerObjects
from tasks.kube.server_pods import PodView
from tasks.rollout.serving import ServerNotReady
from tasks.tracking.model_registry import RegisteredVersion


@dataclass(frozen=True)
class TrackReadiness:
    """Waits on the tracks of one server (the block's ``poll_interval_seconds`` and ``image_pull_grace_seconds``)."""

    objects: ServerObjects
    poll_seconds: float
    image_pull_grace_seconds: float
    log: LogFn
    restarts: dict[str, int] = field(default_factory=dict)  # restart count of each pod when first seen ready

    def ready(self, role: Track, version: RegisteredVersion, desired: int, timeout: float) -> None:
        """Until ``desired`` pods of the track are ready on ``version`` and no other pod is left."""
        deadline = time.monotonic() + timeout
        first_seen: dict[str, float] = {}
        what = f"{role} Deployment {self.objects.track_name(role)} ({version.model_uri})"
        while True:
            pods = [p for p in self.objects.pods(role) if not p.deleting]
            ready = [p for p in pods if p.ready and p.version == version.version]
            if len(ready) == desired and len(pods) == desired:
                for pod in ready:
                    self.restarts.setdefault(pod.name, pod.restarts)
                return
            now = time.monotonic()
            for pod in pods:
                if pod.version != version.version or pod.ready:
                    continue
                first_seen.setdefault(pod.name, now)
                self._check_starting(what, pod, now - first_seen[pod.name])
            refused = self._refused(role) if len(pods) < desired else None
            if refused is not None and refused[1]:
                raise ServerNotReady(what, None, [], reason=refused[0], blameless=True)
            if now > deadline:
                if refused is not None:  # a quota still full at the deadline
                    reason = f"{refused[0]}; still after {timeout:g}s"
                    raise ServerNotReady(what, None, [], reason=reason, blameless=True)
                raise _not_ready(what, pods, desired, len(ready), timeout)
            time.sleep(min(self.poll_seconds, max(0.05, deadline - now)))

    def gone(self, role: Track, timeout: float) -> None:
        """Until no pod of the track is left but those being deleted; after ``timeout`` it logs and goes on."""
        deadline = time.monotonic() + timeout
        while any(not p.deleting for p in self.objects.pods(role)):
            if time.monotonic() > deadline:
                self.log(f"{role} pods of {self.objects.name} are still being deleted after {timeout:g}s")
                return
            time.sleep(min(self.poll_seconds, 0.5))

    def down(self, role: Track) -> str | None:
        """Why the track stopped serving: a pod crashed since it was ready (restarted or backing off), with its
        last log lines, or no pod is left; None while it serves."""
        pods = [p for p in self.objects.pods(role) if not p.deleting]
        for pod in pods:
            crash = pod.crash(self.restarts.get(pod.name, 0))
            if crash is not None:
                return f"{role} pod {pod.name} crashed: {crash[1]}; last log lines:\n" + "\n".join(
                    f"  | {line}" for line in self.objects.log_tail(pod) or ["(no output)"]
                )
        if not pods:
            return f"no {role} pod is left in Deployment {self.objects.track_name(role)}"
        return None

    def _refused(self, role: Track) -> tuple[str, bool] | None:
        """Why the track's Deployment cannot create its pods (quota, Pod Security, a webhook), if it cannot."""
        return diagnosis.replica_failure(self.objects.read_deployment(self.objects.track_name(role)) or {})

    def _check_starting(self, what: str, pod: PodView, waited: float) -> None:
        """Fail at once on a pod that crashed before it was ready, or that cannot pull its image past the grace."""
        crash = pod.crash()
        if crash is not None:
            code, words = crash
            raise ServerNotReady(
                f"{what}: pod {pod.name}",
                code,
                self.objects.log_tail(pod),
                reason=f"crashed before it was ready: {words}",
            )
        problem = pod_status.start_problem(pod.raw)
        if problem is not None:
            text, hopeless = problem
            if hopeless or waited >= self.image_pull_grace_seconds:
                raise ServerNotReady(f"{what}: pod {pod.name}", None, [], reason=text, blameless=True)


def _not_ready(what: str, pods: list[PodView], desired: int, ready: int, timeout: float) -> ServerNotReady:
    states = []
    unschedulable = False
    for pod in pods:
        if pod.ready:
            continue
        state = pod_status.progress(pod.raw)
        if (pod.raw.get("status") or {}).get("phase") == "Running":
            state += " but not ready (GET /readyz does not answer 200)"
        unschedulable = unschedulable or pod_status.unschedulable_message(pod.raw) is not None
        states.append(state)
    reason = f"had {ready} of {desired} pods ready after {timeout:g}s"
    return ServerNotReady(what, None, states or ["(no pods)"], reason=reason, blameless=unschedulable)
