"""The launcher's command line (``[options] -- COMMAND ARGS...``) and environment, checked before anything runs.

Every problem found here is permanent, so it ends the launcher with exit 2 and one line on stderr, as the
built-in trainer's configuration errors do (the same :class:`ConfigError`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

# The built-in trainer's own checks, so both programs accept and refuse the same values.
from workloads.sdk.ranks import parse_ranks
from workloads.trainer.config import DEVICES, EARLY_STOP, ConfigError, _check, _telemetry_interval, run_target

DEFAULT_STALL_TIMEOUT = 0.0  # seconds; 0 = off
DEFAULT_STOP_GRACE = 60.0


@dataclass(frozen=True)
class LauncherConfig:
    """Everything one launch needs, already validated."""

    command: tuple[str, ...]
    dataset_uri: str
    training_id: str
    hparams: dict[str, Any]
    checkpoint_uri: str
    tracking_uri: str
    run_id: str
    device: str = "auto"
    early_stop: str = "off"
    patience: int = 5
    stall_timeout: float = DEFAULT_STALL_TIMEOUT  # 0: never
    stop_grace: float = DEFAULT_STOP_GRACE
    telemetry_interval: float = 1.0
    batch_seconds: float = 0.5  # a relayed point waits at most this long for its batch
    rank: int = 0  # torchrun's RANK when torchrun started this launcher (one per rank); 0 owns the outputs
    world_size: int = 1  # torchrun's WORLD_SIZE: how many ranks train together


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m workloads.launcher",
        description="Run a trainer command under the gpuflow-trainer/1 contract (docs/trainers.md).",
        usage="python -m workloads.launcher --dataset-uri URI --training-id ID [options] -- COMMAND [ARGS...]",
    )
    parser.add_argument("--dataset-uri", required=True, help="prepared dataset folder (path, file:// or s3://)")
    parser.add_argument("--training-id", required=True, help="names the checkpoint folder; reuse it to resume")
    parser.add_argument("--hparams", default="{}", help="hyperparameters as one JSON object")
    parser.add_argument("--checkpoint-root", default=None, help="default: $GPUFLOW_STORE_URI/checkpoints")
    parser.add_argument("--device", default="auto", help="auto (cuda when a GPU is visible), cpu or cuda")
    parser.add_argument("--early-stop", default="off", help="off, plateau, divergence or both")
    parser.add_argument("--patience", type=int, default=5, help="reports without improvement before a plateau stop")
    parser.add_argument(
        "--stall-timeout",
        type=float,
        default=DEFAULT_STALL_TIMEOUT,
        help="seconds without a metrics line before the trainer is stopped (0: never)",
    )
    parser.add_argument(
        "--stop-grace",
        type=float,
        default=DEFAULT_STOP_GRACE,
        help="seconds a trainer has to exit after a stop request before it gets SIGTERM",
    )
    parser.add_argument("--telemetry-interval", type=float, default=None, help="seconds between GPU samples")
    return parser


def split_command(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Options before ``--``, the trainer command after it."""
    args = list(argv)
    if "--" not in args:
        raise ConfigError("no trainer command: give it after '--', e.g. -- python train.py")
    cut = args.index("--")
    command = args[cut + 1 :]
    _check(bool(command) and bool(command[0].strip()), "no trainer command after '--'")
    return args[:cut], command


def parse_hparams(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"--hparams must be a JSON object, got {text!r} ({exc})") from None
    _check(isinstance(value, dict), f"--hparams must be a JSON object, got {type(value).__name__}: {text!r}")
    return dict(value)


def _seconds(name: str, value: float, *, allow_zero: bool) -> float:
    _check(
        math.isfinite(value) and (value > 0 or (allow_zero and value == 0)),
        f"{name} must be a {'non-negative' if allow_zero else 'positive'} number of seconds, got {value}",
    )
    return float(value)


def parse_config(argv: Sequence[str], environ: Mapping[str, str] = os.environ) -> LauncherConfig:
    """Parse and validate; raises :class:`ConfigError` naming the bad value and what was expected."""
    options, command = split_command(argv)
    args = _parser().parse_args(options)
    ranks = parse_ranks(environ)
    target = run_target(args, environ, "the launcher relays to MLflow")
    _check(args.device in DEVICES, f"--device must be one of {', '.join(DEVICES)}, got {args.device!r}")
    _check(
        args.early_stop in EARLY_STOP, f"--early-stop must be one of {', '.join(EARLY_STOP)}, got {args.early_stop!r}"
    )
    _check(args.patience >= 1, f"--patience must be at least 1, got {args.patience}")
    return LauncherConfig(
        command=tuple(command),
        dataset_uri=target.dataset_uri,
        training_id=args.training_id,
        hparams=parse_hparams(args.hparams),
        checkpoint_uri=target.checkpoint_uri,
        tracking_uri=target.tracking_uri,
        run_id=target.run_id,
        device=args.device,
        early_stop=args.early_stop,
        patience=args.patience,
        stall_timeout=_seconds("--stall-timeout", args.stall_timeout, allow_zero=True),
        stop_grace=_seconds("--stop-grace", args.stop_grace, allow_zero=True),
        telemetry_interval=_telemetry_interval(args.telemetry_interval, environ),
        rank=ranks.rank,
        world_size=ranks.world_size,
    )
