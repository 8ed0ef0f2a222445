"""The trainer's configuration: command-line arguments plus environment, checked before any work starts.

Every problem found here is permanent (retrying the same pod cannot fix it), so it ends the program with
:data:`EXIT_CONFIG` and one line on stderr; see the package docstring for all exit codes.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, NoReturn

# The exit codes are the trainer contract's (gpuflow-trainer/1), declared once in workloads/sdk/contract.py; the
# errors and torchrun's ranks are the SDK's too (workloads/sdk/errors.py, ranks.py): every trainer shares them.
from workloads.sdk.contract import EXIT_CONFIG as EXIT_CONFIG
from workloads.sdk.contract import EXIT_DATA as EXIT_DATA
from workloads.sdk.contract import EXIT_FAILED as EXIT_FAILED
from workloads.sdk.contract import EXIT_INTERRUPTED as EXIT_INTERRUPTED
from workloads.sdk.contract import EXIT_OK as EXIT_OK
from workloads.sdk.errors import ConfigError as ConfigError
from workloads.sdk.errors import DatasetError as DatasetError
from workloads.sdk.errors import GroupError as GroupError
from workloads.sdk.errors import TrainerError as TrainerError
from workloads.sdk.ranks import DIST_TIMEOUT_ENV as DIST_TIMEOUT_ENV
from workloads.sdk.ranks import Ranks as Ranks
from workloads.sdk.ranks import parse_ranks as parse_ranks
from workloads.store import join

DEVICES = ("auto", "cpu", "cuda")
EARLY_STOP = ("off", "plateau", "divergence", "both")
MIN_TELEMETRY_INTERVAL = 0.05  # GpuSampler's finest interval
_TRAINING_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class Hyperparameters:
    """What decides the trained model; stored in every checkpoint and logged as MLflow params."""

    epochs: int
    batch_size: int
    learning_rate: float
    hidden_size: int
    dropout: float
    seed: int


DEFAULTS = Hyperparameters(epochs=20, batch_size=64, learning_rate=1e-3, hidden_size=128, dropout=0.0, seed=42)


def hyperparameters(values: Mapping[str, Any]) -> Hyperparameters:
    """The built-in MLP's hyperparameters from an SDK trainer's ``ctx.hparams`` (JSON), each missing one at its
    command-line default; an unknown name, a wrong type or a value out of range is a :class:`ConfigError`."""
    defaults = asdict(DEFAULTS)
    unknown = sorted(set(values) - set(defaults))
    _check(not unknown, f"unknown hyperparameter {', '.join(unknown)}; the built-in MLP takes {', '.join(defaults)}")
    chosen: dict[str, Any] = {}
    for name, default in defaults.items():
        value = values.get(name, default)
        kind = type(default)
        # JSON has one number type: an integral float is an int, any int a float; bools are neither.
        if kind is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        elif kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        _check(
            isinstance(value, kind) and not isinstance(value, bool),
            f"hyperparameter {name} must be {'an integer' if kind is int else 'a number'}, got {value!r}",
        )
        chosen[name] = value
    hyper = Hyperparameters(**chosen)
    check_hyperparameters(hyper, "hyperparameter {}")
    return hyper


def check_hyperparameters(hyper: Hyperparameters, name: str = "--{}") -> None:
    """Each value in its range; ``name`` formats a field's name for the error (``--{}``: ``--batch-size``)."""

    def called(field_name: str) -> str:
        return name.format(field_name.replace("_", "-") if name.startswith("--") else field_name)

    h = hyper
    _check(h.epochs >= 1, f"{called('epochs')} must be at least 1, got {h.epochs}")
    _check(h.batch_size >= 1, f"{called('batch_size')} must be at least 1, got {h.batch_size}")
    _check(h.learning_rate > 0, f"{called('learning_rate')} must be positive, got {h.learning_rate}")
    _check(h.hidden_size >= 1, f"{called('hidden_size')} must be at least 1, got {h.hidden_size}")
    _check(0.0 <= h.dropout < 1.0, f"{called('dropout')} must be in [0, 1), got {h.dropout}")
    _check(h.seed >= 0, f"{called('seed')} must be non-negative, got {h.seed}")


