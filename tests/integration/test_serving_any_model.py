"""Serving any MLflow model, through the real server over HTTP: a torch regressor (diabetes), a scikit-learn
classifier with string labels fitted on a DataFrame (breast cancer, through mlflow.pyfunc, a column signature), a
torch CNN taking [1, 8, 8] images, and a scikit-learn pipeline with a string category column, logged with and
without its vocabulary. The torch models are tests/fixtures/task_models.py's, trained on datasets the real prepare
published from their specs.

Every answer is compared with the same model loaded back through MLflow (``mlflow.pytorch`` / ``mlflow.pyfunc``),
as a user checking the server would.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import mlflow.pyfunc
import mlflow.pytorch
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient

from tasks.data.demo import write_digits_csv
from tasks.tracking.model_registry import model_location
from tests.fixtures.model_server import Served, call, start
from tests.fixtures.models import (
    HGB_TRUSTED,
    breast_cancer_frame,
    log_sklearn_classifier,
    train_breast_cancer_classifier,
)
from tests.fixtures.spec_data import diabetes_csv, diabetes_spec, digits_tensor_spec, publish_by_spec
from tests.fixtures.task_models import log_diabetes_regressor, log_digits_cnn
from workloads.dataset import read_split
from workloads.store import ObjectStore
from workloads.tags import METADATA_CATEGORIES, TAG_TASK

CITIES = ["lyon", "nice", "paris"]
# MLflow's hint when it infers an integer column (the pipeline's "visits" is one on purpose)
pytestmark = pytest.mark.filterwarnings("ignore:Hint. Inferred schema contains integer:UserWarning")


@dataclass(frozen=True)
class Store:
    tracking_uri: str
    client: MlflowClient
    diabetes: str  # prepared datasets
    digits: str

    def register(self, name: str, run_id: str, tags: dict[str, str] | None = None) -> str:
        """Register the run's model as ``name`` version 1; returns its local folder."""
        model_uri = self.client.get_run(run_id).data.tags["gpuflow.model_uri"]
        self.client.create_registered_model(name)
        source = model_location(self.client, model_uri)
        self.client.create_model_version(name, source=source, run_id=run_id, tags=tags or {})
        return mlflow.artifacts.download_artifacts(artifact_uri=source, tracking_uri=self.tracking_uri)


def _visits_frame(rows: int = 200) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {"height": rng.normal(170, 10, rows), "visits": rng.integers(0, 9, rows), "city": rng.choice(CITIES, rows)}
    )
    return frame, np.where((frame.city == "paris") ^ (frame.visits > 4), "yes", "no")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    root = tmp_path_factory.mktemp("any-model")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    datasets = root / "store"
    diabetes = publish_by_spec(datasets, diabetes_csv(root), diabetes_spec(), "diabetes")
    write_digits_csv(str(root / "digits.csv"), ObjectStore())
    digits = publish_by_spec(datasets, root / "digits.csv", digits_tensor_spec(), "digits-image")
    return Store(uri, MlflowClient(tracking_uri=uri, registry_uri=uri), diabetes, digits)


def split_of(dataset: str) -> tuple[np.ndarray, np.ndarray]:
    return read_split(dataset, "test", ObjectStore())


@dataclass
class Servers:
    store: Store
    served: dict[str, Served]
    folders: dict[str, str]


