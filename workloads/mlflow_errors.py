"""One place that knows how MLflow says "not found", for the workloads and (through tasks/core) the flows.

MLflow answers a missing run, model, alias or version with an ``MlflowException`` whose ``error_code`` is
``RESOURCE_DOES_NOT_EXIST`` (the REST store), ``INVALID_PARAMETER_VALUE`` (the SQL store) or ``NOT_FOUND`` (some
REST answers). Anything else (an outage included) is left as it is, so a service that is down stays a failure
worth retrying. Here, not in tasks/, because the workloads run in the image without the flows' packages.
"""

from __future__ import annotations

NOT_FOUND_CODES = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"})


def is_not_found(exc: BaseException) -> bool:
    """Whether ``exc`` is MLflow's way of saying the thing asked for does not exist."""
    return getattr(exc, "error_code", None) in NOT_FOUND_CODES
