"""One rollout per registered model at a time: a one-slot Prefect global concurrency limit per model.

The limit is named ``gpuflow-rollout-<model>`` and created on first use (``concurrency`` silently skips limits
that do not exist); a rollout that waits longer than its ``lock_timeout_seconds`` fails with
:class:`RolloutLocked`, a retryable error naming the limit.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator

from tasks.core.errors import ConfigurationError, RetryableError

__all__ = ["RolloutLocked", "lock_name", "rollout_lock"]


class RolloutLocked(RetryableError):
    """Another rollout of the same model held the lock for longer than this one would wait."""


def lock_name(model_name: str) -> str:
    """The Prefect global concurrency limit that serialises rollouts of one registered model."""
    return "gpuflow-rollout-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", model_name)


def _ensure_limit(name: str) -> None:
    """Create the one-slot limit if missing (``concurrency`` silently skips limits that do not exist)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            existing = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):  # another rollout created it first
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
            return
        if existing.limit != 1 or not existing.active:
            client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(limit=1, active=True))


def _slot_taken(name: str) -> bool:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(name)
    return limit.active_slots >= limit.limit


@contextlib.contextmanager
def rollout_lock(
    model_name: str, timeout_seconds: float, announce: Callable[[str], None] | None = None
) -> Iterator[None]:
    """Hold the model's rollout slot; :class:`RolloutLocked` after ``timeout_seconds`` of waiting.

    When the slot is taken, ``announce`` gets one line saying what the rollout waits for.
    """
    from prefect.concurrency.sync import concurrency

    if timeout_seconds <= 0:
        raise ConfigurationError(f"lock_timeout_seconds must be positive, got {timeout_seconds}")
    name = lock_name(model_name)
    _ensure_limit(name)
    acquired = False
    try:
        with contextlib.ExitStack() as slot:
            if announce is not None and _slot_taken(name):
                announce(
                    f"waiting for another rollout of {model_name!r} to finish: one rollout per model at a "
                    f"time (Prefect concurrency limit {name!r}); waiting up to {timeout_seconds:g} s"
                )
            slot.enter_context(concurrency(name, occupy=1, timeout_seconds=timeout_seconds, strict=True))
            acquired = True
            yield
    except TimeoutError as exc:  # Prefect's AcquireConcurrencySlotTimeoutError, or one from the body
        if acquired:
            raise
        raise RolloutLocked(
            f"another rollout of {model_name!r} held the concurrency limit {name!r} for more than "
            f"{timeout_seconds:g}s (lock_timeout_seconds); try again once it has finished"
        ) from exc
