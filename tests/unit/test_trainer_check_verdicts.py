"""``gpuflow trainer check`` reads the launcher's documented lines into verdicts: the cases the CLI tests do not run.

The model-point lines are made by the launcher's own check functions, so a rewording there fails here.
"""

from __future__ import annotations

import numpy as np
import pytest

from tasks.training.trainer_check import (
    EXIT,
    HPARAMS,
    LOADS,
    OUTPUT,
    POINTS,
    SIGNATURE,
    START,
    CheckNotRun,
    Launch,
    verdicts,
)
from workloads.dataset import DatasetManifest
from workloads.launcher.checks import breach_line, check_output, check_schema

STARTED = ["launcher: training t (classification, d/1) on cpu into run r; no checkpoint yet; starting python x.py"]


def manifest() -> DatasetManifest:
    return DatasetManifest.from_dict(
        {
            "name": "d",
            "version": "1",
            "schema": {"features": ["a", "b"], "label": "y", "labels": [0, 1, 2]},
            "rows": {"train": 3},
            "splits": {"train": {"file": "train.parquet", "rows": 3}},
        }
    )


def by_name(launch: Launch) -> dict[str, str]:
    return {p.name: p.line().removeprefix(p.name + ": ") for p in verdicts(launch, "classification", 0)}


def test_a_model_that_does_not_load_fails_that_point_and_leaves_the_later_ones_unchecked() -> None:
    line = breach_line("model models:/m-1 does not load with mlflow.pyfunc.load_model (ImportError: xgboost)")
    found = by_name(Launch(2, STARTED, [line], 120))

    assert (
        found[LOADS].startswith("FAIL: model models:/m-1 does not load")
        and "— fix: log it with a flavor" in found[LOADS]
    )
    assert found[SIGNATURE] == found[OUTPUT] == "not checked (model loads failed)"
    assert found[EXIT] == "pass (0: trained)"


def test_the_launchers_own_model_lines_land_on_their_points() -> None:
    no_signature = check_schema(None, manifest(), "models:/m-1")[0]
    wrong_answer = check_output(np.zeros((5, 2)), manifest(), "models:/m-1")[0]

    assert by_name(Launch(2, STARTED, [breach_line(no_signature)], 120))[SIGNATURE].startswith("FAIL: model ")
    output = by_name(Launch(2, STARTED, [breach_line(wrong_answer)], 120))[OUTPUT]
    assert "shape [5, 2]; the dataset has 3 classes: expected [5, 3]" in output
    assert output.endswith("in target.classes order")


def test_an_exit_code_the_contract_does_not_define_fails_its_point() -> None:
    found = by_name(Launch(7, STARTED, ["error: trainer exited 7: out of patience"], 120))

    assert found[EXIT] == (
        "FAIL: the trainer exited 7, a code the contract gives no meaning — fix: exit 0 once the model is logged, "
        "else 1 (retryable), 2 (configuration), 3 (data) or 130 (interrupted)"
    )
    assert found[START] == "pass"


def test_exit_2_from_the_trainer_is_a_refused_configuration() -> None:
    found = by_name(Launch(2, STARTED, ["error: trainer exited 2: learning_rate must be below 1"], 120))

    assert found[HPARAMS].startswith("FAIL: the trainer refused its configuration: learning_rate must be below 1")
    assert found[EXIT] == "pass (2: configuration error, with its failure line)"


def test_a_failure_without_its_line_fails_the_exit_code_point() -> None:
    found = by_name(Launch(1, STARTED, ["error: trainer exited 1 (it wrote no failure line)"], 120))

    assert found[EXIT].startswith("FAIL: the trainer exited 1 (failed, retryable) without a failure line — fix: ")


def test_mlflow_refusing_a_hyperparameter_name_fails_that_point() -> None:
    found = by_name(Launch(2, [], ["error: MLflow refused the hyperparameters as params: bad name 'a?'"], 120))

    assert found[HPARAMS].startswith("FAIL: MLflow refused the hyperparameters as params: bad name 'a?' — fix: rename")
    assert list(found) == list(POINTS)


def test_a_launcher_that_could_not_judge_the_trainer_is_no_verdict() -> None:
    with pytest.raises(CheckNotRun, match="the store failed: connection refused"):
        verdicts(Launch(1, STARTED, ["error: the store failed: connection refused"], 120), "classification", 0)
