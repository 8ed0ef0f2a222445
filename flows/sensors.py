"""The storage sensor flow: poll a prefix, announce each complete new raw file as ``gpuflow.data.arrived``.

Scheduled every few minutes by the ``storage-sensor`` deployment; the ``prepare`` deployment's trigger turns
each announcement into a pipeline run. Orchestration only: the rules live in ``tasks.data.sensor``.
"""

from __future__ import annotations

from typing import Annotated

from prefect import flow, get_run_logger
from pydantic import BaseModel, ConfigDict, Field

from blocks.data_store import resolve_data_store
from flows.prefect_server import own_prefect_ephemeral_server
from tasks.core import settings
from tasks.data import sensor
from workloads.store import is_s3, join, local_path

own_prefect_ephemeral_server()  # flows called from Python use a server gpuflow owns (no leak, no race)

Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]


class SensorReport(BaseModel):
    """What one poll found; the flow run's result."""

    model_config = ConfigDict(frozen=True)

    prefix_uri: str
    announced: list[dict[str, object]] = Field(description="Payloads of the gpuflow.data.arrived events emitted.")
    waiting: list[str] = Field(description="Data files not settled yet (still growing or too young).")
    ignored: list[str] = Field(description="Temporary names, empty files and files that are not CSV/Parquet.")
    already_seen: list[str] = Field(description="Files whose version was announced before.")
    same_content: list[str] = Field(description="Files copied in again with content already announced.")


@flow(name="storage_sensor", log_prints=False)
def storage_sensor(
    prefix_uri: str = "",
    sensor_name: Name = "storage",
    dataset_name: Name = settings.DEFAULT_DATASET_NAME,
    settle_seconds: Annotated[float, Field(ge=0, le=86_400)] = 30.0,
    data_store: str | None = None,
    dataset_spec: str = "",
) -> SensorReport:
    """Announce every complete, new CSV/Parquet object under a prefix, once per object version.

    Args:
        prefix_uri: Folder or s3://bucket/prefix to watch; empty watches <store>/incoming.
        sensor_name: Names the state file <store>/sensors/<sensor_name>.json that remembers what was announced.
        dataset_name: Dataset the arrivals are prepared into (carried in the event payload).
        settle_seconds: A file modified more recently than this is still being written and waits.
        data_store: Saved DataStore block name; empty uses GPUFLOW_HOME/store.
        dataset_spec: Dataset spec (saved DatasetSpec block name, or a spec file the prepare worker can read) the
            arrivals are prepared with, carried in the event payload; empty: the digits schema.
    """
    logger = get_run_logger()
    store = resolve_data_store(data_store)
    prefix = prefix_uri or join(store.root, "incoming")
    if not prefix_uri and not is_s3(prefix):
        local_path(prefix).mkdir(parents=True, exist_ok=True)  # the default drop folder exists from the first poll
    state = sensor.load_state(store, sensor_name)
    result, new_state = sensor.poll(
        sensor.list_objects(prefix, store),
        state,
        settle_seconds=settle_seconds,
        dataset_name=dataset_name,
        dataset_spec=dataset_spec,
    )
    # At least once: a crash between an emit and the save announces that file again on the next poll.
    for arrival in result.arrivals:
        sensor.announce(prefix, arrival)
        logger.info("announced %s (%d bytes, version %s)", arrival.uri, arrival.size, arrival.version)
    sensor.save_state(store, sensor_name, new_state)
    if result.waiting:
        logger.info("waiting for %d file(s) to settle: %s", len(result.waiting), ", ".join(result.waiting))
    return SensorReport(
        prefix_uri=prefix,
        announced=[a.payload() for a in result.arrivals],
        waiting=list(result.waiting),
        ignored=list(result.ignored),
        already_seen=list(result.already_seen),
        same_content=list(result.same_content),
    )
