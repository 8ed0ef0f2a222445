"""The train flow end to end: Prefect API, MLflow on SQLite, the trainer as a local process."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

import mlflow.pytorch
import pytest
import torch
from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.exceptions import ParameterTypeError

from flows.train import train
from tasks.core import settings
from tasks.core.errors import DataNotFoundError
from tasks.tracking.events import MODEL_TRAINED
from tasks.training.trainer_job import TrainedModel
from tests.fixtures.datasets import write_digits_dataset
from tests.fixtures.flow_env import migrated_home, mlflow_db_template, no_heartbeat_wait  # noqa: F401
from tests.fixtures.prefect_events import wait_for_event
from workloads.dataset import read_split

pytestmark = pytest.mark.usefixtures("prefect_api", "no_heartbeat_wait")


@pytest.fixture
def dataset_uri(migrated_home: Path, monkeypatch: pytest.MonkeyPatch) -> str:  # noqa: F811
    monkeypatch.setenv("GPUFLOW_TORCH_THREADS", "1")
    return write_digits_dataset(settings.store_uri())


def flow_run_logs(flow_run_id: UUID | None, expected: str, timeout: float = 20.0) -> list[str]:
    """The flow run's log messages from the Prefect API, once ``expected`` has arrived (logs ship async)."""
    assert flow_run_id is not None
    deadline = time.monotonic() + timeout
    log_filter = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
    while True:
        with get_client(sync_client=True) as client:
            logs = client.read_logs(log_filter=log_filter)
        messages = [log.message for log in sorted(logs, key=lambda log: log.timestamp)]
        if any(expected in m for m in messages) or time.monotonic() > deadline:
            return messages
        time.sleep(0.25)


def test_train_flow_logs_a_model_that_classifies_digits_and_announces_it(
    dataset_uri: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    since = datetime.now(UTC)

    state = train(dataset_uri=dataset_uri, model_name="flow-test", epochs=4, learning_rate=3e-3, return_state=True)
    trained = state.result()

    assert isinstance(trained, TrainedModel)
    assert trained.epochs == 4 and trained.device == "cpu"
    assert trained.training_id == f"train-{state.state_details.flow_run_id}"
    assert trained.labels == [str(d) for d in range(10)]
    assert trained.metrics["val_accuracy"] > 0.9
    assert set(trained.metrics) == {"val_accuracy", "val_loss", "train_loss"}
    assert 0 < trained.seconds < 120

    monkeypatch.setenv("MLFLOW_TRACKING_URI", settings.tracking_uri())
    model = mlflow.pytorch.load_model(trained.model_uri, dst_path=str(tmp_path))
    x, y = read_split(dataset_uri, "val")
    with torch.no_grad():
        predicted = model(torch.tensor(x)).argmax(dim=1)
    accuracy = (predicted == torch.tensor(y)).float().mean().item()
    assert accuracy > 0.9
    assert accuracy == pytest.approx(trained.metrics["val_accuracy"])

    run = MlflowClient(settings.tracking_uri()).get_run(trained.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["gpuflow.stage"] == "train"
    assert run.data.tags["gpuflow.dataset_version"] == trained.dataset_version
    assert run.data.tags["gpuflow.model_uri"] == trained.model_uri
    assert run.data.params["learning_rate"] == "0.003"
    history = MlflowClient(settings.tracking_uri()).get_metric_history(trained.run_id, "val_accuracy")
    assert sorted(m.step for m in history) == [1, 2, 3, 4]

    event = wait_for_event(MODEL_TRAINED, resource_id="gpuflow.model.flow-test", since=since)
    assert event["payload"] == {
        "model_name": "flow-test",
        "run_id": trained.run_id,
        "model_uri": trained.model_uri,
        "dataset_uri": dataset_uri,
        "dataset_version": trained.dataset_version,
        "training_id": trained.training_id,
    }

    messages = flow_run_logs(state.state_details.flow_run_id, "epoch 4/4")
    assert [m.split()[1] for m in messages if m.startswith("epoch ")] == ["1/4", "2/4", "3/4", "4/4"]


def test_same_training_id_again_reuses_the_run_and_the_finished_training(dataset_uri: str) -> None:
    first = train(dataset_uri=dataset_uri, epochs=2, hidden_size=16, training_id="again-1")
    second = train(dataset_uri=dataset_uri, epochs=2, hidden_size=16, training_id="again-1")

    assert second.run_id == first.run_id
    assert second.model_uri == first.model_uri
    history = MlflowClient(settings.tracking_uri()).get_metric_history(first.run_id, "val_loss")
    assert sorted(m.step for m in history) == [1, 2]


def test_invalid_hyperparameter_is_rejected_before_anything_runs(dataset_uri: str) -> None:
    with pytest.raises(ParameterTypeError, match="epochs"):
        train(dataset_uri=dataset_uri, epochs=0)
    assert not (Path(settings.store_uri().removeprefix("file://")) / "checkpoints").exists()


def test_missing_dataset_fails_with_its_uri(gpuflow_home: Path) -> None:
    missing = (gpuflow_home / "store" / "datasets" / "digits" / "nope").as_uri()
    with pytest.raises(DataNotFoundError, match="nope"):
        train(dataset_uri=missing)


def test_a_regression_dataset_trains_a_regressor_tagged_with_its_task(
    migrated_home: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    from tests.fixtures.spec_data import diabetes_csv, diabetes_spec, publish_by_spec

    monkeypatch.setenv("GPUFLOW_TORCH_THREADS", "1")
    uri = publish_by_spec(settings.store_uri(), diabetes_csv(tmp_path), diabetes_spec(), "diabetes")
    assert uri.startswith(settings.store_uri() + "/datasets/diabetes/")  # in the home's store, not under the cwd
    state = train(dataset_uri=uri, model_name="diabetes", epochs=10, return_state=True)
    trained = state.result()

    assert trained.task == "regression" and trained.labels == []
    assert set(trained.metrics) == {"val_rmse", "val_mae", "val_loss", "train_loss"}
    x, y = read_split(uri, "val")
    assert trained.metrics["val_rmse"] < 0.9 * float(y.std())  # better than always answering the mean
    run = MlflowClient(settings.tracking_uri()).get_run(trained.run_id)
    assert run.data.tags["gpuflow.task"] == "regression" and "gpuflow.labels" not in run.data.tags
    assert run.data.params["task"] == "regression"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", settings.tracking_uri())
    model = mlflow.pytorch.load_model(trained.model_uri, dst_path=str(tmp_path))
    with torch.no_grad():
        values = model(torch.from_numpy(x)).numpy()
    assert values.shape == (len(y), 1)
    rmse = float(((values[:, 0] - y) ** 2).mean() ** 0.5)
    assert rmse == pytest.approx(trained.metrics["val_rmse"], rel=1e-3)  # in the target's own units
    messages = flow_run_logs(state.state_details.flow_run_id, "trained diabetes")
    assert any("trained diabetes: val_rmse=" in m for m in messages)
