"""The ``prepare`` flow: raw CSV/Parquet -> validated, split, versioned dataset -> ``gpuflow.dataset.prepared``.

Orchestration only: blocks are resolved here, the work is done by the tasks in ``tasks.data.preparation``.
"""

from __future__ import annotations

import time
from typing import Annotated

from prefect import flow, get_run_logger
from pydantic import Field

from blocks.data_store import resolve_data_store
from blocks.mlflow_tracking import resolve_tracking
from flows.prefect_server import own_prefect_ephemeral_server
from tasks.core import settings
from tasks.core.dataset_spec import DatasetSpec
from tasks.core.errors import ConfigurationError
from tasks.data.demo import digits_schema
from tasks.data.preparation import PreparedDataset, emit_prepared, log_prepared, prepare_dataset_task, resolve_raw_data
from tasks.data.schema import DatasetSchema, PrepareParams
from tasks.data.spec import resolve_spec
from tasks.reporting.stage_telemetry import stage_telemetry
from tasks.tracking import runs

own_prefect_ephemeral_server()  # flows called from Python use a server gpuflow owns (no leak, no race)

Fraction = Annotated[float, Field(gt=0, lt=1)]


@flow(name="prepare")
def prepare(
    data_uri: str,
    dataset_name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")] = settings.DEFAULT_DATASET_NAME,
    val_fraction: Fraction = 0.15,
    test_fraction: Fraction = 0.15,
    seed: int = 42,
    drop_duplicates: bool = False,
    data_store: str | None = None,
    tracking: str | None = None,
    parent_run_id: str | None = None,
    dataset_schema: DatasetSchema | None = None,
    dataset_spec: str | DatasetSpec | None = None,
) -> PreparedDataset:
    """Validate raw data against its schema, split it (stratified) and publish an immutable dataset version.

    The version is a hash of the raw bytes and these parameters: preparing the same input again finds the
    published version, writes nothing and reports cache_hit=True. Bad input fails with a message naming the
    column, row and what was expected, and publishes nothing. Emits gpuflow.dataset.prepared.

    Args:
        data_uri: Raw data, CSV or Parquet: a path, file://..., s3://bucket/key, a glob of parts (data/*.csv), an
            S3 prefix of parts (s3://bucket/raw/), or "demo" for the bundled digits.
        dataset_name: Name of the dataset: the folder under <store>/datasets/ and the event's resource.
        val_fraction: Share of each class that goes to the validation split.
        test_fraction: Share of each class that goes to the test split.
        seed: Seed of the split; part of the dataset version.
        drop_duplicates: Drop rows that repeat an earlier row (keeping the first) instead of rejecting the data.
        data_store: Saved DataStore block name; empty uses GPUFLOW_HOME/store.
        tracking: Saved MLflowTracking block name; empty uses MLFLOW_TRACKING_URI or SQLite under GPUFLOW_HOME.
        parent_run_id: MLflow run of the pipeline this stage belongs to; empty makes a top-level run.
        dataset_schema: Columns, labels and value range the raw data must have; empty uses the digits schema.
        dataset_spec: The dataset spec the raw data is read and checked by (typed columns, a class or float
            target, split, duplicates): a YAML/JSON file, a saved DatasetSpec block name, or a spec; empty uses
            dataset_schema (the digits demo by default). Part of the dataset version.
    """
    logger = get_run_logger()
    spec = resolve_spec(dataset_spec)  # a bad spec fails here, before any data is read
    if spec is not None and dataset_schema is not None:
        raise ConfigurationError("give dataset_spec or dataset_schema, not both")
    store = resolve_data_store(data_store)
    tracking_cfg = resolve_tracking(tracking)
    params = PrepareParams(
        val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, drop_duplicates=drop_duplicates
    )
    with (
        runs.stage_run(tracking_cfg, "prepare", parent_run_id=parent_run_id) as run_id,
        stage_telemetry(tracking_cfg, run_id, "prepare") as telemetry,
    ):
        logger.info("prepare: MLflow run %s; GPUs: %s", run_id, runs.record_gpu_inventory(tracking_cfg, run_id))
        started = time.perf_counter()
        source_uri = resolve_raw_data(data_uri, store)
        result = prepare_dataset_task(
            source_uri,
            store=store,
            name=dataset_name,
            schema=dataset_schema or digits_schema(),
            params=params,
            spec=spec,
        )
        seconds = round(time.perf_counter() - started, 3)
        log_prepared(tracking_cfg, run_id, result, seconds)
    manifest = result.manifest
    prepared = PreparedDataset(
        dataset_name=manifest.name,
        dataset_version=manifest.version,
        dataset_uri=result.dataset_uri,
        cache_hit=result.cache_hit,
        rows=dict(manifest.rows),
        source_uri=result.source_uri,
        mlflow_run_id=run_id,
        seconds=seconds,
        duplicates_found=int(manifest.duplicates.get("found", 0)),
        duplicates_dropped=int(manifest.duplicates.get("dropped", 0)),
        task=manifest.task,
        telemetry=telemetry.as_dict(),
    )
    emit_prepared(prepared)
    logger.info(
        "dataset %s version %s at %s: rows %s%s",
        dataset_name, manifest.version, result.dataset_uri, manifest.rows, " (cache hit)" if result.cache_hit else "",
    )  # fmt: skip
    return prepared
