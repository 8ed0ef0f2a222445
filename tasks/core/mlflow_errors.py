"""One place that knows how MLflow says "not found", so every caller maps it the same way.

MLflow answers a missing run, model, alias or version with an ``MlflowException`` whose ``error_code`` is
``RESOURCE_DOES_NOT_EXIST`` (the REST store) or ``INVALID_PARAMETER_VALUE`` (the SQL store). Anything else (an
outage included) is left as it is, so a service that is down stays a failure worth retrying.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

NOT_FOUND_CODES = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"})


def is_not_found(exc: BaseException) -> bool:
    """Whether ``exc`` is MLflow's way of saying the thing asked for does not exist."""
    return getattr(exc, "error_code", None) in NOT_FOUND_CODES


@contextlib.contextmanager
def not_found_as(error: Callable[[], Exception]) -> Iterator[None]:
    """Raise ``error()`` (chained) for an MLflow "not found" inside the block; let every other error through.

    Example:
        ```python
        with not_found_as(lambda: ConfigurationError(f"no MLflow run {run_id!r}")):
            run = client.get_run(run_id)
        ```
    """
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        if is_not_found(exc):
            raise error() from exc
        raise
