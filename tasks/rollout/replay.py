"""The labelled rows the canary replays: a bounded sample of the dataset's test split, read a row group at a time.

A step sends at most ``rate x window`` requests (``CanaryPolicy.step_requests``), so the replay holds that many
rows (:func:`replay_rows`: at least ``MIN_REPLAY_ROWS``, so a small split is replayed whole whatever the window;
at most ``MAX_REPLAY_ROWS``), never the whole split: a split that fits is replayed whole, in file order; a larger
one gives a seeded uniform sample of rows, kept in file order and read one row group at a time.

Features are sent in the form the models' signatures ask for (workloads/model_input.py, the one place that decides
it for every reader): as the split stores them (float32 rows; a tensor column's elements flattened, which the
server reshapes; a category column's codes), or, for a column signature, its columns in its order with a category
it takes as a ``string`` given as the vocabulary's values. Stable and canary get the same requests (on a cluster
through one Service), so both versions must take the same form; two that do not are a ConfigurationError naming
both forms. Labels are put in the model's answer space: a classifier answers the values of its ``gpuflow.labels``
tag, which are either the split's stored label values or, for a dataset whose label column stores class indices
(string classes), the class names from the manifest. A regressor's labels are the float targets.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from blocks.data_store import DataStore
from blocks.mlflow_tracking import MLflowTracking
from tasks.core.errors import ConfigurationError, DataValidationError
from tasks.tracking.model_signature import read_mlmodel
from workloads.dataset import (
    DatasetCorrupt,
    DatasetManifest,
    DatasetNotFound,
    SplitRowGroups,
    load_manifest,
    open_split,
)
from workloads.model_input import (
    InputMismatch,
    category_vocabularies,
    model_rows,
    request_form,
    signature_columns,
)
from workloads.store import ObjectStore

if TYPE_CHECKING:
    from mlflow.types import Schema

__all__ = ["MAX_REPLAY_ROWS", "MIN_REPLAY_ROWS", "ReplaySplit", "load_replay_split", "read_replay_split", "replay_rows"]

MIN_REPLAY_ROWS = 10_000  # a test split this small is replayed whole, as it always was
MAX_REPLAY_ROWS = 100_000  # whatever the policy: beyond it a step replays rows again, in a new order each pass
SAMPLE_SEED = 0


def replay_rows(step_requests: int) -> int:
    """How many rows of the test split the replay keeps for steps of ``step_requests`` requests."""
    return min(max(step_requests, MIN_REPLAY_ROWS), MAX_REPLAY_ROWS)


@dataclass(frozen=True)
class ReplaySplit:
    """The replayed rows: request rows and each row's label in the model's answer space; ``split_rows`` is the
    test split's size (more than :attr:`rows` when the replay is a sample of it)."""

    dataset_uri: str
    version: str
    task: str
    features: np.ndarray  # float32 [N, F], or objects [N, C] when a category is sent as its string
    labels: list[Any]  # str for classification (compared as text), float for regression
    split_rows: int = 0

    @property
    def rows(self) -> int:
        return int(self.features.shape[0])


def _class_labels(stored: np.ndarray, manifest: DatasetManifest, model_labels: Sequence[Any]) -> list[str]:
    """Labels as the model answers them: stored values, or class names when the split stores indices."""
    values = [str(v) for v in stored.tolist()]
    target = manifest.target
    names = [str(name) for name in manifest.class_names]
    answers = {str(label) for label in model_labels}
    if target.get("stored") == "index" and names and answers and answers <= set(names) and not answers <= set(values):
        return [names[int(v)] for v in stored.tolist()]
    return values


def _rows(features: np.ndarray, manifest: DatasetManifest, schemas: Mapping[str, Schema | None]) -> np.ndarray:
    """The rows every model in ``schemas`` (who -> input schema) takes; models taking different forms are refused."""
    vocabularies = category_vocabularies(manifest)
    names = manifest.features
    found = []
    for who, schema in schemas.items():
        try:
            columns = signature_columns(schema, names)
            found.append((who, columns, request_form(columns, names, vocabularies)))
        except InputMismatch as exc:
            raise ConfigurationError(f"{who}: {exc}") from exc
    if not found:
        return model_rows(features, names, None, vocabularies)
    who, columns, form = found[0]
    for other, _, other_form in found[1:]:
        if other_form != form:
            raise ConfigurationError(
                f"{who} and {other} take the test rows in different forms ({_form(form)}, against "
                f"{_form(other_form)}): the canary sends both the same requests; roll out a version whose "
                "signature takes the rows as the champion's does"
            )
    try:
        return model_rows(features, names, columns, vocabularies)
    except InputMismatch as exc:
        raise ConfigurationError(f"{who}: {exc}") from exc


