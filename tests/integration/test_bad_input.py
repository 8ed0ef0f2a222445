"""The prepare flow on broken raw files: the right error, a message naming the problem, nothing published."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from flows.prepare import prepare
from tasks.core import settings
from tasks.core.errors import ConfigurationError
from tests.fixtures.flow_env import migrated_home, mlflow_db_template, no_heartbeat_wait  # noqa: F401 (fixtures used by name)
from tests.fixtures.raw_files import BAD_INPUTS, BadInput

pytestmark = pytest.mark.usefixtures("prefect_api", "no_heartbeat_wait", "migrated_home")


def store_leftovers(home: Path) -> list[str]:
    """Everything under <store>/datasets, hidden staging folders included."""
    datasets = home / "store" / "datasets"
    return sorted(str(p.relative_to(datasets)) for p in datasets.rglob("*")) if datasets.exists() else []


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c.id for c in BAD_INPUTS])
def test_prepare_flow_rejects_bad_input_and_publishes_nothing(
    case: BadInput, tmp_path: Path, gpuflow_home: Path
) -> None:
    path = case.write(tmp_path)
    with pytest.raises(case.error) as raised:
        prepare(str(path))
    message = str(raised.value)
    for fragment in case.fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert store_leftovers(gpuflow_home) == []


def test_failed_prepare_marks_its_mlflow_run_failed(tmp_path: Path, gpuflow_home: Path) -> None:
    case = next(c for c in BAD_INPUTS if c.id == "unknown-labels")
    with pytest.raises(case.error):
        prepare(str(case.write(tmp_path)))
    client = MlflowClient(settings.tracking_uri())
    experiment = client.get_experiment_by_name(settings.DEFAULT_EXPERIMENT)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert [(r.data.tags.get("gpuflow.stage"), r.info.status) for r in runs] == [("prepare", "FAILED")]


def test_impossible_fractions_fail_before_reading_anything(tmp_path: Path, gpuflow_home: Path) -> None:
    with pytest.raises(ConfigurationError, match="val_fraction \\+ test_fraction"):
        prepare("demo", val_fraction=0.6, test_fraction=0.5)
    assert not (gpuflow_home / "store" / "raw").exists()
