"""prefect.yaml must point every deployment at a real flow, or `prefect deploy` fails on a user's server."""

from __future__ import annotations

import pytest
from prefect.flows import load_flow_from_entrypoint

from deployments import PROJECT_ROOT, deployment_entrypoints

EXPECTED = {"ml-pipeline": "ml_pipeline", "prepare": "prepare", "train": "train", "evaluate": "evaluate"}


def test_every_stage_and_the_pipeline_has_a_deployment() -> None:
    assert set(deployment_entrypoints()) == set(EXPECTED)


@pytest.mark.parametrize(("deployment", "flow_name"), sorted(EXPECTED.items()))
def test_deployment_entrypoint_loads_the_named_flow(deployment: str, flow_name: str) -> None:
    entrypoint = deployment_entrypoints()[deployment]
    flow = load_flow_from_entrypoint(str(PROJECT_ROOT / entrypoint))
    assert flow.name == flow_name