@dataclass(frozen=True)
class TrainerConfig:
    """Everything one trainer run needs, already validated."""

    dataset_uri: str
    training_id: str
    hyper: Hyperparameters
    device: str
    checkpoint_uri: str
    tracking_uri: str
    run_id: str
    keep_checkpoints: int
    threads: int | None
    early_stop: str = "off"  # one of EARLY_STOP
    patience: int = 5  # epochs without improvement before a plateau stops training
    telemetry_interval: float = 1.0  # seconds between GPU samples
    ranks: Ranks = field(default_factory=Ranks)  # torchrun's view of this process; a single process by default

    def params(self) -> dict[str, Any]:
        return {
            **asdict(self.hyper),
            "dataset_uri": self.dataset_uri,
            "training_id": self.training_id,
            "early_stop": self.early_stop,
            "patience": self.patience,
        }


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting, so all errors look alike."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m workloads.trainer",
        description="Train the gpuflow MLP (a classifier or a regressor, by the dataset's task).",
    )
    parser.add_argument("--dataset-uri", required=True, help="prepared dataset folder (path, file:// or s3://)")
    parser.add_argument("--training-id", required=True, help="names the checkpoint folder; reuse it to resume")
    parser.add_argument("--epochs", type=int, default=DEFAULTS.epochs)
    parser.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size)
    parser.add_argument("--learning-rate", type=float, default=DEFAULTS.learning_rate)
    parser.add_argument("--hidden-size", type=int, default=DEFAULTS.hidden_size)
    parser.add_argument("--dropout", type=float, default=DEFAULTS.dropout)
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed)
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--checkpoint-root", default=None, help="default: $GPUFLOW_STORE_URI/checkpoints")
    parser.add_argument("--keep-checkpoints", type=int, default=3, help="newest checkpoints kept")
    parser.add_argument(
        "--early-stop",
        default="off",
        help="off, plateau (val_accuracy or val_rmse stalls), divergence (NaN or rising loss), both",
    )
    parser.add_argument("--patience", type=int, default=5, help="epochs without improvement before a plateau stops")
    parser.add_argument(
        "--telemetry-interval", type=float, default=None, help="seconds between GPU samples (default 1)"
    )
    return parser


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def parse_config(argv: Sequence[str], environ: Mapping[str, str] = os.environ) -> TrainerConfig:
    """Parse and validate; raises :class:`ConfigError` naming the bad value and what was expected."""
    args = _parser().parse_args(list(argv))
    hyper = Hyperparameters(**{name: getattr(args, name) for name in asdict(DEFAULTS)})  # --batch-size: batch_size
    check_hyperparameters(hyper)
    _check(args.device in DEVICES, f"--device must be one of {', '.join(DEVICES)}, got {args.device!r}")
    _check(args.keep_checkpoints >= 1, f"--keep-checkpoints must be at least 1, got {args.keep_checkpoints}")
    _check(
        args.early_stop in EARLY_STOP, f"--early-stop must be one of {', '.join(EARLY_STOP)}, got {args.early_stop!r}"
    )
    _check(args.patience >= 1, f"--patience must be at least 1, got {args.patience}")
    target = run_target(args, environ, "the trainer logs to MLflow")

    threads_text = environ.get("GPUFLOW_TORCH_THREADS", "").strip()
    _check(
        not threads_text or (threads_text.isdigit() and int(threads_text) >= 1),
        f"GPUFLOW_TORCH_THREADS must be a positive integer, got {threads_text!r}",
    )

    interval = _telemetry_interval(args.telemetry_interval, environ)

    return TrainerConfig(
        dataset_uri=target.dataset_uri,
        training_id=args.training_id,
        hyper=hyper,
        device=args.device,
        checkpoint_uri=target.checkpoint_uri,
        tracking_uri=target.tracking_uri,
        run_id=target.run_id,
        keep_checkpoints=args.keep_checkpoints,
        threads=int(threads_text) if threads_text else None,
        early_stop=args.early_stop,
        patience=args.patience,
        telemetry_interval=interval,
        ranks=parse_ranks(environ),
    )


@dataclass(frozen=True)
class RunTarget:
    """Where a training reads and writes: what the built-in trainer and the launcher both check the same way."""

    dataset_uri: str
    tracking_uri: str
    run_id: str
    checkpoint_uri: str


def run_target(args: argparse.Namespace, environ: Mapping[str, str], mlflow_use: str) -> RunTarget:
    """``--dataset-uri``, ``--training-id``, ``--checkpoint-root`` and the MLflow run from the environment,
    checked; ``mlflow_use`` says in the error why MLflow is needed (e.g. "the trainer logs to MLflow")."""
    _check(bool(args.dataset_uri.strip()), "--dataset-uri must not be empty")
    _check(
        bool(_TRAINING_ID.match(args.training_id)),
        f"--training-id must be 1-128 letters, digits, '.', '_' or '-', got {args.training_id!r}",
    )
    tracking_uri = environ.get("MLFLOW_TRACKING_URI", "").strip()
    run_id = environ.get("MLFLOW_RUN_ID", "").strip()
    _check(bool(tracking_uri), f"environment variable MLFLOW_TRACKING_URI is not set: {mlflow_use}")
    _check(bool(run_id), "environment variable MLFLOW_RUN_ID is not set: the trainer logs into an existing run")
    root = args.checkpoint_root or environ.get("GPUFLOW_STORE_URI", "").strip()
    _check(bool(root), "set --checkpoint-root or GPUFLOW_STORE_URI: checkpoints need a place to live")
    checkpoint_uri = (
        join(args.checkpoint_root, args.training_id)
        if args.checkpoint_root
        else join(root, "checkpoints", args.training_id)
    )
    return RunTarget(args.dataset_uri.rstrip("/"), tracking_uri, run_id, checkpoint_uri)


def _telemetry_interval(given: float | None, environ: Mapping[str, str]) -> float:
    """``--telemetry-interval``, else ``GPUFLOW_TELEMETRY_INTERVAL``, else 1 s; finer than 0.05 s is refused."""
    if given is not None:
        name, value = "--telemetry-interval", given
    else:
        text = environ.get("GPUFLOW_TELEMETRY_INTERVAL", "").strip()
        if not text:
            return 1.0
        name = "GPUFLOW_TELEMETRY_INTERVAL"
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(f"{name} must be a number of seconds, got {text!r}") from None
    _check(
        math.isfinite(value) and value >= MIN_TELEMETRY_INTERVAL,
        f"{name} must be at least {MIN_TELEMETRY_INTERVAL} seconds, got {value}",
    )
    return value
