"""MLflow's "not found" mapped to gpuflow's errors: the rule itself (``is_not_found``) is workloads/mlflow_errors.py's,
shared with the trainer, the launcher and the server."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from workloads.mlflow_errors import NOT_FOUND_CODES, is_not_found

__all__ = ["NOT_FOUND_CODES", "is_not_found", "not_found_as"]


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
