"""TrainerContext: a trainer's side of the contract as one object (what the launcher set, and what to give back).

Nothing heavy at import: numpy and pyarrow load with the first :meth:`TrainerContext.read_split`, torch and
MLflow with :meth:`TrainerContext.log_model`, so an entry point pays only for what it uses.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from workloads.sdk import contract as c

if TYPE_CHECKING:
    import numpy as np

    from workloads.dataset import DatasetManifest

STORED_TIMEOUT_SECONDS = 300.0  # a checkpoint upload slower than this is left to finish in the background
STORED_POLL_SECONDS = 0.005

REQUIRED = (
    c.ENV_DATASET_DIR,
    c.ENV_METRICS_FILE,
    c.ENV_FAILURE_FILE,
    c.ENV_STOP_FILE,
    c.ENV_CHECKPOINT_DIR,
    c.ENV_TRACKING_URI,
    c.ENV_RUN_ID,
)


class TrainerFailed(SystemExit):
    """Raised by :meth:`TrainerContext.fail`: ends the trainer with its exit code (a SystemExit, so nothing
    catches it by accident); the reason is already in the failure file and on stderr."""

    def __init__(self, reason: str, exit_code: int) -> None:
        super().__init__(exit_code)
        self.reason = reason
        self.exit_code = exit_code


class ContextError(Exception):
    """The environment is not a launcher's: a configuration error (exit 2)."""