def _form(form: tuple[tuple[str, ...], tuple[str, ...]]) -> str:
    columns, strings = form
    shown = ", ".join(columns[:6]) + (f", ... ({len(columns)} in all)" if len(columns) > 6 else "")
    return f"columns [{shown}], " + (f"categories {list(strings)} as strings" if strings else "categories as codes")


def _sample(groups: SplitRowGroups, max_rows: int | None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Every row group whole when the split fits in ``max_rows``; else the seeded sample's rows of each group
    that holds some (groups without any are not read)."""
    if max_rows is None or groups.rows <= max_rows:
        yield from groups
        return
    picked = np.sort(np.random.default_rng(SAMPLE_SEED).choice(groups.rows, size=max_rows, replace=False))
    start = 0
    for index, n in enumerate(groups.group_rows):
        lo, hi = np.searchsorted(picked, [start, start + n])
        if hi > lo:
            x, y = groups.arrays(index)
            rows = picked[lo:hi] - start
            yield x[rows], y[rows]
        start += n


def read_replay_split(
    store: ObjectStore,
    dataset_uri: str,
    model_task: str,
    model_labels: Sequence[Any],
    schemas: Mapping[str, Schema | None] | None = None,
    max_rows: int | None = None,
) -> ReplaySplit:
    """The test split of a published dataset for a model of ``model_task``, at most ``max_rows`` rows of it
    (``None``: all, still capped at ``MAX_REPLAY_ROWS``); a task that differs from the dataset's is a
    ConfigurationError (a regressor cannot be judged on class labels, nor the reverse).

    ``schemas`` (who, e.g. "the candidate (version 2)" -> its MLflow input schema) shape the rows; none: the rows
    as stored."""
    base = dataset_uri.rstrip("/")
    limit = min(max_rows, MAX_REPLAY_ROWS) if max_rows is not None else MAX_REPLAY_ROWS
    if limit < 1:
        raise ConfigurationError(f"the canary replay needs at least one row; max_rows is {max_rows}")
    try:
        manifest = load_manifest(base, store)
        if manifest.task != model_task:
            raise ConfigurationError(
                f"dataset {base} is a {manifest.task} dataset but the model is a {model_task} model (its "
                "gpuflow.task tag): replay the dataset the model was trained and evaluated on"
            )
        with open_split(base, "test", store, manifest=manifest) as groups:
            chunks = list(_sample(groups, limit))
            split_rows = groups.rows
    except DatasetNotFound as exc:
        raise ConfigurationError(f"{exc} (run prepare first, or check dataset_uri)") from exc
    except DatasetCorrupt as exc:
        raise DataValidationError(str(exc)) from exc
    features = np.concatenate([x for x, _ in chunks]) if chunks else np.empty((0, len(manifest.features)), np.float32)
    stored = np.concatenate([y for _, y in chunks]) if chunks else np.empty(0)
    if model_task == "regression":
        labels: list[Any] = [float(v) for v in stored.tolist()]
    else:
        labels = _class_labels(stored, manifest, model_labels)
    try:
        rows = _rows(features, manifest, schemas or {})
    except DatasetCorrupt as exc:
        raise DataValidationError(f"{base}: {exc}") from exc
    return ReplaySplit(base, manifest.version, manifest.task, rows, labels, split_rows)


@task(name="read-replay-split", cache_policy=NO_CACHE)
def load_replay_split(
    store: DataStore,
    dataset_uri: str,
    model_task: str,
    model_labels: list[Any],
    tracking: MLflowTracking | None = None,
    models: dict[str, str] | None = None,
    max_rows: int | None = None,
) -> ReplaySplit:
    """At most ``max_rows`` rows of the dataset's test split as the canary's labelled traffic, in the form the
    ``models`` (who -> model URI, read through ``tracking``) take. A model without a readable MLmodel file does not
    shape the rows: its server refuses to start, and the canary is rolled back for it."""
    schemas = {}
    if tracking is not None:
        for who, uri in (models or {}).items():
            found = read_mlmodel(tracking, uri)
            if found is not None:
                schemas[who] = found.get_input_schema()
    return read_replay_split(store.object_store(), dataset_uri, model_task, model_labels, schemas, max_rows)
