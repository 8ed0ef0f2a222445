"""A model server that reads its model from a tracking server keeps the download in a folder of its own and
removes it when it stops.

MLflow downloads a remote store's model into a new /tmp folder and never removes it, so each local server start
against a team's ``mlflow server`` (proxied ``mlflow-artifacts:/``) left a copy of its model behind. The server
runs with TMPDIR set to a folder of the test's, so what it leaves there is what it would leave in a user's /tmp.
"""

from __future__ import annotations

from pathlib import Path

from mlflow import MlflowClient

from tasks.core import settings
from tests.conftest import MlflowServer
from tests.fixtures.datasets import write_digits_dataset
from tests.fixtures.model_server import start
from tests.fixtures.models import log_training_run, train_digits_model


def test_the_downloaded_model_is_removed_when_the_server_stops(
    mlflow_server: MlflowServer, gpuflow_home: Path, tmp_path: Path
) -> None:
    run_id = log_training_run(mlflow_server.url, train_digits_model(write_digits_dataset(settings.store_uri())))
    model_uri = MlflowClient(mlflow_server.url).get_run(run_id).data.tags["gpuflow.model_uri"]
    scratch = tmp_path / "scratch"
    scratch.mkdir()

    served = start(mlflow_server.url, "--model-uri", model_uri, extra_env={"TMPDIR": str(scratch)})
    try:
        served.wait_for(r"ready: model=")
        downloads = sorted(p.name for p in scratch.iterdir())
        assert len(downloads) == 1 and downloads[0].startswith("gpuflow-model-"), downloads
        assert list((scratch / downloads[0]).rglob("MLmodel")), "the model's files are in the server's own folder"
    finally:
        code = served.stop()
    assert code == 0, "".join(served.lines)
    assert list(scratch.iterdir()) == []
