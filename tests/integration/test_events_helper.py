"""The event contract: what tasks.tracking.events emits is what Prefect's API serves to automations."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from prefect import flow

from tasks.tracking import events
from tests.fixtures.prefect_events import wait_for_event


@flow
def _emit_one(name: str) -> None:
    events.emit(events.DATASET_PREPARED, events.dataset_resource(name), {"dataset_version": "abc123"})


@pytest.mark.usefixtures("prefect_api")
def test_emitted_event_is_served_by_the_prefect_api_with_resource_and_payload() -> None:
    since = datetime.now(UTC)
    _emit_one("events-helper")
    event = wait_for_event(events.DATASET_PREPARED, resource_id="gpuflow.dataset.events-helper", since=since)
    assert event["payload"] == {"dataset_version": "abc123"}
    assert event["resource"]["prefect.resource.name"] == "events-helper"


@flow
def _parent_pipeline(name: str) -> None:
    _emit_one(name)


@pytest.mark.usefixtures("prefect_api")
def test_events_from_a_stage_inside_a_pipeline_are_marked_so_triggers_skip_them() -> None:
    since = datetime.now(UTC)
    _emit_one("alone")
    _parent_pipeline("inside")
    alone = wait_for_event(events.DATASET_PREPARED, resource_id="gpuflow.dataset.alone", since=since)
    inside = wait_for_event(events.DATASET_PREPARED, resource_id="gpuflow.dataset.inside", since=since)
    assert alone["resource"][events.ORIGIN_LABEL] == "stage"
    assert inside["resource"][events.ORIGIN_LABEL] == "pipeline"
