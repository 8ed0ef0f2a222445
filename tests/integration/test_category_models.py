"""A model that takes a category column as text, evaluated and canaried on a dataset that stores its codes.

The breast-cancer data plus a derived string column ``size`` (low/mid/high tertiles of mean_area, declared in that
order, so codes are not alphabetical) is prepared by the real prepare flow from its spec; the splits store the
codes. A scikit-learn Pipeline (OneHotEncoder on ``size``, the rest scaled, a logistic regression) is fitted on a
DataFrame holding the text, as a team's pandas code would, and logged with mlflow.sklearn with a signature
inferred from that frame (``size`` is a string column). The evaluate flow scores it (the figures are checked
against the pipeline's own answers here) and the rollout flow canaries a second, identical version against it
through real server processes: promoted, agreement 1.0, every answer counted correct as often as the model is
right. Real Prefect API, real MLflow store (SQLite).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from blocks.canary_policy import CanaryPolicy
from blocks.mlflow_tracking import MLflowTracking
from flows.evaluate import evaluate
from flows.prepare import prepare
from flows.rollout import rollout
from tasks.core import settings
from tasks.tracking.model_signature import read_mlmodel
from tests.fixtures.flow_env import mlflow_db_template  # noqa: F401 (fixture used by name)
from tests.fixtures.models import aliases, log_sklearn_classifier, registry_client
from tests.fixtures.spec_data import breast_cancer_csv, breast_cancer_spec, write_spec
from tests.fixtures.stage_runs import module_home
from workloads.dataset import DatasetManifest, load_manifest, read_split
from workloads.tags import METADATA_CATEGORIES

pytestmark = pytest.mark.usefixtures("prefect_api")

SIZES = ["low", "mid", "high"]  # code order: low 0, mid 1, high 2 (alphabetical would be high, low, mid)
POLICY: dict[str, Any] = {
    "analysis_seconds": 1.5,
    "check_interval_seconds": 0.25,
    "min_requests": 20,
    "local_requests_per_second": 300,
    "local_concurrency": 4,
    "min_accuracy": 0.9,
    "min_agreement": 0.99,
    "max_error_rate": 0.0,
    "max_p95_latency_ratio": 3.0,
    "latency_tolerance_seconds": 0.005,
}


@dataclass(frozen=True)
class CategoryHome:
    dataset_uri: str
    runs: tuple[str, str]  # two training runs of the same fitted pipeline
    pipeline: Any


def _with_size(csv: Path) -> Path:
    """The breast-cancer file with a text column ``size``: low/mid/high tertiles of mean_area."""
    frame = pd.read_csv(csv)
    frame["size"] = pd.qcut(frame["mean_area"], 3, labels=SIZES).astype(str)
    out = csv.with_name("breast_cancer_sized.csv")
    frame.to_csv(out, index=False)
    return out


def _frame(uri: str, split: str, manifest: DatasetManifest) -> tuple[pd.DataFrame, np.ndarray]:
    """A split as a team's code reads it: the stored codes of ``size`` turned back into text through the
    manifest's vocabulary, the stored class indices into class names."""
    x, stored = read_split(uri, split, manifest=manifest)
    frame = pd.DataFrame(x, columns=manifest.features)
    vocabulary = next(c["vocabulary"] for c in manifest.extra["columns"] if c["name"] == "size")
    frame["size"] = np.asarray(vocabulary, dtype=object)[x[:, manifest.features.index("size")].astype(int)]
    return frame, np.asarray(manifest.class_names, dtype=object)[stored]


@pytest.fixture(scope="module")
def home(
    prefect_api: None,
    tmp_path_factory: pytest.TempPathFactory,
    mlflow_db_template: Path,  # noqa: F811
) -> Iterator[CategoryHome]:
    from sklearn.compose import make_column_transformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    with module_home(tmp_path_factory, mlflow_db_template, "category-models") as folder:
        spec = breast_cancer_spec()
        spec["columns"].append({"name": "size", "type": "category", "categories": SIZES})
        source = _with_size(breast_cancer_csv(folder))
        dataset = prepare(str(source), dataset_name="cancer-sized", dataset_spec=str(write_spec(folder, spec)))
        manifest = load_manifest(dataset.dataset_uri)
        frame, labels = _frame(dataset.dataset_uri, "train", manifest)
        encoder = make_column_transformer((OneHotEncoder(), ["size"]), remainder=StandardScaler())
        pipeline = make_pipeline(encoder, LogisticRegression(max_iter=1000)).fit(frame, labels)
        vocabulary = {METADATA_CATEGORIES: {"size": SIZES}}  # the server refuses any other size
        runs = tuple(
            log_sklearn_classifier(settings.tracking_uri(), pipeline, frame.iloc[:5], metadata=vocabulary)
            for _ in range(2)
        )
        yield CategoryHome(dataset.dataset_uri, (runs[0], runs[1]), pipeline)


def test_the_signature_takes_size_as_text(home: CategoryHome) -> None:
    """Read as the rollout reads it: the MLmodel file alone, through gpuflow's tracking block."""
    tracking = MLflowTracking(tracking_uri=settings.tracking_uri())
    model_uri = registry_client().get_run(home.runs[0]).data.tags["gpuflow.model_uri"]

    found = read_mlmodel(tracking, model_uri)

    assert found is not None
    schema = found.get_input_schema()
    assert schema is not None and not schema.is_tensor_spec()
    assert {spec.name: spec.type.name for spec in schema.inputs}["size"] == "string"
    assert load_manifest(home.dataset_uri).extra["columns"][-1]["vocabulary"] == SIZES


def test_evaluate_then_a_canary_against_itself_is_promoted_with_full_agreement(home: CategoryHome) -> None:
    name = f"cancer-sized-{uuid.uuid4().hex[:8]}"
    manifest = load_manifest(home.dataset_uri)
    test_frame, truth = _frame(home.dataset_uri, "test", manifest)
    expected_accuracy = float(np.mean(home.pipeline.predict(test_frame) == truth))

    first = evaluate(train_run_id=home.runs[0], dataset_uri=home.dataset_uri, model_name=name)
    second = evaluate(train_run_id=home.runs[1], dataset_uri=home.dataset_uri, model_name=name, promote_on_pass=False)

    assert first.promoted and first.metrics["accuracy"] == pytest.approx(expected_accuracy) and expected_accuracy > 0.9
    assert second.gate.passed, second.gate
    assert second.metrics["accuracy"] == first.metrics["accuracy"] and second.champion_metrics is not None

    policy = f"category-canary-{uuid.uuid4().hex[:8]}"
    CanaryPolicy(**POLICY, step_weights=[50, 100]).save(policy)
    result = rollout(model_name=name, policy=policy)

    assert (result.decision, result.failed_check) == ("promoted", None), result.reason
    assert aliases(name) == {"champion": "2", "challenger": "2"}
    for step in result.steps:
        assert step.agreement == 1.0 and step.compared > 0
        assert step.canary.errors == 0 and step.stable.errors == 0 and step.unanswered == 0
        for served in (step.canary, step.stable):
            if served.answered:  # at 100 % stable answers only shadows, which count no accuracy
                assert served.accuracy is not None and served.accuracy > 0.9
