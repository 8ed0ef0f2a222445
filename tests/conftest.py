"""Shared fixtures: real services started on loopback for the tests that need them.

- ``prefect_api``: Prefect's test harness (a real temporary Prefect server, SQLite) for the session.
- ``gpuflow_home``: an empty GPUFLOW_HOME per test, so MLflow (SQLite) and the store start clean.
- ``s3_server``: moto's S3 server as a subprocess, reached by boto3 over HTTP.
- ``mlflow_server``: a real ``mlflow server`` subprocess on a SQLite store.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.fixtures.net import free_port as free_port
from workloads.quiet import quiet_environment

ROOT = Path(__file__).resolve().parent.parent
NO_NVML = ROOT / "tests" / "fixtures" / "no_nvml"


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    _hide_nvml(config)
    _own_gpuflow_home()


def _hide_nvml(config: pytest.Config) -> None:
    """Make a machine with a GPU look like one without, for every test but the GPU check.

    The tests expect no NVML unless they bring the fake one; the loader reads LD_LIBRARY_PATH only at process start,
    so the test process restarts itself once with a folder first on it whose libnvidia-ml.so.1 is not a library
    (dlopen stops at the first file of that name). ``GPUFLOW_TEST_REAL_NVML=1`` keeps the real one (tests/gpu).
    """
    paths = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    if os.environ.get("GPUFLOW_TEST_REAL_NVML") == "1" or str(NO_NVML) in paths:
        return
    os.environ["LD_LIBRARY_PATH"] = os.pathsep.join([str(NO_NVML), *paths])
    capture = config.pluginmanager.getplugin("capturemanager")
    if capture is not None:
        capture.stop_global_capturing()  # give the restarted process the real stdout and stderr
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def _own_gpuflow_home() -> None:
    """No test writes into the checkout or the developer's own gpuflow home, even one that forgets `gpuflow_home`.

    Each pytest process (the main one and every xdist worker) makes its own and removes it when it exits. Made
    here, after any restart above, and not when this module is imported: an exec skips atexit (the folder made
    before it was left in /tmp), and a helper process importing from this module needs none.
    """
    home = tempfile.mkdtemp(prefix="gpuflow-test-home-")
    os.environ["GPUFLOW_HOME"] = home
    atexit.register(shutil.rmtree, home, ignore_errors=True)


# the kube_cluster fixture (emulated Kubernetes); nodes_left (torchrun nodes a test starts, killed if left)
pytest_plugins = ("tests.fixtures.kube.plugin", "tests.fixtures.nodes")

# The modules that keep a worker busiest (wall seconds measured on 2 shared cores), longest first. `make test`
# hands whole modules to its workers in collection order (--dist loadscope --no-loadscope-reorder), so these go
# out first and the many short modules fill the gaps at the end, instead of one worker starting a 4-minute module
# when the other is nearly done. Order only: a module missing here runs after them, in the usual order.
LONGEST_FIRST = (
    "tests/e2e/test_concurrent_runs.py",
    "tests/integration/test_kube_canary.py",
    "tests/integration/test_deployments.py",
    "tests/e2e/test_concurrent_pipelines.py",
    "tests/e2e/test_cli_run.py",
    "tests/e2e/test_kube_pipeline.py",
    "tests/integration/test_rollout_flow.py",
    "tests/e2e/test_own_data_and_code.py",
)
_DIRECTORY_ORDER = ("tests/e2e/", "tests/integration/", "tests/gpu/", "tests/unit/")


def _module_rank(path: str) -> tuple[int, int]:
    if path in LONGEST_FIRST:
        return (0, LONGEST_FIRST.index(path))
    folder = next((i for i, prefix in enumerate(_DIRECTORY_ORDER) if path.startswith(prefix)), len(_DIRECTORY_ORDER))
    return (1 + folder, 0)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Longest modules first (see LONGEST_FIRST), then end-to-end, integration and unit tests; a module's own tests
    keep their order (some modules rely on it)."""
    items.sort(key=lambda item: _module_rank(item.nodeid.split("::", 1)[0]))  # stable: file order within a module


# One OpenMP/BLAS thread per process (the test process, its workers, every trainer, flow and server they start):
# the suite runs several processes per core, and an idle OpenMP thread spins on the CPU before it sleeps, so two
# intra-op threads per process cost twice the CPU for the same work (the models here are tiny). Set before torch
# loads anywhere; an explicit value (or GPUFLOW_TORCH_THREADS, set by some tests) still wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Keep every test run off the network and off the developer's own Prefect profile.
quiet_environment()
for _var in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "GPUFLOW_STORE_URI", "AWS_ENDPOINT_URL_S3"):
    os.environ.pop(_var, None)


def wait_http(url: str, timeout: float = 60.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server for {url} exited with code {proc.returncode}")
        try:
            if requests.get(url, timeout=2).status_code < 500:
                return
        except requests.RequestException as exc:
            last = exc
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout}s: {last}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A real temporary Prefect server for the whole session (flows, events, artifacts)."""
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def gpuflow_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty GPUFLOW_HOME: MLflow on SQLite and the store under it, nothing shared between tests."""
    home = tmp_path / "gpuflow-home"
    monkeypatch.setenv("GPUFLOW_HOME", str(home))
    for var in ("MLFLOW_TRACKING_URI", "GPUFLOW_STORE_URI", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    return home


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    access_key_id: str = "testing"
    secret_access_key: str = "testing"
    region: str = "us-east-1"

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
        )


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 server in its own process; tests reach it only over HTTP. Its request recorder (off until a test
    starts it through ``/moto-api/recorder/``) writes into a temp folder, not the working directory."""
    port = free_port()
    recording = tmp_path_factory.mktemp("moto-recorder") / "requests.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "MOTO_RECORDER_FILEPATH": str(recording)},
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/moto-api/", proc=proc)
        yield S3Server(endpoint_url=f"http://127.0.0.1:{port}")
    finally:
        stop(proc)


@dataclass(frozen=True)
class MlflowServer:
    url: str


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A real ``mlflow server`` on SQLite with proxied artifacts, as a team would run it."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            (root / "artifacts").as_uri(),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=open(root / "server.log", "wb"),  # noqa: SIM115 - closed with the process
        stderr=subprocess.STDOUT,
        # Job execution (GenAI jobs) starts huey consumer processes that gpuflow never uses: about 3.5 s of CPU
        # each, seven of them per server.
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout=120, proc=proc)
        yield MlflowServer(url=f"http://127.0.0.1:{port}")
    finally:
        stop(proc)