@dataclass
class TrainerContext:
    """What a trainer receives from the launcher; build it with :meth:`from_env`."""

    dataset_dir: Path
    metrics_file: Path
    failure_file: Path
    stop_file: Path
    checkpoint_dir: Path
    tracking_uri: str
    run_id: str
    hparams: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    device_request: str = ""  # --device as the launcher was given it (auto, cpu, cuda); "" = as ``device``
    dataset_uri: str = ""
    training_id: str = ""
    stored_file: Path | None = None  # where the launcher says which step's checkpoint is in the store

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TrainerContext:
        """Read the launcher's variables; a missing one is a :class:`ContextError` saying how to run the trainer."""
        env = os.environ if environ is None else environ
        missing = [name for name in REQUIRED if not env.get(name, "").strip()]
        if missing:
            raise ContextError(
                f"{', '.join(missing)} not set: run this trainer under the launcher "
                "(python -m workloads.launcher --dataset-uri URI --training-id ID -- COMMAND)"
            )
        contract = env.get(c.ENV_CONTRACT, c.CONTRACT)
        if contract != c.CONTRACT:
            raise ContextError(f"the launcher speaks {contract!r}; this SDK knows {c.CONTRACT!r}")
        text = env.get(c.ENV_HPARAMS, "").strip() or "{}"
        try:
            hparams = json.loads(text)
        except ValueError as exc:
            raise ContextError(f"{c.ENV_HPARAMS} is not JSON: {exc}") from None
        if not isinstance(hparams, dict):
            raise ContextError(f"{c.ENV_HPARAMS} must be a JSON object, got {text!r}")
        return cls(
            dataset_dir=Path(env[c.ENV_DATASET_DIR]),
            metrics_file=Path(env[c.ENV_METRICS_FILE]),
            failure_file=Path(env[c.ENV_FAILURE_FILE]),
            stop_file=Path(env[c.ENV_STOP_FILE]),
            checkpoint_dir=Path(env[c.ENV_CHECKPOINT_DIR]),
            tracking_uri=env[c.ENV_TRACKING_URI],
            run_id=env[c.ENV_RUN_ID],
            hparams=hparams,
            device=env.get(c.ENV_DEVICE, "cpu") or "cpu",
            device_request=env.get(c.ENV_DEVICE_REQUEST, ""),
            dataset_uri=env.get(c.ENV_DATASET_URI, ""),
            training_id=env.get(c.ENV_TRAINING_ID, ""),
            stored_file=Path(env[c.ENV_STORED_FILE]) if env.get(c.ENV_STORED_FILE, "").strip() else None,
        )

    # ------------------------------------------------------------------ the dataset

    @cached_property
    def manifest(self) -> DatasetManifest:
        from workloads.dataset import load_manifest
        from workloads.store import ObjectStore

        return load_manifest(str(self.dataset_dir), ObjectStore())

    @property
    def task(self) -> str:
        """``classification`` or ``regression``."""
        return self.manifest.task

    @property
    def primary_metric(self) -> str:
        """The figure to report for early stopping and the contract: ``val_accuracy`` or ``val_rmse``."""
        return c.PRIMARY_METRIC[self.task]

    @property
    def class_names(self) -> list[Any]:
        """The classes in output order (empty for regression); column i of the model's output is class i."""
        return self.manifest.class_names

    @property
    def features(self) -> list[str]:
        return self.manifest.features

    @property
    def tensor_shape(self) -> tuple[int, ...] | None:
        """The declared shape of one row (``(1, 8, 8)``) when the features are one tensor column, else None."""
        return c.tensor_shape(self.manifest)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One row as :meth:`read_split` gives it: the tensor shape, or ``(F,)``."""
        return self.tensor_shape or (len(self.features),)

    def read_split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``train``, ``val`` or ``test``: x float32 ``[N, *input_shape]``; y the class index (int64, the output
        column of the class) or, for regression, the target (float32)."""
        import numpy as np

        from workloads.dataset import read_split
        from workloads.store import ObjectStore

        x, raw = read_split(str(self.dataset_dir), name, ObjectStore(), manifest=self.manifest)
        x = x.reshape((x.shape[0], *self.input_shape))
        if self.task == "regression":
            return x, raw.astype(np.float32)
        index = {value: i for i, value in enumerate(self.manifest.labels)}
        try:
            y = np.fromiter((index[v] for v in raw.tolist()), dtype=np.int64, count=len(raw))
        except KeyError as exc:
            self.fail(f"split {name!r} has label {exc.args[0]!r}, not in the manifest's classes", c.EXIT_DATA)
        return x, y

    # ------------------------------------------------------------------ talking back

    def report(self, step: int, metrics: Mapping[str, Any], checkpoint: bool = False) -> None:
        """Append one metrics line (flushed at once); ``checkpoint=True`` after writing into :attr:`checkpoint_dir`
        makes the launcher mirror it to the store."""
        line = c.metrics_line(step, dict(metrics), checkpoint).to_json() + "\n"
        fd = os.open(self.metrics_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())  # one write of one line: the launcher never sees half of it
        finally:
            os.close(fd)

    def wait_until_stored(self, step: int, timeout: float = STORED_TIMEOUT_SECONDS) -> bool:
        """Wait until the launcher says ``step`` 's checkpoint is in the store (after a report with
        ``checkpoint=True``), so a pod killed from now on resumes after ``step``. False when it did not say so
        within ``timeout`` seconds, or runs without saying it (an older launcher)."""
        if self.stored_file is None:
            return False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if int(self.stored_file.read_text() or 0) >= step:
                    return True
            except (FileNotFoundError, ValueError):
                pass
            time.sleep(STORED_POLL_SECONDS)
        return False

    def should_stop(self) -> bool:
        """True once the launcher asked for an early stop: finish the step, log the model, return."""
        return self.stop_file.exists()

    @property
    def stop_reason(self) -> str:
        try:
            return self.stop_file.read_text().strip()
        except FileNotFoundError:
            return ""

    def fail(self, reason: str, exit_code: int = c.EXIT_FAILED) -> NoReturn:
        """End the trainer: ``reason`` (one line) to the failure file and stderr, exit with ``exit_code``
        (1 retryable, 2 configuration, 3 data)."""
        line = " ".join(reason.split())
        with contextlib.suppress(OSError):
            self.failure_file.write_text(line + "\n")
        print(f"error: {line}", file=sys.stderr, flush=True)
        raise TrainerFailed(line, exit_code)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log what describes this training beyond its hyperparameters (the launcher logs those) as MLflow params
        on the run: values that are not strings as JSON; a param the run already has keeps its first value."""
        from workloads.quiet import quiet_mlflow

        quiet_mlflow()  # before MLflow's first import in this process
        from mlflow import MlflowClient

        from workloads.mlflow_params import log_new_params

        log_new_params(MlflowClient(tracking_uri=self.tracking_uri), self.run_id, params)

    def log_model(self, model: Any, **kwargs: Any) -> str:
        """Log a torch module or a scikit-learn estimator to the run as ``model``, its signature from the
        dataset; returns the model URI. See :func:`workloads.sdk.models.log_model`."""
        from workloads.sdk.models import log_model

        return log_model(self, model, **kwargs)
