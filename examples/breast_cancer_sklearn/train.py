"""Breast-cancer diagnosis with scikit-learn's HistGradientBoosting, trained through gpuflow's trainer contract.

No gpuflow import: this is what a trainer in any language does (docs/trainers.md, ``gpuflow-trainer/1``):
read the prepared dataset from GPUFLOW_DATASET_DIR, the hyperparameters from GPUFLOW_HPARAMS, append metrics to
GPUFLOW_METRICS_FILE, log an MLflow model into MLFLOW_RUN_ID, and exit with the contract's codes.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import mlflow
import mlflow.sklearn
import numpy as np
import pandas as pd
from mlflow.models import infer_signature
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import accuracy_score, log_loss

EXIT_CONFIG, EXIT_DATA = 2, 3


def fail(reason: str, code: int) -> None:
    """The contract's failure: one line in the failure file, then the exit code."""
    Path(os.environ["GPUFLOW_FAILURE_FILE"]).write_text(reason + "\n")
    print(f"error: {reason}", file=sys.stderr)
    sys.exit(code)


def report(step: int, metrics: dict[str, float]) -> None:
    with open(os.environ["GPUFLOW_METRICS_FILE"], "a") as out:
        out.write(json.dumps({"step": step, "metrics": metrics}) + "\n")


def main() -> None:
    folder = Path(os.environ["GPUFLOW_DATASET_DIR"])
    manifest = json.loads((folder / "manifest.json").read_text())
    if manifest.get("task") != "classification":
        fail(f"this trainer classifies; the dataset's task is {manifest.get('task')!r}", EXIT_DATA)
    features, label = manifest["schema"]["features"], manifest["schema"]["label"]
    classes = manifest["target"]["classes"]  # names in output order; the label column holds their indices
    hp = json.loads(os.environ.get("GPUFLOW_HPARAMS", "{}"))
    try:
        model = HistGradientBoostingClassifier(
            max_iter=int(hp.get("max_iter", 200)),
            learning_rate=float(hp.get("learning_rate", 0.1)),
            max_leaf_nodes=int(hp.get("max_leaf_nodes", 15)),
            early_stopping=False,
            random_state=int(hp.get("seed", 0)),
        )
    except (TypeError, ValueError) as exc:
        fail(f"bad hyperparameter: {exc}", EXIT_CONFIG)

    def split(name: str) -> tuple[np.ndarray, np.ndarray]:
        """Features and each row's class *position* in ``classes``: scikit-learn orders ``classes_`` by value, so
        training on positions makes ``predict_proba``'s columns follow the dataset's class order, as the contract
        asks."""
        frame = pd.read_parquet(folder / f"{name}.parquet")
        stored = frame[label].to_numpy()
        if manifest["target"].get("stored") == "value":
            position = {value: i for i, value in enumerate(manifest["schema"]["labels"])}
            stored = np.array([position[v] for v in stored.tolist()])
        return frame[features].to_numpy(np.float32), stored.astype(np.int64)

    x_train, y_train = split("train")
    x_val, y_val = split("val")
    model.fit(x_train, y_train)
    proba = model.predict_proba(x_val)
    if proba.shape[1] != len(classes):
        fail(f"the train split holds {proba.shape[1]} of the dataset's {len(classes)} classes", EXIT_DATA)
    accuracy = float(accuracy_score(y_val, proba.argmax(axis=1)))
    report(1, {"val_accuracy": accuracy, "val_loss": float(log_loss(y_val, proba, labels=list(range(len(classes)))))})

    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    run_id = os.environ["MLFLOW_RUN_ID"]
    mlflow.set_experiment(experiment_id=mlflow.get_run(run_id).info.experiment_id)
    example = x_val[:5]  # float32 rows [N, 30]: a tensor signature, so numpy rows go in as gpuflow sends them
    mlflow.sklearn.log_model(
        model,
        name="model",
        run_id=run_id,
        signature=infer_signature(example, proba[:5]),
        input_example=example,
        pyfunc_predict_fn="predict_proba",  # the contract: class probabilities in the dataset's class order
        # MLflow saves scikit-learn models with skops, which loads only the types named here: our own model's
        skops_trusted_types=["sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"],
    )
    print(f"logged HistGradientBoosting ({model.n_iter_} iterations), val_accuracy {accuracy:.4f}")


if __name__ == "__main__":
    main()
