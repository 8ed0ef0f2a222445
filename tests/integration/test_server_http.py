"""The inference server as a real subprocess, driven over HTTP on loopback the way clients and Kubernetes do.

The digits MLP comes from tests/fixtures/models.py, logged as the trainer logs it (``pt2``) and registered
with aliases; predictions are compared with the same model loaded directly through ``mlflow.pytorch``.
A second model, pickled with a named-column signature, is served by torch (``--backend torch``) in a worker
thread, which covers the fallback path, named ``instances`` and the lifecycle (readiness, SIGTERM).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from prometheus_client.parser import text_string_to_metric_families

from tasks.tracking.model_registry import model_location
from tests.conftest import ROOT
from tests.fixtures.datasets import write_digits_dataset
from tests.fixtures.model_server import Served, call, start
from tests.fixtures.models import log_training_run, train_digits_model
from workloads.dataset import read_split
from workloads.store import ObjectStore

MAX_ROWS = 16
MAX_BODY = 64 * 1024


def predict(served: Served, rows: np.ndarray, path: str = "/v1/predict") -> Any:
    status, _, body = call(served, "POST", path, json.dumps({"rows": rows.tolist()}).encode(), "application/json")
    assert status == 200, body
    return json.loads(body)


def metrics(served: Served) -> dict[str, Any]:
    status, _, body = call(served, "GET", "/metrics")
    assert status == 200
    return {family.name: family for family in text_string_to_metric_families(body.decode())}


def sample(families: dict[str, Any], name: str, suffix: str, **labels: str) -> float:
    for s in families[name].samples:
        if s.name == name + suffix and all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    return 0.0


@dataclass(frozen=True)
class Models:
    tracking_uri: str
    rows: np.ndarray  # digits test rows
    expected: list[int]  # labels the model loaded with mlflow.pytorch gives those rows
    named_expected: list[int]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    """The digits MLP registered as ``digits`` (v1, alias champion) and a pickled twin ``digits-named``."""
    import mlflow
    import mlflow.pytorch
    import torch
    from mlflow.models import infer_signature

    root = tmp_path_factory.mktemp("serving")
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    dataset = write_digits_dataset((root / "store").as_uri())
    trained = train_digits_model(dataset)
    run_id = log_training_run(tracking_uri, trained)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    tags = client.get_run(run_id).data.tags
    client.create_registered_model("digits")
    version = client.create_model_version(
        "digits",
        source=model_location(client, tags["gpuflow.model_uri"]),
        run_id=run_id,
        tags={"gpuflow.labels": tags["gpuflow.labels"]},
    )
    client.set_registered_model_alias("digits", "champion", version.version)

    features, _ = read_split(dataset, "test", ObjectStore())
    names = [f"pixel_{i}" for i in range(features.shape[1])]
    example = pd.DataFrame(features[:5], columns=names)
    with torch.no_grad():
        logits = trained.module(torch.from_numpy(features[:5])).numpy()
    mlflow.set_tracking_uri(tracking_uri)
    try:
        # MLflow checks a DataFrame example by predicting on pandas' read-only to_numpy() (pandas 3's copy on
        # write), and torch.from_numpy warns about that inside MLflow: not gpuflow's doing, so not in the summary.
        with mlflow.start_run(run_id=run_id), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
            named = mlflow.pytorch.log_model(
                trained.module,
                name="named",
                signature=infer_signature(example, logits),
                input_example=example,
                serialization_format="pickle",
                pip_requirements=["torch"],
            )
    finally:
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]
    client.create_registered_model("digits-named")
    client.create_model_version(
        "digits-named",
        source=model_location(client, named.model_uri),
        run_id=run_id,
        tags={"gpuflow.labels": json.dumps(trained.labels)},
    )

    loaded = mlflow.pytorch.load_model(model_location(client, "models:/digits/1"))
    with torch.no_grad():
        expected = [trained.labels[i] for i in loaded(torch.from_numpy(features)).argmax(dim=1).tolist()]
    named_loaded = mlflow.pytorch.load_model(model_location(client, "models:/digits-named/1"))
    with torch.no_grad():
        named_expected = [trained.labels[i] for i in named_loaded(torch.from_numpy(features)).argmax(dim=1).tolist()]
    return Models(tracking_uri, features, expected, named_expected)


@pytest.fixture(scope="module")
def server(models: Models) -> Iterator[Served]:
    """The numpy-compiled digits champion with small limits, so limit errors are cheap to provoke."""
    served = start(
        models.tracking_uri,
        "--model-uri", "models:/digits@champion",
        "--max-rows", str(MAX_ROWS),
        "--max-body-bytes", str(MAX_BODY),
        "--max-wait-us", "5000",
        "--request-timeout-s", "1",
    )  # fmt: skip
    served.wait_for(r"ready: model=digits version=1 backend=numpy")
    yield served
    assert served.stop() == 0, "".join(served.lines)


def test_predictions_equal_the_model_loaded_with_mlflow(server: Served, models: Models) -> None:
    got: list[int] = []
    for start_row in range(0, len(models.rows), MAX_ROWS):
        got += predict(server, models.rows[start_row : start_row + MAX_ROWS])["predictions"]
    assert got == models.expected
    assert sum(g == e for g, e in zip(got, models.expected, strict=True)) == len(models.rows)


def test_probabilities_come_with_their_labels_and_sum_to_one(server: Served, models: Models) -> None:
    answer = predict(server, models.rows[:3], "/v1/predict?proba=1")
    probabilities = np.array(answer["probabilities"])
    assert answer["labels"] == list(range(10))
    assert probabilities.shape == (3, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert [answer["labels"][i] for i in probabilities.argmax(axis=1)] == answer["predictions"] == models.expected[:3]


def test_compact_binary_form_answers_label_indices_and_probabilities(server: Served, models: Models) -> None:
    rows = models.rows[:5]
    status, headers, body = call(
        server, "POST", "/v1/predict?proba=1", rows.astype("<f4").tobytes(), "application/octet-stream"
    )
    assert status == 200 and headers["content-type"] == "application/octet-stream"
    indices = np.frombuffer(body[:20], dtype="<i4")
    probabilities = np.frombuffer(body[20:], dtype="<f4").reshape(5, 10)
    _, _, model = call(server, "GET", "/v1/model")
    labels = json.loads(model)["labels"]
    assert [labels[i] for i in indices] == models.expected[:5]
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    status, _, body = call(server, "POST", "/v1/predict", rows.astype("<f4").tobytes(), "application/octet-stream")
    assert status == 200 and len(body) == 20


def test_responses_name_the_model_version_and_the_model_endpoint_describes_it(server: Served) -> None:
    _, headers, _ = call(server, "POST", "/v1/predict", json.dumps({"rows": [[0] * 64]}).encode(), "application/json")
    assert (headers["x-model-name"], headers["x-model-version"]) == ("digits", "1")
    status, _, body = call(server, "GET", "/v1/model")
    described = json.loads(body)
    assert status == 200
    assert described["name"] == "digits" and described["version"] == "1" and described["n_features"] == 64
    assert described["backend"] == "numpy"


def test_openapi_document_describes_every_route(server: Served) -> None:
    status, headers, body = call(server, "GET", "/openapi.json")
    document = json.loads(body)
    assert status == 200 and headers["content-type"] == "application/json"
    assert document["openapi"].startswith("3.")
    assert set(document["paths"]) == {"/v1/predict", "/v1/model", "/healthz", "/readyz", "/metrics", "/openapi.json"}
    row = document["paths"]["/v1/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]["oneOf"][0]
    assert row["properties"]["rows"]["items"]["minItems"] == 64


GOOD_ROW = json.dumps({"rows": [[0.5] * 64]}).encode()


def _post(body: bytes, content_type: str = "application/json", path: str = "/v1/predict") -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def _rows(value: str, count: int = 1, width: int = 64) -> bytes:
    return ('{"rows": [' + ",".join("[" + ",".join([value] * width) + "]" for _ in range(count)) + "]}").encode()


BAD_REQUESTS = [
    ("malformed JSON", _post(b'{"rows": [[1, 2'), 400, "not valid JSON"),
    ("empty body", _post(b""), 400, "empty"),
    ("JSON array instead of object", _post(b"[[1, 2]]"), 400, "not an object"),
    ("unknown key", _post(b'{"rows": [[1]], "extra": 1}'), 400, "exactly one of rows, instances"),
    ("rows not a list", _post(b'{"rows": 5}'), 400, "not a non-empty list"),
    ("wrong feature count", _post(_rows("1", width=63)), 422, "has 63 values; expected 64"),
    ("ragged rows", _post(b'{"rows": [' + b"[" + b"1," * 63 + b"1],[1, 2]]}"), 422, "row 1 has 2 values"),
    ("flat list", _post(b'{"rows": [' + b"1," * 63 + b"1]}"), 422, "one flat list"),
    ("string value", _post(_rows('"7"')), 422, 'is "7", not a number'),
    ("boolean value", _post(_rows("true")), 422, "is true, not a number"),
    ("null value", _post(_rows("null")), 422, "is null, not a number"),
    ("NaN literal", _post(_rows("NaN")), 400, "not valid JSON"),
    ("overflows float32", _post(_rows("1e39")), 422, "finite numbers"),
    ("too many rows", _post(_rows("1", count=MAX_ROWS + 1)), 413, f"at most {MAX_ROWS} rows"),
    ("body over the limit", _post(b" " * (MAX_BODY + 1)), 413, f"at most {MAX_BODY}"),
    ("wrong content type", _post(GOOD_ROW, "text/plain"), 415, "application/json"),
    ("compact with a partial row", _post(b"\0" * 10, "application/octet-stream"), 400, "multiple of 256"),
    ("compact with NaN", _post(np.full(64, np.nan, "<f4").tobytes(), "application/octet-stream"), 422, "finite"),
    ("instances by name without names", _post(b'{"instances": [{"pixel_0": 1}]}'), 422, "does not name"),
    ("unknown query parameter", _post(GOOD_ROW, path="/v1/predict?prob=1"), 400, "unknown query parameter"),
    ("unknown path", b"GET /v2/predict HTTP/1.1\r\nHost: x\r\n\r\n", 404, "one of /healthz"),
    ("wrong method", b"GET /v1/predict HTTP/1.1\r\nHost: x\r\n\r\n", 405, "POST /v1/predict"),
    ("garbage request line", b"HELLO\r\n\r\n", 400, "malformed request line"),
    ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400, "HTTP/1.1"),
    (
        "both lengths (smuggling)",
        b"POST /v1/predict HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
        "only one",
    ),
    ("header too large", b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", 431, "over 16384"),
    ("body never finishes", _post(GOOD_ROW)[:-10], 408, "incomplete"),
]


def _read_response(reader: Any) -> tuple[int, dict[str, str], bytes]:
    """One response from ``socket.makefile("rb")`` (leaves any later, pipelined response unread)."""
    status_line = reader.readline()
    assert status_line, "connection closed without a response"
    headers = {}
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.lower()] = value.strip()
    return int(status_line.split()[1]), headers, reader.read(int(headers["content-length"]))


@pytest.mark.parametrize(("case", "raw", "status", "message"), BAD_REQUESTS, ids=[case[0] for case in BAD_REQUESTS])
def test_bad_requests_get_a_4xx_that_says_what_was_expected(
    server: Served, case: str, raw: bytes, status: int, message: str
) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(raw)
        got, headers, body = _read_response(sock.makefile("rb"))
    error = json.loads(body)
    assert got == status, body
    assert message in error["error"] + " " + error.get("expected", ""), error
    assert error["expected"], "every refusal says what was expected"
    if status == 405:
        assert headers["allow"] == "POST"
    # Refusals name the version too: behind a Service balancing two versions, the cluster canary attributes
    # each failure to the version that answered it.
    assert headers["x-model-version"] == "1", headers
    assert predict(server, np.zeros((1, 64), np.float32))["predictions"], "the server still answers"


def test_a_refused_request_leaves_the_keep_alive_connection_usable(server: Served) -> None:
    connection = server.connect()
    try:
        for body, status in ((b'{"rows": [[1]]}', 422), (GOOD_ROW, 200), (b"{", 400), (GOOD_ROW, 200)):
            connection.request("POST", "/v1/predict", body=body, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            assert response.status == status
    finally:
        connection.close()


def test_pipelined_and_chunked_requests_are_answered_in_order(server: Served, models: Models) -> None:
    one = json.dumps({"rows": [models.rows[0].tolist()]}).encode()
    two = json.dumps({"rows": [models.rows[1].tolist()]}).encode()
    chunked = (
        b"POST /v1/predict HTTP/1.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (10, two[:10], len(two) - 10, two[10:])
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(_post(one) + chunked + _post(one))
        reader = sock.makefile("rb")
        answers = [json.loads(_read_response(reader)[2])["predictions"][0] for _ in range(3)]
    assert answers == [models.expected[0], models.expected[1], models.expected[0]]


def test_concurrent_requests_are_batched_and_the_batch_sizes_show_in_metrics(server: Served, models: Models) -> None:
    before = metrics(server)
    clients, each = 32, 10
    barrier = threading.Barrier(clients)
    errors: list[str] = []

    def client(offset: int) -> None:
        connection = server.connect()
        try:
            barrier.wait()
            for i in range(each):
                row = (offset * each + i) % len(models.rows)
                body = json.dumps({"rows": [models.rows[row].tolist()]}).encode()
                connection.request("POST", "/v1/predict", body=body, headers={"Content-Type": "application/json"})
                answer = json.loads(connection.getresponse().read())
                if answer["predictions"] != [models.expected[row]]:
                    errors.append(f"row {row}: {answer}")
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    after = metrics(server)
    assert errors == []
    batches = sample(after, "gpuflow_server_batch_size", "_count") - sample(
        before, "gpuflow_server_batch_size", "_count"
    )
    rows = sample(after, "gpuflow_server_batch_size", "_sum") - sample(before, "gpuflow_server_batch_size", "_sum")
    singles = sample(after, "gpuflow_server_batch_size", "_bucket", le="1.0") - sample(
        before, "gpuflow_server_batch_size", "_bucket", le="1.0"
    )
    assert rows == clients * each
    assert batches < rows / 2, f"{rows} rows in {batches} batches: requests were not batched"
    assert singles < batches, "no batch held more than one request"


def test_many_concurrent_clients_all_get_their_own_answers(server: Served, models: Models) -> None:
    clients, each = 64, 20
    results: dict[int, list[tuple[int, Any]]] = {}
    rng = np.random.default_rng(1)
    picks = rng.integers(0, len(models.rows), size=(clients, each))

    def client(n: int) -> None:
        connection = server.connect()
        out = []
        try:
            for row in picks[n]:
                body = json.dumps({"rows": [models.rows[row].tolist()]}).encode()
                connection.request("POST", "/v1/predict", body=body, headers={"Content-Type": "application/json"})
                response = connection.getresponse()
                out.append((response.status, json.loads(response.read())["predictions"][0]))
        finally:
            connection.close()
        results[n] = out

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == clients
    for n, answers in results.items():
        assert answers == [(200, models.expected[row]) for row in picks[n]]


def test_metrics_are_prometheus_text_with_model_labels(server: Served) -> None:
    predict(server, np.zeros((1, 64), np.float32))
    call(server, "GET", "/nowhere")
    families = metrics(server)
    assert sample(families, "gpuflow_server_requests", "_total", route="/v1/predict", code="200", model="digits") > 0
    assert sample(families, "gpuflow_server_requests", "_total", route="other", code="404", version="1") >= 1
    assert families["gpuflow_server_request_duration_seconds"].type == "histogram"
    assert sample(families, "gpuflow_server_request_duration_seconds", "_count", route="/v1/predict") > 0
    assert sample(families, "gpuflow_server_model_load_seconds", "", model="digits", version="1") > 0
    assert sample(families, "gpuflow_server_model_warmup_seconds", "") > 0
    assert sample(families, "gpuflow_server_ready", "") == 1
    assert sample(families, "gpuflow_server_model_info", "", backend="numpy", uri="models:/digits@champion") == 1


@pytest.fixture
def named_server(models: Models) -> Iterator[Served]:
    served = start(
        models.tracking_uri, "--model-uri", "models:/digits-named/1", "--backend", "torch", "--offload", "yes"
    )
    yield served
    served.stop()


def test_ready_only_after_the_ready_line_and_sigterm_finishes_in_flight_work(
    named_server: Served, models: Models
) -> None:
    statuses: list[tuple[int, int, bool]] = []  # (readyz, healthz, ready line printed when the answer came)
    ready_pattern = re.compile(r"ready: model=digits-named version=1 backend=torch")
    first_ready_at: float | None = None
    while not any(ready_pattern.search(line) for line in named_server.lines):
        ready = call(named_server, "GET", "/readyz")[0]
        healthy = call(named_server, "GET", "/healthz")[0]
        statuses.append((ready, healthy, any(ready_pattern.search(line) for line in named_server.lines)))
        if ready == 200 and first_ready_at is None:
            first_ready_at = time.monotonic()
        assert named_server.proc.poll() is None, "".join(named_server.lines)
        # The server prints the line before it answers ready; our reader thread may take a moment to see it.
        assert first_ready_at is None or time.monotonic() - first_ready_at < 5, "ready, but no ready line"
        time.sleep(0.005)
    assert statuses and statuses[0][:2] == (503, 200), "alive but not ready while loading"
    # Not ready until then: once /readyz says 200 it stays 200, and the line follows at once (checked above).
    answers = [ready for ready, _, _ in statuses]
    assert answers == sorted(answers, key=lambda code: code == 200) and set(answers) <= {200, 503}, statuses
    assert call(named_server, "GET", "/readyz")[0] == 200

    rows = models.rows[:4]
    instances = [{f"pixel_{i}": float(v) for i, v in enumerate(row)} for row in rows]
    status, _, body = call(
        named_server, "POST", "/v1/predict", json.dumps({"instances": instances}).encode(), "application/json"
    )
    assert status == 200 and json.loads(body)["predictions"] == models.named_expected[:4]

    idle = socket.create_connection(("127.0.0.1", named_server.port), timeout=10)
    busy = socket.create_connection(("127.0.0.1", named_server.port), timeout=10)
    request = _post(json.dumps({"rows": [rows[0].tolist()]}).encode())
    busy.sendall(request[:-5])  # in flight: the body is not complete yet
    time.sleep(0.2)
    named_server.proc.send_signal(signal.SIGTERM)
    named_server.wait_for("SIGTERM: finishing in-flight requests")
    assert idle.recv(1) == b"", "an idle keep-alive connection is closed at shutdown"
    busy.sendall(request[-5:])
    status, headers, body = _read_response(busy.makefile("rb"))
    assert status == 200 and json.loads(body)["predictions"] == models.named_expected[:1]
    assert headers["connection"] == "close"
    assert named_server.proc.wait(timeout=20) == 0
    idle.close()
    busy.close()


def test_a_missing_model_exits_2_and_names_it(models: Models) -> None:
    served = start(models.tracking_uri, "--model-uri", "models:/digits@nope")
    assert served.proc.wait(timeout=60) == 2
    output = "".join(served.lines)
    assert "models:/digits@nope" in output and "alias nope not found" in output


def test_a_port_in_use_exits_4(models: Models) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "workloads.server", "--model-uri", "models:/digits/1", "--port", str(port)],
            cwd=ROOT,
            env={**os.environ, "MLFLOW_TRACKING_URI": models.tracking_uri},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 4, proc.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr


def test_server_code_imports_neither_prefect_nor_tasks() -> None:
    code = (
        "import sys, workloads.server.server, workloads.server.model_loading\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('prefect', 'tasks', 'flows', 'blocks')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
