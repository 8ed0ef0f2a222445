"""prefect.yaml must point every deployment at a real flow, chain the stages by event and schedule the right ones."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger
from prefect.flows import load_flow_from_entrypoint
from prefect.utilities.callables import parameter_schema

from deployments import PROJECT_ROOT, deployment_entrypoints
from tasks.tracking import events

EXPECTED = {
    "ml-pipeline": "ml_pipeline",
    "prepare": "prepare",
    "train": "train",
    "evaluate": "evaluate",
    "rollout": "rollout",
    "storage-sensor": "storage_sensor",
}
CHAIN = {
    "prepare": events.DATA_ARRIVED,
    "train": events.DATASET_PREPARED,
    "evaluate": events.MODEL_TRAINED,
    "rollout": events.MODEL_EVALUATED,
}


def deployments() -> dict[str, dict[str, Any]]:
    document = yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())
    return {item["name"]: item for item in document["deployments"]}


def test_every_stage_the_sensor_and_the_pipeline_have_a_deployment() -> None:
    assert set(deployment_entrypoints()) == set(EXPECTED)


@pytest.mark.parametrize(("deployment", "flow_name"), sorted(EXPECTED.items()))
def test_deployment_entrypoint_loads_the_named_flow(deployment: str, flow_name: str) -> None:
    entrypoint = deployment_entrypoints()[deployment]
    flow: Any = load_flow_from_entrypoint(str(PROJECT_ROOT / entrypoint))
    assert flow.name == flow_name


@pytest.mark.parametrize(("deployment", "event"), sorted(CHAIN.items()))
def test_each_stage_is_triggered_by_the_previous_stages_event(deployment: str, event: str) -> None:
    (raw,) = deployments()[deployment]["triggers"]
    trigger = DeploymentEventTrigger.model_validate(raw)
    assert trigger.expect == {event}
    assert trigger.enabled


@pytest.mark.parametrize("deployment", sorted(CHAIN))
def test_trigger_parameters_are_parameters_of_the_flow(deployment: str) -> None:
    flow: Any = load_flow_from_entrypoint(str(PROJECT_ROOT / deployment_entrypoints()[deployment]))
    accepted = set(parameter_schema(flow).properties)
    (trigger,) = deployments()[deployment]["triggers"]
    assert set(trigger["parameters"]) <= accepted
    required = set(parameter_schema(flow).required or []) - set(deployments()[deployment].get("parameters") or {})
    assert required <= set(trigger["parameters"])


def test_chained_evaluate_leaves_the_champion_to_rollout_like_ml_pipeline() -> None:
    (trigger,) = deployments()["evaluate"]["triggers"]
    assert trigger["parameters"]["promote_on_pass"] is False


def test_rollout_and_the_pipeline_never_overlap() -> None:
    found = deployments()
    assert found["rollout"]["concurrency_limit"] == 1
    assert found["ml-pipeline"]["concurrency_limit"] == 1


def test_pipeline_runs_nightly_in_utc_and_the_sensor_every_five_minutes() -> None:
    found = deployments()
    assert found["ml-pipeline"]["schedules"] == [{"cron": "0 2 * * *", "timezone": "UTC", "active": True}]
    assert found["storage-sensor"]["schedules"] == [{"interval": 300, "active": True}]


def test_every_deployment_is_versioned_tagged_and_on_the_process_pool() -> None:
    for name, item in deployments().items():
        assert item["version"] == "{{ $GPUFLOW_VERSION }}", name
        assert "gpuflow" in item["tags"], name
        assert item["work_pool"]["name"] == "gpuflow-process", name


def test_every_trigger_ignores_events_from_stages_inside_ml_pipeline() -> None:
    import yaml

    from tasks.tracking.events import ORIGIN_LABEL

    document = yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())
    triggers = [t for d in document["deployments"] for t in d.get("triggers") or []]
    assert len(triggers) == 4
    assert all(trigger["match"][ORIGIN_LABEL] == "stage" for trigger in triggers)