@pytest.fixture(scope="module")
def servers(store: Store) -> Iterator[Servers]:
    """Every model logged, registered and served at once (their start-ups overlap)."""
    from sklearn.compose import make_column_transformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    uri = store.tracking_uri
    folders = {}
    # the task tag on the version (the run has it too): version tags are read first
    regressor = log_diabetes_regressor(uri, store.diabetes)
    folders["diabetes"] = store.register("diabetes", regressor, {TAG_TASK: "regression"})
    frame, _ = breast_cancer_frame()
    classifier = train_breast_cancer_classifier()
    run = log_sklearn_classifier(uri, classifier, frame.iloc[:5], trusted=HGB_TRUSTED)
    folders["breast-cancer"] = store.register("breast-cancer", run)  # labels and task from the run's tags
    folders["digits-cnn"] = store.register("digits-cnn", log_digits_cnn(uri, store.digits))
    visits, outcome = _visits_frame()
    encoder = make_column_transformer((OneHotEncoder(), ["city"]), remainder="passthrough")
    pipeline = make_pipeline(encoder, LogisticRegression(max_iter=1000)).fit(visits, outcome)
    vocabulary = {METADATA_CATEGORIES: {"city": CITIES}}
    named = log_sklearn_classifier(uri, pipeline, visits.iloc[:5], metadata=vocabulary)
    folders["visits-named"] = store.register("visits-named", named)
    folders["visits"] = store.register("visits", log_sklearn_classifier(uri, pipeline, visits.iloc[:5]))
    served = {name: start(uri, "--model-uri", f"models:/{name}/1", "--max-wait-us", "2000") for name in folders}
    try:
        for name, server in served.items():
            server.wait_for(f"ready: model={name} version=1", timeout=180)
        yield Servers(store, served, folders)
    finally:
        for server in served.values():
            server.stop()


def post(served: Served, body: Any, path: str = "/v1/predict") -> tuple[int, Any]:
    status, _, raw = call(served, "POST", path, json.dumps(body).encode(), "application/json")
    return status, json.loads(raw)


def answers(served: Served, rows: list[Any], chunk: int = 64) -> list[Any]:
    got: list[Any] = []
    for start_row in range(0, len(rows), chunk):
        status, body = post(served, {"rows": rows[start_row : start_row + chunk]})
        assert status == 200, body
        got += body["predictions"]
    return got


def described(served: Served) -> dict[str, Any]:
    status, _, body = call(served, "GET", "/v1/model")
    assert status == 200
    return json.loads(body)


