"""The MLflow model registry: versions, and the ``champion`` / ``challenger`` aliases serving and rollout read.

Alias meanings:

- ``champion``: the version that serves (``models:/<name>@champion``). It moves only when a version
  passes the gate with ``promote_on_pass`` (until the canary stage takes over that decision).
- ``challenger``: the newest evaluated version, passed or not. After a failed gate it marks the
  rejected version for inspection; after a promotion it sits on the same version as ``champion``.

Everything that can fail (loading, scoring, registering) happens before :func:`move_aliases`, which
is the stage's last registry write, so a failure never leaves aliases half moved.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field

from blocks.mlflow_tracking import MLflowTracking
from tasks.core.errors import ConfigurationError, RetryableError
from tasks.core.mlflow_errors import is_not_found, not_found_as
from tasks.tracking.runs import client_for
from workloads.tags import TAG_DATASET_VERSION, TAG_LABELS, TAG_MODEL_URI, TAG_TASK, TAG_TRAIN_RUN

if TYPE_CHECKING:  # MLflow is imported where it is used: loading the evaluate flow stays cheap
    from mlflow import MlflowClient

CHAMPION = "champion"
CHALLENGER = "challenger"
CLASSIFICATION = "classification"
MODEL_TASKS = (CLASSIFICATION, "regression")


class ChampionMoved(RetryableError):
    """Another evaluation moved ``champion`` while this one compared against it; re-run to compare again."""


class TrainedModel(BaseModel):
    """The model a training run logged, as the trainer's run tags describe it."""

    model_config = ConfigDict(frozen=True)

    run_id: str
    model_uri: str = Field(description="The logged model, e.g. models:/m-<id>.")
    labels: list[str] = Field(description="Class labels in output order; empty for a regression model.")
    dataset_version: str | None = None
    task: str = Field(default=CLASSIFICATION, description="classification or regression (the gpuflow.task tag).")


class RegisteredVersion(BaseModel):
    """One registry version and what is needed to load and score it."""

    model_config = ConfigDict(frozen=True)

    name: str
    version: str
    labels: list[str] = Field(description="Class labels in output order; empty for a regression model.")
    run_id: str | None = None
    task: str = Field(default=CLASSIFICATION, description="classification or regression (the gpuflow.task tag).")

    @property
    def model_uri(self) -> str:
        """Pinned to the version number, so a moving alias cannot change what was scored."""
        return f"models:/{self.name}/{self.version}"


def _parse_labels(raw: str | None, where: str) -> list[str]:
    if not raw:
        raise ConfigurationError(f"{where} has no {TAG_LABELS} tag: the class labels in logit order are unknown")
    try:
        labels = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"{where} has a {TAG_LABELS} tag that is not JSON: {raw[:80]!r}") from exc
    if not isinstance(labels, list) or not labels:
        raise ConfigurationError(f"{where} has a {TAG_LABELS} tag that is not a non-empty JSON list: {raw[:80]!r}")
    return [str(label) for label in labels]


def _parse_task(raw: str | None, where: str) -> str:
    """The model's task; no tag means classification (every model logged before the tag existed)."""
    task = raw or CLASSIFICATION
    if task not in MODEL_TASKS:
        raise ConfigurationError(f"{where} has a {TAG_TASK} tag {task!r}; expected one of {', '.join(MODEL_TASKS)}")
    return task


def _model_labels(task: str, raw: str | None, where: str) -> list[str]:
    """A classifier's class labels (required); a regressor has none."""
    return _parse_labels(raw, where) if task == CLASSIFICATION else []


def read_trained_model(client: MlflowClient, run_id: str) -> TrainedModel:
    """The model a training run logged; a missing run or tag is a ``ConfigurationError`` naming it."""
    with not_found_as(
        lambda: ConfigurationError(f"training run {run_id!r} does not exist in MLflow at {client.tracking_uri}")
    ):
        run = client.get_run(run_id)
    tags = run.data.tags
    model_uri = tags.get(TAG_MODEL_URI)
    if not model_uri:
        raise ConfigurationError(
            f"MLflow run {run_id!r} has no {TAG_MODEL_URI} tag: it logged no model (is it a finished training run?)"
        )
    where = f"MLflow run {run_id!r}"
    task = _parse_task(tags.get(TAG_TASK), where)
    return TrainedModel(
        run_id=run_id,
        model_uri=model_uri,
        labels=_model_labels(task, tags.get(TAG_LABELS), where),
        dataset_version=tags.get(TAG_DATASET_VERSION),
        task=task,
    )


def alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    """The version an alias points at, or ``None`` when the model or the alias does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if is_not_found(exc):
            return None
        raise
    version = model.aliases.get(alias)
    return str(version) if version is not None else None


def read_version(client: MlflowClient, name: str, version: str) -> RegisteredVersion:
    """A registry version with its task and labels (from the version's tags, else its training run's)."""
    found = client.get_model_version(name, version)
    tags = dict(found.tags)
    if found.run_id and not (TAG_LABELS in tags and TAG_TASK in tags):
        run_tags = client.get_run(found.run_id).data.tags
        tags = {**{k: run_tags[k] for k in (TAG_LABELS, TAG_TASK) if k in run_tags}, **tags}
    where = f"model {name!r} version {version}"
    task = _parse_task(tags.get(TAG_TASK), where)
    return RegisteredVersion(
        name=name,
        version=str(found.version),
        labels=_model_labels(task, tags.get(TAG_LABELS), where),
        run_id=found.run_id,
        task=task,
    )


def model_location(client: MlflowClient, model_uri: str) -> str:
    """Where a model's files are: resolves ``models:/`` and ``runs:/`` URIs through this client.

    MLflow's own ``models:/`` resolution reads the global tracking URI whatever URI it is given; going
    through an explicit client keeps concurrent stages on different tracking servers apart.
    """
    if model_uri.startswith("runs:/"):
        run_id, _, path = model_uri.removeprefix("runs:/").partition("/")
        return client.get_run(run_id).info.artifact_uri.rstrip("/") + (f"/{path}" if path else "")
    if not model_uri.startswith("models:/"):
        return model_uri
    rest = model_uri.removeprefix("models:/")
    if "@" in rest:
        name, _, alias = rest.partition("@")
        version = str(client.get_model_version_by_alias(name, alias).version)
    elif "/" in rest:
        name, _, version = rest.partition("/")
    else:  # models:/<logged model id>
        return str(client.get_logged_model(rest).artifact_location)
    return str(client.get_model_version_download_uri(name, version))


def _model_id(model_uri: str) -> str | None:
    """The logged-model id in ``models:/m-<id>``, which links the version to its LoggedModel."""
    rest = model_uri.removeprefix("models:/")
    return rest if rest != model_uri and rest.startswith("m-") and "/" not in rest else None


@task(name="resolve-training-run", cache_policy=NO_CACHE)
def trained_model(tracking: MLflowTracking, run_id: str) -> TrainedModel:
    """The training run's model URI and labels (``ConfigurationError`` when the run or its tags are missing)."""
    return read_trained_model(client_for(tracking), run_id)


@task(name="find-champion", cache_policy=NO_CACHE)
def current_champion(tracking: MLflowTracking, name: str) -> RegisteredVersion | None:
    """The version behind ``champion``, or ``None`` before the first promotion."""
    client = client_for(tracking)
    version = alias_version(client, name, CHAMPION)
    return read_version(client, name, version) if version else None


@task(name="register-version", cache_policy=NO_CACHE)
def register_version(
    tracking: MLflowTracking, name: str, model: TrainedModel, tags: dict[str, str]
) -> RegisteredVersion:
    """Create a version of ``name`` from the training run's model, the registered model too when missing.

    Idempotent per training run: evaluating the same run again reuses its version and updates its tags
    instead of registering a duplicate (so a retried flow does not inflate version numbers).
    """
    from mlflow.exceptions import MlflowException

    if "'" in name:
        raise ConfigurationError(f"model name {name!r} contains a quote, which MLflow filters cannot express")
    client = client_for(tracking)
    try:
        client.create_registered_model(name, description="Registered by gpuflow's evaluate stage.")
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    all_tags = {**tags, TAG_TRAIN_RUN: model.run_id, TAG_MODEL_URI: model.model_uri, TAG_TASK: model.task}
    if model.task == CLASSIFICATION:
        all_tags[TAG_LABELS] = json.dumps(model.labels)
    for existing in client.search_model_versions(f"name = '{name}' and run_id = '{model.run_id}'"):
        if existing.tags.get(TAG_MODEL_URI) == model.model_uri:
            for key, value in all_tags.items():
                client.set_model_version_tag(name, str(existing.version), key, value)
            return _registered(name, str(existing.version), model)
    # The source is the model's resolved location, not models:/m-<id>: MLflow's SQL registry store
    # resolves models:/ sources through the *global* tracking URI, which is not the one in use here.
    created = client.create_model_version(
        name,
        source=model_location(client, model.model_uri),
        run_id=model.run_id,
        tags=all_tags,
        description=f"Trained in MLflow run {model.run_id} ({model.model_uri}).",
        model_id=_model_id(model.model_uri),
    )
    return _registered(name, str(created.version), model)


def _registered(name: str, version: str, model: TrainedModel) -> RegisteredVersion:
    return RegisteredVersion(name=name, version=version, labels=model.labels, run_id=model.run_id, task=model.task)


@task(name="move-aliases", cache_policy=NO_CACHE)
def move_aliases(
    tracking: MLflowTracking, name: str, version: str, *, promote: bool, expected_champion: str | None
) -> str | None:
    """Point ``challenger`` at ``version`` and, when ``promote``, ``champion`` too; returns the champion after.

    ``expected_champion`` is the version the gate compared against. If ``champion`` moved since, the
    comparison is stale: nothing is moved and :class:`ChampionMoved` is raised. ``challenger`` is set
    before ``champion``, so an error between the two leaves the state of a not-promoted version.
    """
    client = client_for(tracking)
    current = alias_version(client, name, CHAMPION)
    if promote and current != expected_champion:
        raise ChampionMoved(
            f"champion of {name!r} moved from version {expected_champion} to {current} during this evaluation; "
            "re-run evaluate to compare against the new champion"
        )
    client.set_registered_model_alias(name, CHALLENGER, version)
    if not promote:
        return current
    client.set_registered_model_alias(name, CHAMPION, version)
    return version
