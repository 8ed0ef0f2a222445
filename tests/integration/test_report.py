"""``gpuflow report`` over real pipeline runs: what the markdown says, the plots, MLflow and Prefect artifacts.

Two runs are made once for the module with the real train and evaluate flows (tests/fixtures/stage_runs.py):
one on this machine (no GPU) and one whose trainer sees a fake H100 through the real pynvml.
"""

from __future__ import annotations

import argparse
import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from matplotlib.image import imread
from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.sorting import ArtifactSort

from blocks.pricing import GpuPricing
from flows.cli.report_command import add_report_parser, report_command
from tasks.core import settings
from tasks.reporting.plots import convergence_figure, cost_figure
from tasks.reporting.run_data import load_run_data, report_root
from tests.fixtures.datasets import write_digits_dataset
from tests.fixtures.flow_env import mlflow_db_template  # noqa: F401
from tests.fixtures.stage_runs import StageRuns, fake_gpu_compute, module_home, run_stages

pytest_plugins = ("tests.fixtures.fake_nvml.plugin",)
pytestmark = pytest.mark.usefixtures("prefect_api")

PLOTS = (
    "convergence_wall.png",
    "convergence_gpu.png",
    "convergence_cost.png",
    "gpu_timeline.png",
    "cost_per_stage.png",
)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Runs:
    cpu: StageRuns
    gpu: StageRuns


@pytest.fixture(scope="module")
def runs(
    prefect_api: None,
    tmp_path_factory: pytest.TempPathFactory,
    mlflow_db_template: Path,  # noqa: F811
    fake_nvml_lib: Path,
) -> Iterator[Runs]:
    with module_home(tmp_path_factory, mlflow_db_template, "report-home") as home:
        dataset = write_digits_dataset(settings.store_uri())
        name = f"report-{uuid.uuid4().hex[:6]}"
        cpu = run_stages(dataset, name, epochs=4)
        gpu = run_stages(dataset, name, epochs=4, compute=fake_gpu_compute(fake_nvml_lib, home))
        yield Runs(cpu=cpu, gpu=gpu)


def report(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="gpuflow")
    add_report_parser(parser.add_subparsers(dest="command"))
    return report_command(parser.parse_args(["report", *argv]))


def _client() -> MlflowClient:
    return MlflowClient(settings.tracking_uri())


def _latest_prefect_report() -> str:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["gpuflow-report"])),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )
    assert found, "no gpuflow-report artifact in Prefect"
    return str(found[0].data)


def test_report_of_a_run_without_a_gpu_says_so_and_prices_node_hours(runs: Runs, tmp_path: Path) -> None:
    run_id = runs.cpu.pipeline_run_id

    assert report(run_id, "--out", str(tmp_path)) == 0

    text = (tmp_path / "report.md").read_text()
    assert f"# gpuflow report: pipeline run {run_id}" in text
    assert "**No GPU was used in this run** (no GPU: NVML Shared Library Not Found)" in text
    assert "priced by node-hour (0.2 USD per node-hour)" in text
    assert f"- dataset version: {runs.cpu.trained.dataset_version}" in text
    assert f"- model version: {runs.cpu.evaluation.model_version}" in text
    assert "| train |" in text and "| evaluate |" in text and "| **run** |" in text
    assert "node-hours (no GPU)" in text
    best = max(m.value for m in _client().get_metric_history(runs.cpu.trained.run_id, "val_accuracy"))
    assert f"- best val_accuracy: **{best:,.4f}**" in text
    assert "- why training stopped: completed: ran all 4 epochs" in text
    assert "| trainer start to first optimizer step |" in text
    for name in PLOTS:
        assert f"]({name})" in text
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE)
        assert imread(tmp_path / name).shape[0] > 100  # decodes as an image

    logged = {a.path for a in _client().list_artifacts(run_id, "report")}
    assert logged == {f"report/{name}" for name in (*PLOTS, "report.md")}
    assert f"pipeline run {run_id}" in _latest_prefect_report()


def test_report_of_a_gpu_run_compared_with_another(
    runs: Runs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gpu_id, cpu_id = runs.gpu.pipeline_run_id, runs.cpu.pipeline_run_id

    assert report(gpu_id, "--compare", cpu_id, "--out", str(tmp_path), "--json") == 0

    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["run_id"] == gpu_id and result["compared"] == [cpu_id]
    assert result["has_gpu"] is True and result["total_cost"] > 0
    text = (tmp_path / "report.md").read_text()
    assert "GPUs: 1 x NVIDIA H100 80GB HBM3" in text
    assert "No GPU was used" not in text
    train_row = next(line for line in text.splitlines() if line.startswith("| train |"))
    assert "| 1 x NVIDIA H100 80GB HBM3 |" in train_row and "| 73.0 | 73.0 | 3.00 | 180.0 |" in train_row
    assert "| gpu-hours |" in train_row
    assert "## Comparison" in text
    assert f"| this run {gpu_id[:8]} |" in text and f"| compared {cpu_id[:8]} |" in text
    # epochs, time, GPU-seconds and cost to reach 95 % of the best
    assert re.search(r"reached at epoch \d: \d epochs, [\d.]+ s of epoch time, [\d.]+ GPU-s .*, cost [\d.]+ USD", text)

    # --compare overlays: both runs on the wall-time and cost plots; only the GPU run against GPU-seconds
    client = _client()
    both = [load_run_data(client, report_root(client, rid), GpuPricing(), rid[:8]) for rid in (gpu_id, cpu_id)]
    wall = convergence_figure(both, "wall")
    assert {line.get_label() for line in wall.axes[1].get_lines()} == {gpu_id[:8], cpu_id[:8]}
    against_gpu = convergence_figure(both, "gpu")
    assert [line.get_label() for line in against_gpu.axes[1].get_lines()] == [gpu_id[:8]]
    assert len(cost_figure(both).axes[0].patches) >= 2 * 2  # a bar per run for train and evaluate


def test_last_is_the_newest_pipeline_run_and_a_train_run_stands_for_its_pipeline(
    runs: Runs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert report("--last", "--out", str(tmp_path / "last"), "--json") == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["run_id"] == runs.gpu.pipeline_run_id

    assert report(runs.cpu.trained.run_id, "--out", str(tmp_path / "train"), "--json") == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["run_id"] == runs.cpu.pipeline_run_id


def test_a_run_that_cannot_be_reported_on_is_an_error_naming_it(
    runs: Runs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert report("no-such-run", "--out", str(tmp_path)) == 1
    assert "no MLflow run 'no-such-run'" in capsys.readouterr().err

    evaluate_run = runs.cpu.evaluation.evaluate_run_id
    assert report(evaluate_run, "--out", str(tmp_path)) == 1
    assert (
        "is the evaluate stage run of a pipeline; give a pipeline run id or a train run id" in capsys.readouterr().err
    )
    assert not (tmp_path / "report.md").exists()
