"""Where this process sits in a torchrun group, read from torchrun's variables (no torch import: the launcher and
the built-in trainer's argument checks read it before torch loads)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from workloads.sdk.errors import ConfigError

DIST_TIMEOUT_ENV = "GPUFLOW_DIST_TIMEOUT_SECONDS"
DEFAULT_DIST_TIMEOUT = 600.0  # seconds a rank waits for the others (rendezvous, collectives, rank 0's logging)


@dataclass(frozen=True)
class Ranks:
    """Where this process sits in a torchrun group; the defaults are a single process (no torchrun)."""

    rank: int = 0  # global rank; rank 0 alone talks to MLflow and writes checkpoints
    local_rank: int = 0  # rank on this node = index of its CUDA device
    world_size: int = 1
    timeout_s: float = DEFAULT_DIST_TIMEOUT

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def parse_ranks(environ: Mapping[str, str]) -> Ranks:
    """torchrun's RANK, LOCAL_RANK, WORLD_SIZE (+ MASTER_ADDR/PORT) and ``GPUFLOW_DIST_TIMEOUT_SECONDS``.

    No WORLD_SIZE, or WORLD_SIZE 1, is a single process: the rest is not read, so a lone trainer started by
    torchrun computes exactly what a plain one does.
    """
    world_text = environ.get("WORLD_SIZE", "").strip()
    if not world_text or world_text == "1":
        return Ranks()
    names = ("WORLD_SIZE", "RANK", "LOCAL_RANK")
    values: dict[str, int] = {}
    for name in names:
        text = environ.get(name, "").strip()
        _check(
            text.isdigit(),
            f"{name} must be a non-negative integer under torchrun (WORLD_SIZE={world_text!r}), got {text!r}",
        )
        values[name] = int(text)
    world, rank = values["WORLD_SIZE"], values["RANK"]
    _check(world >= 1, "WORLD_SIZE must be at least 1, got 0")
    _check(rank < world, f"RANK must be below WORLD_SIZE={world}, got {rank}")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        _check(bool(environ.get(name, "").strip()), f"{name} is not set: a distributed trainer needs torchrun's env")
    return Ranks(rank=rank, local_rank=values["LOCAL_RANK"], world_size=world, timeout_s=_dist_timeout(environ))


def _dist_timeout(environ: Mapping[str, str]) -> float:
    text = environ.get(DIST_TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_DIST_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{DIST_TIMEOUT_ENV} must be a number of seconds, got {text!r}") from None
    _check(math.isfinite(value) and value > 0, f"{DIST_TIMEOUT_ENV} must be a positive number of seconds, got {text!r}")
    return value