def test_a_regressor_answers_its_own_values(servers: Servers) -> None:
    served = servers.served["diabetes"]
    x, _ = split_of(servers.store.diabetes)
    with torch.no_grad():
        expected = mlflow.pytorch.load_model(servers.folders["diabetes"])(torch.from_numpy(x)).numpy()[:, 0]
    got = np.array(answers(served, x.tolist()), dtype=np.float32)
    np.testing.assert_allclose(got, expected, rtol=1e-5)  # the compiled numpy chain: float32 rounding apart
    model = described(served)
    assert (model["task"], model["labels"], model["backend"]) == ("regression", None, "numpy")
    status, headers, body = call(
        served, "POST", "/v1/predict", x[:3].astype("<f4").tobytes(), "application/octet-stream"
    )
    assert status == 200 and headers["content-type"] == "application/octet-stream"
    np.testing.assert_allclose(np.frombuffer(body, "<f4"), expected[:3], rtol=1e-5)
    document = json.loads(call(served, "GET", "/openapi.json")[2])
    answer = document["paths"]["/v1/predict"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert answer["properties"]["predictions"]["items"] == {"type": "number"}


def test_a_scikit_learn_classifier_answers_its_string_labels_and_probabilities(servers: Servers) -> None:
    served = servers.served["breast-cancer"]
    frame, _ = breast_cancer_frame()
    model = mlflow.pyfunc.load_model(servers.folders["breast-cancer"])
    probabilities = np.asarray(model.predict(frame))
    labels = described(served)["labels"]
    assert labels == ["benign", "malignant"] and described(served)["backend"] == "pyfunc"
    assert answers(served, frame.to_numpy().tolist()) == [labels[i] for i in probabilities.argmax(axis=1)]
    status, body = post(served, {"rows": frame.iloc[:5].to_numpy().tolist()}, "/v1/predict?proba=1")
    assert status == 200 and body["labels"] == labels
    np.testing.assert_array_equal(body["probabilities"], probabilities[:5])  # float64 through JSON: exact
    status, body = post(served, {"instances": frame.iloc[:2].to_dict(orient="records")})
    assert status == 200 and body["predictions"] == [labels[i] for i in probabilities[:2].argmax(axis=1)]


def test_a_cnn_takes_images_as_nested_lists_or_flat_rows(servers: Servers) -> None:
    served = servers.served["digits-cnn"]
    flat, labels = split_of(servers.store.digits)
    images = flat.reshape(-1, 1, 8, 8)
    with torch.no_grad():
        expected = mlflow.pytorch.load_model(servers.folders["digits-cnn"])(torch.from_numpy(images)).argmax(1)
    assert answers(served, images.tolist()) == expected.tolist()
    assert answers(served, flat[:50].tolist()) == expected[:50].tolist()
    assert (expected.numpy() == labels).mean() > 0.9
    model = described(served)
    assert model["input"] == {"form": "tensor", "n_features": 64, "dtype": "float32", "shape": [1, 8, 8]}
    assert model["backend"] == "torch"  # a convolution: not compiled to numpy
    document = json.loads(call(served, "GET", "/openapi.json")[2])
    rows = document["paths"]["/v1/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    nested = rows["oneOf"][0]["properties"]["rows"]["items"]["oneOf"][0]
    assert (nested["minItems"], nested["items"]["minItems"], nested["items"]["items"]["minItems"]) == (1, 8, 8)


def test_string_categories_are_answered_and_checked_against_the_vocabulary(servers: Servers) -> None:
    visits, _ = _visits_frame()
    model = mlflow.pyfunc.load_model(servers.folders["visits"])
    labels = ["no", "yes"]
    expected = [labels[i] for i in np.asarray(model.predict(visits.iloc[:20])).argmax(axis=1)]
    rows = visits.iloc[:20].astype(object).to_numpy().tolist()
    for name in ("visits-named", "visits"):
        assert answers(servers.served[name], rows) == expected
    columns = described(servers.served["visits-named"])["input"]["columns"]
    assert columns[2] == {"name": "city", "type": "string", "categories": CITIES}


BAD = [
    ("diabetes", {"rows": [[0.1] * 9]}, "", 422, "row 0 has 9 values; expected 10"),
    ("diabetes", {"rows": [[0.1] * 10]}, "?proba=1", 400, "proba=1 on a regression model"),
    ("breast-cancer", {"rows": [["x"] * 30]}, "", 422, 'row 0 value 0 is "x", not a number'),
    ("breast-cancer", {"instances": [{"mean_radius": 1.0}]}, "", 422, "has no feature 'mean_texture'"),
    ("digits-cnn", {"rows": [[[[1] * 7] * 8]]}, "", 422, "row 0 has shape [1, 8, 7]"),
    ("digits-cnn", {"rows": [[1] * 63]}, "", 422, "shape [1, 8, 8] or 64 numbers"),
    ("visits-named", {"rows": [[170.0, 3, "berlin"]]}, "", 422, "'berlin', a category never seen in training"),
    ("visits-named", {"rows": [[170.0, 3.5, "nice"]]}, "", 422, "column 'visits' is 3.5, not a whole number"),
    ("visits", {"rows": [[170.0, 3, 7]]}, "", 422, "column 'city' is 7, not a string"),
    ("visits", {"rows": [[170.0, 3, "berlin"]]}, "", 422, "the model refused these rows: Found unknown categories"),
]


@pytest.mark.parametrize(("name", "body", "query", "status", "says"), BAD, ids=[f"{b[0]}: {b[4]}" for b in BAD])
def test_bad_requests_are_4xx_naming_the_problem(
    servers: Servers, name: str, body: Any, query: str, status: int, says: str
) -> None:
    got, error = post(servers.served[name], body, "/v1/predict" + query)
    assert got == status and says in error["error"] + " " + error["expected"], error
    assert error["expected"]


def test_typed_columns_refuse_the_compact_form(servers: Servers) -> None:
    status, _, body = call(servers.served["visits"], "POST", "/v1/predict", b"\0" * 12, "application/octet-stream")
    assert status == 415 and "typed columns" in json.loads(body)["expected"]


def test_a_refused_category_fails_its_own_request_not_its_batch_mates(servers: Servers) -> None:
    """Sent together, the requests are batched; the model refuses the batch, then answers each one alone."""
    served = servers.served["visits"]
    good = {"rows": [[170.0, 3, "paris"]]}
    bad = {"rows": [[170.0, 3, "berlin"]]}
    results: dict[int, int] = {}
    barrier = threading.Barrier(8)

    def send(index: int) -> None:
        barrier.wait()
        results[index] = post(served, bad if index == 0 else good)[0]

    threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {0: 422, **{i: 200 for i in range(1, 8)}}
    assert not any("Traceback" in line for line in served.lines), "a refused value is not a server fault"
