"""Prefect tasks of the prepare stage, and what the stage hands to the next one.

The logic lives in ``tasks.data.publish`` (no Prefect, so the benchmark and tests can call it directly);
this module wraps it as tasks, records the result in MLflow (params, metrics, ``mlflow.data`` inputs
with contexts train/val/test) and emits ``gpuflow.dataset.prepared``.
"""

from __future__ import annotations

import functools
import json
import time
import warnings
from typing import TYPE_CHECKING, Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field

from blocks.data_store import DataStore
from blocks.mlflow_tracking import MLflowTracking
from tasks.core.dataset_spec import DatasetSpec
from tasks.data.demo import resolve_data_uri
from tasks.data.publish import PrepareResult, prepare_dataset
from tasks.data.schema import DatasetSchema, PrepareParams
from tasks.data.spec import prepare_with_spec
from tasks.tracking import events, runs
from workloads.dataset import DatasetManifest
from workloads.tags import TAG_CACHE_HIT, TAG_DATASET_URI

if TYPE_CHECKING:  # MLflow is imported where it is used: loading the prepare flow stays cheap
    from mlflow import MlflowClient
    from mlflow.entities import DatasetInput


class PreparedDataset(BaseModel):
    """The prepare stage's result: which dataset version to train on and where it is."""

    model_config = ConfigDict(frozen=True)

    dataset_name: str = Field(description="Name of the dataset (folder under <store>/datasets/).")
    dataset_version: str = Field(description="Content hash of raw data and preparation parameters (16 hex).")
    dataset_uri: str = Field(description="<store>/datasets/<name>/<version>; holds the splits and manifest.json.")
    cache_hit: bool = Field(description="True when this version was already published and nothing was written.")
    rows: dict[str, int] = Field(description="Rows per split: train, val, test.")
    source_uri: str = Field(description="The raw file the dataset was prepared from.")
    mlflow_run_id: str = Field(description="MLflow run of this prepare stage (child of the pipeline run).")
    seconds: float = Field(description="Wall time of the stage's own work.")
    duplicates_found: int = Field(default=0, description="Rows repeating an earlier row in the raw data.")
    duplicates_dropped: int = Field(default=0, description="Duplicate rows dropped (drop_duplicates=True).")
    task: str = Field(default="classification", description="classification or regression, from the dataset spec.")
    telemetry: dict[str, Any] = Field(
        default_factory=dict, description="GPU telemetry of the stage's work, TelemetrySummary.as_dict()."
    )

    def event_payload(self) -> dict[str, Any]:
        """What ``gpuflow.dataset.prepared`` carries: everything the train stage needs, no secrets."""
        return {
            "dataset_name": self.dataset_name,
            "dataset_uri": self.dataset_uri,
            "dataset_version": self.dataset_version,
            "rows": dict(self.rows),
            "cache_hit": self.cache_hit,
            "source_uri": self.source_uri,
            "task": self.task,
        }


@task(name="resolve-raw-data", cache_policy=NO_CACHE)
def resolve_raw_data(data_uri: str, store: DataStore) -> str:
    """``"demo"`` -> the digits CSV under the store (written once); any other URI unchanged."""
    uri = resolve_data_uri(data_uri, store.root, store.object_store())
    if uri != data_uri:
        get_run_logger().info("demo data: using the digits CSV at %s", uri)
    return uri


@task(name="prepare-dataset", cache_policy=NO_CACHE)
def prepare_dataset_task(
    source_uri: str,
    *,
    store: DataStore,
    name: str,
    schema: DatasetSchema,
    params: PrepareParams,
    spec: DatasetSpec | None = None,
) -> PrepareResult:
    """Hash, validate, split and publish (or find the published version); see ``tasks.data.publish``.

    With a dataset spec, the data is read and checked by it (``tasks.data.spec``) and ``schema`` is unused.
    """
    if spec is not None:
        return prepare_with_spec(
            source_uri,
            store=store.object_store(),
            root=store.root,
            name=name,
            spec=spec,
            params=params,
            log=get_run_logger(),
            created_by=runs.pipeline_version(),
        )
    return prepare_dataset(
        source_uri,
        store=store.object_store(),
        root=store.root,
        name=name,
        schema=schema,
        params=params,
        log=get_run_logger(),
        created_by=runs.pipeline_version(),
    )


