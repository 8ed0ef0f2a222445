"""The prepare flow end to end on the embedded defaults: dataset, cache hit, MLflow record and event."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

import pytest
from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

from blocks.mlflow_tracking import MLflowTracking
from flows.prepare import prepare
from tasks.core import settings
from tasks.tracking.events import DATASET_PREPARED
from tasks.tracking.runs import experiment_id
from tests.fixtures.flow_env import migrated_home, mlflow_db_template, no_heartbeat_wait  # noqa: F401 (fixtures used by name)
from tests.fixtures.prefect_events import wait_for_event
from tests.fixtures.raw_files import csv_bytes, digits_rows
from workloads.dataset import load_manifest, read_split

pytestmark = pytest.mark.usefixtures("prefect_api", "no_heartbeat_wait", "migrated_home")


def flow_logs(flow_run_id: UUID, containing: str, timeout: float = 15.0) -> list[str]:
    """Log lines of a flow run (and its task runs) from the Prefect API, waiting for one containing a text."""
    deadline = time.monotonic() + timeout
    while True:
        with get_client(sync_client=True) as client:
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        lines = [log.message for log in logs]
        if any(containing in line for line in lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.25)  # logs are shipped to the API in the background


def files_under(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_demo_prepares_digits_once_then_hits_the_cache(gpuflow_home: Path) -> None:
    since = datetime.now(UTC)
    first = prepare("demo")
    store = gpuflow_home / "store"
    assert (store / "raw" / "digits.csv").is_file()
    assert first.cache_hit is False
    assert first.dataset_uri == (store / "datasets" / "digits" / first.dataset_version).as_uri()
    assert sum(first.rows.values()) == 1797 and first.rows["train"] > first.rows["val"] > 0
    assert first.source_uri.endswith("/raw/digits.csv")
    written = files_under(store)

    state = prepare("demo", return_state=True)
    second = state.result()
    assert second.cache_hit is True
    assert second.dataset_version == first.dataset_version
    assert files_under(store) == written
    assert state.state_details.flow_run_id is not None
    assert any("cache hit" in line for line in flow_logs(state.state_details.flow_run_id, "cache hit"))

    event = wait_for_event(DATASET_PREPARED, resource_id="gpuflow.dataset.digits", since=since)
    assert event["payload"]["dataset_version"] == first.dataset_version
    assert event["payload"]["dataset_uri"] == first.dataset_uri
    assert set(event["payload"]) == {
        "dataset_name", "dataset_uri", "dataset_version", "rows", "cache_hit", "source_uri", "task",
    }  # fmt: skip

    x, y = read_split(first.dataset_uri, "train")
    assert x.shape == (first.rows["train"], 64) and y.shape == (first.rows["train"],)


def test_stage_run_records_params_metrics_and_split_datasets(gpuflow_home: Path) -> None:
    client = MlflowClient(settings.tracking_uri())
    # created as the pipeline creates it: artifacts under the home, not in the working directory's ./mlruns
    parent = client.create_run(experiment_id(MLflowTracking.embedded()), run_name="pipeline").info.run_id

    result = prepare("demo", seed=7, parent_run_id=parent)

    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.tags["gpuflow.dataset_version"] == result.dataset_version
    assert run.data.params["seed"] == "7"
    assert run.data.params["val_fraction"] == "0.15" and run.data.params["test_fraction"] == "0.15"
    assert run.data.params["source_uri"] == result.source_uri
    assert run.data.metrics["rows_test"] == result.rows["test"]
    assert run.data.metrics["duplicates_found"] == 0
    assert run.inputs is not None
    inputs = {
        next(t.value for t in d.tags if t.key == "mlflow.data.context"): d.dataset for d in run.inputs.dataset_inputs
    }
    assert sorted(inputs) == ["test", "train", "val"]
    for split, dataset in inputs.items():
        assert dataset.digest == result.dataset_version
        assert dataset.name == f"digits-{split}"
        assert result.source_uri in str(dataset.source)
        assert f'"num_rows": {result.rows[split]}' in str(dataset.profile)


def test_drop_duplicates_prepares_without_them_and_says_how_many(tmp_path: Path, gpuflow_home: Path) -> None:
    rows = digits_rows(300)
    rows[100] = list(rows[5])
    rows[200] = list(rows[5])
    raw = tmp_path / "dups.csv"
    raw.write_bytes(csv_bytes(rows))

    result = prepare(str(raw), dataset_name="digits-dedup", drop_duplicates=True)

    assert (result.duplicates_found, result.duplicates_dropped) == (2, 2)
    assert sum(result.rows.values()) == 298
    manifest = load_manifest(result.dataset_uri)
    assert manifest.duplicates["dropped"] == 2
    assert manifest.parameters["drop_duplicates"] is True
    run = MlflowClient(settings.tracking_uri()).get_run(result.mlflow_run_id)
    assert run.data.metrics["duplicates_dropped"] == 2


def test_changing_a_parameter_publishes_a_new_version_beside_the_old(gpuflow_home: Path) -> None:
    a = prepare("demo")
    b = prepare("demo", test_fraction=0.2)
    assert a.dataset_version != b.dataset_version and not b.cache_hit
    versions = sorted(p.name for p in (gpuflow_home / "store" / "datasets" / "digits").iterdir())
    assert versions == sorted([a.dataset_version, b.dataset_version])
