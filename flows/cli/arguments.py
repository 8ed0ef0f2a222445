"""What the ``gpuflow`` commands share: the exit codes, and the options of ``gpuflow run`` and ``gpuflow manifests
train`` (one definition, one check)."""

from __future__ import annotations

import argparse
from typing import Any

# 0 success; 1 a stage (or the command) failed; 2 bad usage; 3 the quality gate rejected the model;
# 4 the canary was rolled back.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_GATE, EXIT_ROLLED_BACK = 0, 1, 2, 3, 4


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {text}")
    return value


def add_trainer_options(parser: Any) -> None:
    """The trainer's hyperparameters and stopping rule, with the train stage's defaults (a parser or a group)."""
    parser.add_argument("--epochs", type=positive_int, default=20)
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--learning-rate", type=positive_float, default=1e-3)
    parser.add_argument("--hidden-size", type=positive_int, default=128)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument(
        "--early-stop",
        choices=["off", "plateau", "divergence", "both"],
        default="off",
        help="stop training early on a validation plateau, a diverging loss, or both",
    )
    parser.add_argument(
        "--patience", type=positive_int, default=5, help="epochs without improvement that make a plateau"
    )
