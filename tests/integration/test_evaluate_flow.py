"""The evaluate flow end to end on MLflow's SQLite store and a real Prefect API.

Models come from tests/fixtures/models.py (logged exactly as the trainer logs them); what is checked is
what a user sees: registry versions and aliases, MLflow metrics and images, Prefect artifacts, events.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from blocks.quality_gate import QualityGate
from flows.evaluate import Evaluation, evaluate
from tasks.core import settings
from tasks.core.errors import ConfigurationError
from tasks.tracking.events import MODEL_EVALUATED
from tests.fixtures.datasets import write_digits_dataset
from tests.fixtures.flow_env import migrated_home, mlflow_db_template  # noqa: F401
from tests.fixtures.models import aliases, log_training_run, registry_client, train_digits_model
from tests.fixtures.prefect_events import wait_for_event

pytestmark = pytest.mark.usefixtures("prefect_api")


@pytest.fixture
def dataset_uri(migrated_home: Path) -> str:  # noqa: F811
    return write_digits_dataset(settings.store_uri())


@pytest.fixture
def model_name() -> str:
    """Unique per test: the Prefect API (and its events) is shared by the whole session."""
    return f"digits-{uuid.uuid4().hex[:8]}"


def _train_run(dataset_uri: str, kind: str = "good") -> str:
    return log_training_run(settings.tracking_uri(), train_digits_model(dataset_uri, kind))  # type: ignore[arg-type]


def _evaluate(**kwargs: Any) -> tuple[Evaluation, UUID]:
    state = evaluate(**kwargs, return_state=True)
    flow_run_id = state.state_details.flow_run_id
    assert flow_run_id is not None
    return state.result(), flow_run_id


def _prefect_artifacts(flow_run_id: UUID) -> dict[str, Any]:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {artifact.key: artifact for artifact in found if artifact.key}


def test_good_model_becomes_champion_and_a_worse_one_is_held_back(
    dataset_uri: str, model_name: str, tmp_path: Path
) -> None:
    good_run = _train_run(dataset_uri)
    since = datetime.now(UTC)

    first, flow_run_id = _evaluate(train_run_id=good_run, dataset_uri=dataset_uri, model_name=model_name)

    assert (first.model_version, first.champion_version, first.previous_champion_version) == ("1", "1", None)
    assert first.promoted and first.gate.passed and first.gate.reasons == []
    assert first.metrics["accuracy"] > 0.9
    assert first.metrics["macro_f1"] > 0.9
    assert 0.0 < first.metrics["log_loss"] < 0.5
    assert 0.0 <= first.metrics["ece"] < 0.1
    assert first.metrics["inference_ms_per_sample"] > 0 and first.metrics["latency_p50_ms"] > 0
    assert first.champion_metrics is None and first.regression is None
    assert aliases(model_name) == {"champion": "1", "challenger": "1"}

    client = registry_client()
    run = client.get_run(first.evaluate_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test_accuracy"] == pytest.approx(first.metrics["accuracy"])
    assert {"test_macro_f1", "test_log_loss", "test_ece", "test_latency_p50_ms", "stage_seconds"} <= set(
        run.data.metrics
    )
    assert run.data.tags["gpuflow.gate.passed"] == "true"
    assert run.data.tags["gpuflow.dataset_version"] == first.dataset_version
    png = Path(client.download_artifacts(first.evaluate_run_id, "evaluation/confusion_matrix.png", str(tmp_path)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    version = client.get_model_version(model_name, "1")
    assert version.run_id == good_run
    assert version.tags["gpuflow.gate.passed"] == "true"

    artifacts = _prefect_artifacts(flow_run_id)
    table = artifacts["confusion-matrix"]
    assert table.type == "table"
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert [row["true \\ predicted"] for row in rows] == [str(d) for d in range(10)]
    correct = sum(row[row["true \\ predicted"]] for row in rows)
    total = sum(v for row in rows for k, v in row.items() if k != "true \\ predicted")
    assert correct / total == pytest.approx(first.metrics["accuracy"])
    assert artifacts["quality-gate"].type == "markdown"
    assert f"Quality gate passed: `{model_name}` version 1" in artifacts["quality-gate"].data

    event = wait_for_event(MODEL_EVALUATED, resource_id=f"gpuflow.model.{model_name}", since=since)
    assert event["payload"]["passed"] is True
    assert event["payload"]["champion_version"] == "1"
    assert event["payload"]["run_id"] == good_run

    bad_run = _train_run(dataset_uri, "shuffled-labels")
    since = datetime.now(UTC)

    second, flow_run_id = _evaluate(train_run_id=bad_run, dataset_uri=dataset_uri, model_name=model_name)

    assert second.model_version == "2"
    assert not second.gate.passed and not second.promoted
    assert second.metrics["accuracy"] < 0.5
    assert second.champion_metrics is not None
    assert second.champion_metrics["accuracy"] == pytest.approx(first.metrics["accuracy"])
    assert second.regression == pytest.approx(first.metrics["accuracy"] - second.metrics["accuracy"])
    assert any(
        r.startswith("test accuracy 0.") and r.endswith("is below the minimum 0.900") for r in second.gate.reasons
    )
    assert any("below the champion (version 1)'s" in r for r in second.gate.reasons)
    assert (second.champion_version, second.previous_champion_version) == ("1", "1")
    assert aliases(model_name) == {"champion": "1", "challenger": "2"}
    assert client.get_model_version_by_alias(model_name, "champion").run_id == good_run
    rejected = client.get_model_version(model_name, "2")
    assert rejected.tags["gpuflow.gate.passed"] == "false"
    assert json.loads(rejected.tags["gpuflow.gate.reasons"]) == second.gate.reasons
    assert client.get_run(second.evaluate_run_id).data.tags["gpuflow.gate.passed"] == "false"
    gate_report = _prefect_artifacts(flow_run_id)["quality-gate"].data
    assert "Quality gate FAILED" in gate_report and "| max_regression |" in gate_report

    event = wait_for_event(MODEL_EVALUATED, resource_id=f"gpuflow.model.{model_name}", since=since)
    payload = event["payload"]
    assert payload["passed"] is False
    assert payload["reasons"] == second.gate.reasons
    assert (payload["model_version"], payload["champion_version"], payload["previous_champion_version"]) == (
        "2",
        "1",
        "1",
    )
    assert payload["run_id"] == bad_run and payload["dataset_uri"] == dataset_uri
    assert set(payload["metrics"]) == {"accuracy", "macro_f1", "log_loss", "ece"}


def test_a_passing_challenger_replaces_the_champion_and_a_rerun_reuses_its_version(
    dataset_uri: str, model_name: str
) -> None:
    _evaluate(train_run_id=_train_run(dataset_uri), dataset_uri=dataset_uri, model_name=model_name)
    retrained = _train_run(dataset_uri)  # same weights: no regression

    second, _ = _evaluate(train_run_id=retrained, dataset_uri=dataset_uri, model_name=model_name)
    again, _ = _evaluate(train_run_id=retrained, dataset_uri=dataset_uri, model_name=model_name)

    assert second.gate.passed and second.promoted
    assert second.regression == pytest.approx(0.0)
    assert [c.name for c in second.gate.checks] == ["min_accuracy", "max_regression"]
    assert (second.model_version, second.previous_champion_version, second.champion_version) == ("2", "1", "2")
    assert again.model_version == "2"
    assert sorted(str(v.version) for v in registry_client().search_model_versions(f"name = '{model_name}'")) == [
        "1",
        "2",
    ]
    assert aliases(model_name) == {"champion": "2", "challenger": "2"}


def test_without_promote_on_pass_a_passing_model_stays_challenger(dataset_uri: str, model_name: str) -> None:
    result, _ = _evaluate(
        train_run_id=_train_run(dataset_uri), dataset_uri=dataset_uri, model_name=model_name, promote_on_pass=False
    )

    assert result.gate.passed and not result.promoted
    assert result.champion_version is None
    assert aliases(model_name) == {"challenger": "1"}


def test_a_saved_gate_block_with_an_ece_cap_rejects_a_poorly_calibrated_model(
    dataset_uri: str, model_name: str
) -> None:
    gate_name = f"strict-ece-{uuid.uuid4().hex[:8]}"
    QualityGate(min_accuracy=0.5, max_regression=0.02, max_ece=0.0001).save(gate_name)

    result, _ = _evaluate(
        train_run_id=_train_run(dataset_uri), dataset_uri=dataset_uri, model_name=model_name, gate=gate_name
    )

    assert not result.gate.passed
    assert [c.name for c in result.gate.checks if not c.passed] == ["max_ece"]
    assert result.gate.reasons[0].endswith("is above the maximum 0.000")
    assert result.champion_version is None
    assert aliases(model_name) == {"challenger": "1"}


def test_bad_inputs_fail_with_a_message_naming_them(dataset_uri: str, model_name: str) -> None:
    from blocks.mlflow_tracking import MLflowTracking
    from tasks.tracking.runs import start_run

    missing = uuid.uuid4().hex
    with pytest.raises(ConfigurationError, match=f"training run '{missing}' does not exist"):
        evaluate(train_run_id=missing, dataset_uri=dataset_uri, model_name=model_name)

    untagged = start_run(MLflowTracking.embedded(), "train", stage="train")
    with pytest.raises(ConfigurationError, match=f"run '{untagged}' has no gpuflow.model_uri tag"):
        evaluate(train_run_id=untagged, dataset_uri=dataset_uri, model_name=model_name)

    good_run = _train_run(dataset_uri)
    nowhere = dataset_uri.rsplit("/", 1)[0] + "/0000deadbeef"
    with pytest.raises(ConfigurationError, match=r"no prepared dataset at .*/0000deadbeef"):
        evaluate(train_run_id=good_run, dataset_uri=nowhere, model_name=model_name)

    assert registry_client().search_registered_models(f"name = '{model_name}'") == []


def test_run_with_unusable_labels_tag_is_rejected(migrated_home: Path) -> None:  # noqa: F811
    from blocks.mlflow_tracking import MLflowTracking
    from tasks.tracking.model_registry import read_trained_model
    from tasks.tracking.runs import start_run

    run_id = start_run(MLflowTracking.embedded(), "train", stage="train")
    client = registry_client()
    client.set_tag(run_id, "gpuflow.model_uri", "models:/m-0123")
    client.set_tag(run_id, "gpuflow.labels", "0,1,2")

    with pytest.raises(ConfigurationError, match=r"gpuflow.labels tag that is not JSON: '0,1,2'"):
        read_trained_model(client, run_id)


def test_aliases_do_not_move_when_the_champion_changed_during_evaluation(
    migrated_home: Path,  # noqa: F811
    model_name: str,
) -> None:
    from blocks.mlflow_tracking import MLflowTracking
    from tasks.tracking.model_registry import ChampionMoved, move_aliases

    client = registry_client()
    client.create_registered_model(model_name)
    for _ in range(3):
        client.create_model_version(model_name, source=(migrated_home / "model").as_uri())
    client.set_registered_model_alias(model_name, "champion", "2")  # moved by someone else meanwhile
    tracking = MLflowTracking.embedded()

    with pytest.raises(ChampionMoved, match="moved from version 1 to 2"):
        move_aliases.fn(tracking, model_name, "3", promote=True, expected_champion="1")
    assert aliases(model_name) == {"champion": "2"}

    assert move_aliases.fn(tracking, model_name, "3", promote=False, expected_champion="1") == "2"
    assert aliases(model_name) == {"champion": "2", "challenger": "3"}
    assert move_aliases.fn(tracking, model_name, "3", promote=True, expected_champion="2") == "3"
    assert aliases(model_name) == {"champion": "3", "challenger": "3"}