@task(name="log-dataset-to-mlflow", cache_policy=NO_CACHE)
def log_prepared(tracking: MLflowTracking, run_id: str, result: PrepareResult, seconds: float) -> None:
    """Params, metrics, tags, the manifest as an artifact, and one ``mlflow.data`` input per split."""
    manifest = result.manifest
    from mlflow.entities import Metric, Param, RunTag

    client = runs.client_for(tracking)
    params = {
        "dataset_name": manifest.name,
        "dataset_version": manifest.version,
        "source_uri": manifest.source_uri,
        "val_fraction": manifest.parameters.get("val_fraction"),
        "test_fraction": manifest.parameters.get("test_fraction"),
        "seed": manifest.parameters.get("seed"),
        "drop_duplicates": manifest.parameters.get("drop_duplicates"),
        "task": manifest.task,
    }
    metrics = {
        **{f"rows_{split}": float(n) for split, n in manifest.rows.items()},
        "duplicates_found": float(manifest.duplicates.get("found", 0)),
        "duplicates_dropped": float(manifest.duplicates.get("dropped", 0)),
        "cache_hit": 1.0 if result.cache_hit else 0.0,
        "prepare_seconds": float(seconds),
    }
    tags = {
        runs.TAG_DATASET_VERSION: manifest.version,
        TAG_DATASET_URI: result.dataset_uri,
        TAG_CACHE_HIT: str(result.cache_hit).lower(),
    }
    client.log_batch(
        run_id,
        metrics=[Metric(key, value, _now_ms(), 0) for key, value in metrics.items()],
        params=[Param(key, str(value)) for key, value in params.items()],
        tags=[RunTag(key, value) for key, value in tags.items()],
    )
    _log_inputs(client, run_id, dataset_inputs(manifest))
    client.log_dict(run_id, json.loads(manifest.to_json()), "dataset/manifest.json")


def _log_inputs(client: MlflowClient, run_id: str, inputs: list[DatasetInput], attempts: int = 3) -> None:
    """``log_inputs``, again when a concurrent prepare created the same dataset row first.

    MLflow's SQL store gets-or-creates each dataset row without a lock, so two prepares of one dataset in one
    experiment can both try to insert it; the loser's retry finds the winner's row.
    """
    from mlflow.exceptions import MlflowException

    for attempt in range(attempts):
        try:
            client.log_inputs(run_id, datasets=inputs)
            return
        except MlflowException as exc:
            if "UNIQUE constraint failed" not in str(exc) or attempt == attempts - 1:
                raise


def dataset_inputs(manifest: DatasetManifest) -> list[DatasetInput]:
    """One MLflow dataset per split (name ``<name>-<split>``, digest = version, source = the raw file URI)."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.types import ColSpec, DataType, Schema
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    with warnings.catch_warnings():  # "" and "file" schemes both map to the local source: harmless
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        source = resolve_dataset_source(manifest.source_uri)
    kind = DataType.float if manifest.schema.get("dtype") == "float32" else DataType.double
    columns = [ColSpec(kind, feature) for feature in manifest.features]
    target = DataType.double if manifest.task == "regression" else DataType.long
    schema = Schema([*columns, ColSpec(target, manifest.label)])
    inputs = []
    for split, rows in manifest.rows.items():
        dataset = _split_dataset_class()(
            source=source,
            name=f"{manifest.name}-{split}",
            digest=manifest.version,
            schema=schema,
            profile={
                "num_rows": rows,
                "num_elements": rows * (len(manifest.features) + 1),
                "class_balance": manifest.class_balance.get(split, {}),
            },
        )
        inputs.append(
            DatasetInput(dataset=dataset._to_mlflow_entity(), tags=[InputTag(key=MLFLOW_DATASET_CONTEXT, value=split)])
        )
    return inputs


@functools.cache
def _split_dataset_class() -> type[Any]:
    """``SplitDataset``, defined on first use: subclassing MLflow's MetaDataset needs MLflow imported."""
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.types import Schema

    class SplitDataset(MetaDataset):
        """A metadata-only MLflow dataset that also reports its profile (rows, class balance)."""

        def __init__(self, *, source: Any, name: str, digest: str, schema: Schema, profile: dict[str, Any]) -> None:
            self._profile = profile
            super().__init__(source=source, name=name, digest=digest, schema=schema)

        @property
        def profile(self) -> Any | None:
            return self._profile

        def to_dict(self) -> dict[str, str]:
            config: dict[str, str] = super().to_dict()
            config["profile"] = json.dumps(self._profile)
            return config

    return SplitDataset


def emit_prepared(result: PreparedDataset) -> None:
    """``gpuflow.dataset.prepared`` on resource ``gpuflow.dataset.<name>``; triggers the train stage."""
    events.emit(events.DATASET_PREPARED, events.dataset_resource(result.dataset_name), result.event_payload())


def _now_ms() -> int:
    return int(time.time() * 1000)
