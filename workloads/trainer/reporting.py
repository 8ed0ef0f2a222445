"""What the trainer tells MLflow: params once, metrics once per epoch in one batch, the model at the end.

The run belongs to the flow (it creates and terminates it); the trainer only writes into it, so a restarted
trainer writes into the same run. Params already on the run are not written again, and an epoch step
already in the metric history is not logged twice.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from workloads.mlflow_errors import is_not_found
from workloads.mlflow_params import param_text
from workloads.tags import TAG_LABELS, TAG_MODEL_URI, TAG_TASK


class RunReporter:
    """Writes into one existing MLflow run through an explicit client."""

    def __init__(self, tracking_uri: str, run_id: str) -> None:
        from mlflow import MlflowClient

        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.client = MlflowClient(tracking_uri=tracking_uri)

    def check_run(self) -> dict[str, str]:
        """Fails fast (``LookupError``) when the run does not exist; returns the params already logged."""
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(self.run_id)
        except MlflowException as exc:
            if is_not_found(exc):
                raise LookupError(f"MLflow run {self.run_id!r} does not exist at {self.tracking_uri}") from exc
            raise
        return dict(run.data.params)

    def log_params(self, params: dict[str, Any], existing: dict[str, str]) -> list[str]:
        """Log the params the run lacks; returns the names whose logged value differs (left as they were)."""
        from mlflow.entities import Param

        new = [Param(k, param_text(v)) for k, v in params.items() if k not in existing]
        if new:
            self.client.log_batch(self.run_id, params=new)
        return [k for k, v in params.items() if k in existing and existing[k] != param_text(v)]

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def logged_steps(self, key: str) -> set[int]:
        return {int(m.step) for m in self.client.get_metric_history(self.run_id, key)}

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """All of one epoch's metrics in one request, under step ``epoch``."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(
            self.run_id, metrics=[Metric(key, float(value), now, epoch) for key, value in metrics.items()]
        )

    def log_metric(self, key: str, value: float, step: int = 0) -> None:
        self.client.log_metric(self.run_id, key, value, step=step)

    def epoch_history(self, keys: Iterable[str], upto: int) -> list[dict[str, float]]:
        """Logged per-epoch metrics of steps 1..``upto`` as one dict per epoch (with ``epoch``), oldest first.

        A restarted trainer replays them into its early stopper, so a resumed run stops where an
        uninterrupted one would have.
        """
        by_step: dict[int, dict[str, float]] = {}
        for key in keys:
            for m in self.client.get_metric_history(self.run_id, key):
                if 1 <= m.step <= upto:
                    by_step.setdefault(int(m.step), {"epoch": float(m.step)})[key] = float(m.value)
        return [by_step[step] for step in sorted(by_step)]

    def log_json(self, data: dict[str, Any], artifact_file: str) -> None:
        self.client.log_dict(self.run_id, data, artifact_file)

    def log_bytes(self, data: bytes, artifact_file: str) -> None:
        """Upload ``data`` as ``artifact_file`` (folder/name) of the run."""
        folder, _, name = artifact_file.rpartition("/")
        with tempfile.TemporaryDirectory(prefix="gpuflow-artifact-") as tmp:
            path = Path(tmp) / name
            path.write_bytes(data)
            self.client.log_artifact(self.run_id, str(path), artifact_path=folder or None)

    def model_uri(self) -> str | None:
        return self.client.get_run(self.run_id).data.tags.get(TAG_MODEL_URI)

    def log_model(self, model: Any, example: Any, labels: list[Any], task: str, step: int) -> str:
        """Log the model and tag the run with its URI, its task and (classification) its labels.

        The model is exported with ``torch.export`` (pt2) on CPU in eval mode: ``mlflow.pytorch.load_model``
        returns an ``nn.Module`` (a GraphModule) that needs no gpuflow code and no pickle, takes float32
        ``[N, n_features]`` and returns logits ``[N, n_classes]`` (regression: values ``[N, 1]``). It is already
        in inference mode; calling ``.eval()`` on it raises, so callers just use ``torch.no_grad()``.
        """
        import mlflow
        import mlflow.pytorch
        import torch
        from mlflow.models import infer_signature

        mlflow.set_tracking_uri(self.tracking_uri)
        # Without this MLflow files the LoggedModel (and its artifacts) under the default experiment,
        # not the run's: its experiment lookup prefers the process default over the source run.
        mlflow.set_experiment(experiment_id=self.client.get_run(self.run_id).info.experiment_id)
        model = model.to("cpu").eval()
        with torch.no_grad():
            output = model(example).numpy()
        signature = infer_signature(example.numpy(), output)
        info = mlflow.pytorch.log_model(
            model,
            name="model",
            signature=signature,
            input_example=example.numpy(),
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            serialization_format="pt2",  # torch.export: loads without pickle or gpuflow's code
            step=step,
            run_id=self.run_id,
        )
        tags = {TAG_MODEL_URI: info.model_uri, TAG_TASK: task}
        if task == "classification":
            tags[TAG_LABELS] = json.dumps(labels)
        self.set_tags(tags)
        return str(info.model_uri)
