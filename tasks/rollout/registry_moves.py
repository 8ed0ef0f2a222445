"""Acting on the rollout's decision in the model registry: promote moves ``champion``, retire removes ``challenger``.

Both run after serving has moved (the registry then records what serves) and leave every alias as it was when
something changed under them (:class:`ChampionMoved`).
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from blocks.mlflow_tracking import MLflowTracking
from tasks.rollout.target import RolloutTarget
from tasks.tracking.model_registry import CHALLENGER, CHAMPION, ChampionMoved, alias_version
from tasks.tracking.runs import client_for

__all__ = ["promote", "retire"]


@task(name="promote-candidate", cache_policy=NO_CACHE)
def promote(tracking: MLflowTracking, target: RolloutTarget) -> str:
    """Move ``champion`` to the candidate, unless it moved since the rollout read it (:class:`ChampionMoved`)."""
    client = client_for(tracking)
    expected = target.champion.version if target.champion else None
    current = alias_version(client, target.model_name, CHAMPION)
    if current != expected:
        raise ChampionMoved(
            f"champion of {target.model_name!r} moved from version {expected} to {current} during the rollout; "
            "nothing was promoted"
        )
    client.set_registered_model_alias(target.model_name, CHAMPION, target.candidate.version)
    return target.candidate.version


@task(name="retire-candidate", cache_policy=NO_CACHE)
def retire(tracking: MLflowTracking, target: RolloutTarget) -> str | None:
    """Remove ``challenger`` from the rolled-back version (``champion`` untouched); returns the champion."""
    client = client_for(tracking)
    if alias_version(client, target.model_name, CHALLENGER) == target.candidate.version:
        client.delete_registered_model_alias(target.model_name, CHALLENGER)
    return alias_version(client, target.model_name, CHAMPION)
