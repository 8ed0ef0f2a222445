"""What a rollout rolls out: the candidate the gate passed, the champion it would replace, the traffic's dataset.

The candidate is the given version or the one behind ``challenger``; a version the quality gate failed (or never
saw) is refused before any server starts.
"""

from __future__ import annotations

import json

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict

from blocks.data_store import DataStore
from blocks.mlflow_tracking import MLflowTracking
from tasks.core import settings
from tasks.core.errors import ConfigurationError, GateFailed, ServiceUnavailable
from tasks.core.mlflow_errors import is_not_found
from tasks.tracking.model_registry import CHALLENGER, CHAMPION, RegisteredVersion, alias_version, read_version
from tasks.tracking.runs import client_for
from workloads.tags import TAG_DATASET_URI, TAG_DATASET_VERSION, TAG_GATE_PASSED, TAG_GATE_REASONS

__all__ = ["RolloutTarget", "dataset_uri", "resolve_target"]


class RolloutTarget(BaseModel):
    """The candidate and the champion it would replace, as the registry says before the rollout."""

    model_config = ConfigDict(frozen=True)

    model_name: str
    candidate: RegisteredVersion
    champion: RegisteredVersion | None
    dataset_version: str | None
    dataset_uri: str | None = None  # the dataset the evaluate stage scored it on (versions evaluated before: None)

    @property
    def task(self) -> str:
        """The candidate's task; resolve_target refuses a champion of another task."""
        return self.candidate.task

    def served_models(self) -> dict[str, str]:
        """Who -> model URI of each version the rollout serves (the champion first): the replayed rows fit both."""
        served = {f"the champion (version {self.champion.version})": self.champion.model_uri} if self.champion else {}
        return {**served, f"the candidate (version {self.candidate.version})": self.candidate.model_uri}


@task(name="resolve-rollout-target", cache_policy=NO_CACHE)
def resolve_target(tracking: MLflowTracking, model_name: str, candidate_version: str | None) -> RolloutTarget:
    """The candidate (given, or the ``challenger`` alias) and the champion; refuses a candidate the gate failed."""
    from mlflow.exceptions import MlflowException

    client = client_for(tracking)
    version = candidate_version or alias_version(client, model_name, CHALLENGER)
    if not version:
        raise ConfigurationError(
            f"model {model_name!r} has no {CHALLENGER!r} alias: run evaluate first, or pass candidate_version"
        )
    try:
        found = client.get_model_version(model_name, version)
    except MlflowException as exc:
        if not is_not_found(exc):  # an outage, not a missing version: worth another try
            raise ServiceUnavailable(f"MLflow could not read {model_name!r} version {version!r}: {exc}") from exc
        raise ConfigurationError(f"model {model_name!r} has no version {version!r}: {exc}") from exc
    gate = found.tags.get(TAG_GATE_PASSED)
    if gate != "true":
        if gate is None:
            raise ConfigurationError(
                f"{model_name!r} version {version} has no {TAG_GATE_PASSED} tag: only versions the evaluate "
                "stage registered and gated are rolled out"
            )
        raise GateFailed(json.loads(found.tags.get(TAG_GATE_REASONS) or "[]") or ["the quality gate failed"])
    champion_version = alias_version(client, model_name, CHAMPION)
    if champion_version == version:
        raise ConfigurationError(f"{model_name!r} version {version} is already the champion: nothing to roll out")
    candidate = read_version(client, model_name, version)
    champion = read_version(client, model_name, champion_version) if champion_version else None
    if champion is not None and champion.task != candidate.task:
        raise ConfigurationError(
            f"{model_name!r} version {version} is a {candidate.task} model but the champion (version "
            f"{champion.version}) is a {champion.task} model: a canary compares answers of the same kind"
        )
    return RolloutTarget(
        model_name=model_name,
        candidate=candidate,
        champion=champion,
        dataset_version=found.tags.get(TAG_DATASET_VERSION),
        dataset_uri=found.tags.get(TAG_DATASET_URI) or None,
    )


def dataset_uri(store: DataStore, target: RolloutTarget) -> str:
    """The dataset the candidate was evaluated on (its tag); for versions evaluated before that tag existed, the
    default dataset name at the version's dataset version."""
    if target.dataset_uri:
        return target.dataset_uri
    if not target.dataset_version:
        raise ConfigurationError(
            f"{target.model_name!r} version {target.candidate.version} has no {TAG_DATASET_VERSION} tag: "
            "pass dataset_uri (a prepared dataset whose test split is replayed as traffic)"
        )
    return f"{store.root}/datasets/{settings.DEFAULT_DATASET_NAME}/{target.dataset_version}"
