"""The exception tree every stage raises, so callers can tell bad input from a flaky service.

Permanent errors mean "retrying will not help: fix the input or the configuration".
Retryable errors mean "a service was unreachable or a workload was lost: try again".
"""

from __future__ import annotations


class GpuflowError(Exception):
    """Base of every error gpuflow raises on purpose; its message is meant for the user."""


class PermanentError(GpuflowError):
    """Retrying cannot help: the input, the configuration or the model is at fault."""


class RetryableError(GpuflowError):
    """A dependency failed in a way that may pass: a service down, a pod lost."""


class DataValidationError(PermanentError):
    """Raw data does not match the declared schema; nothing was published."""


class DataNotFoundError(PermanentError):
    """The raw data URI points at nothing."""


class ConfigurationError(PermanentError):
    """A block, parameter or environment variable has a value gpuflow cannot use."""


class WorkloadFailed(GpuflowError):
    """A workload (trainer, server) exited non-zero; carries its exit code and last log lines."""

    def __init__(self, name: str, exit_code: int | None, tail: list[str], reason: str = "") -> None:
        self.name = name
        self.exit_code = exit_code
        self.tail = list(tail)
        self.reason = reason
        detail = reason or f"exited with code {exit_code}"
        last = "\n".join(f"  | {line}" for line in self.tail) if self.tail else "  | (no output)"
        super().__init__(f"{name} {detail}; last log lines:\n{last}")


class PermanentWorkloadFailure(WorkloadFailed, PermanentError):
    """The workload failed in a way that running it again cannot fix (image, configuration, data, memory, GPUs,
    a deadline)."""


class RetryableWorkloadFailure(WorkloadFailed, RetryableError):
    """The workload failed in a way that may pass on another try (a crash of unknown cause, a lost Job)."""


class ModelRejected(PermanentError):
    """The pipeline ran to the end but the new model did not ship; ``result`` holds the whole run."""

    def __init__(self, message: str, result: object | None = None) -> None:
        self.result = result
        super().__init__(message)


class GateFailed(ModelRejected):
    """The quality gate rejected the challenger; ``reasons`` says which checks failed."""

    def __init__(self, reasons: list[str], result: object | None = None) -> None:
        self.reasons = list(reasons)
        super().__init__("quality gate failed: " + "; ".join(self.reasons), result)


class RolledBack(ModelRejected):
    """The canary failed a check on live traffic and was rolled back; the champion is unchanged."""


class ServiceUnavailable(RetryableError):
    """MLflow, S3 or the Prefect API could not be reached."""
