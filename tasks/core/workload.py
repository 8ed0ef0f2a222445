"""What a flow hands to a compute target, and what it gets back: independent of where the workload runs.

These types live in the leaf layer because both sides use them: the compute-target blocks run a
:class:`WorkloadSpec`, and the Kubernetes manifest builder and Job runner (tasks/kube/) turn one into a Job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from tasks.core.errors import ConfigurationError, PermanentWorkloadFailure, RetryableWorkloadFailure, WorkloadFailed
from workloads.trainer.config import EXIT_CONFIG, EXIT_DATA

# Exit codes retrying cannot fix: the trainer's configuration and dataset errors, and the shell's
# "found but not executable" (126) / "command not found" (127) for a broken image or command. The Kubernetes Job's
# podFailurePolicy fails on them at once; a local process exiting with one is a permanent failure.
PERMANENT_EXIT_CODES: tuple[int, ...] = (EXIT_CONFIG, EXIT_DATA, 126, 127)

# A workload label (Kubernetes: ``gpuflow.io/training-id``) the trainer's spec carries and the Job's name is
# derived from, so a retried stage finds its Job.
LABEL_TRAINING_ID = "gpuflow.training-id"

_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


@dataclass(frozen=True)
class WorkloadSpec:
    """What to run, independent of where: ``python -m <module> <args>`` with this environment.

    ``env`` is plain configuration and may be shown; ``secret_env`` holds credentials, which the local
    backend merges into the process environment and a Kubernetes backend passes as secret references.
    Secrets are left out of ``repr`` and must never be logged.
    """

    name: str
    module: str
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    secret_env: dict[str, str] = field(default_factory=dict, repr=False)
    labels: dict[str, str] = field(default_factory=dict)
    working_dir: str | None = None  # local runs: the folder it starts in (a user's project); pods use the image's
    image: str | None = None  # Kubernetes: run in this image instead of the compute block's (a user's trainer)

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise ConfigurationError("workload name must not be empty")
        if not _MODULE.match(self.module):
            raise ConfigurationError(f"workload module must be a dotted Python module name, got {self.module!r}")
        for key, value in {**self.env, **self.secret_env}.items():
            if not isinstance(value, str):
                raise ConfigurationError(f"environment variable {key} of workload {self.name} must be a string")

    def command(self, python: str) -> list[str]:
        return [python, "-m", self.module, *self.args]


@dataclass(frozen=True)
class WorkloadResult:
    """A workload that exited 0: how long it ran (wall time seen by the backend) and its last lines.

    ``timings`` are the backend's own figures, e.g. a Kubernetes Job's ``k8s_queue_seconds`` (created ->
    scheduled) and ``k8s_start_seconds`` (scheduled -> running); empty for a local process.
    """

    name: str
    exit_code: int
    seconds: float
    tail: list[str]
    backend: str
    timings: dict[str, float] = field(default_factory=dict)


def exit_failure(name: str, exit_code: int | None, tail: list[str], reason: str = "") -> WorkloadFailed:
    """A workload that exited non-zero, classified as the Kubernetes Job runner classifies its pods: permanent
    for :data:`PERMANENT_EXIT_CODES`, retryable for any other exit (a crash of unknown cause)."""
    cls = PermanentWorkloadFailure if exit_code in PERMANENT_EXIT_CODES else RetryableWorkloadFailure
    return cls(name, exit_code, tail, reason=reason)
