"""Random streams in checkpoints: what every PyTorch trainer saves and restores so a resumed run draws what an
uninterrupted one would have drawn (dropout, shuffles of its own); TorchRun and the built-in trainer share it.

A checkpoint's ``rng`` holds the writer's streams (rank 0's under torchrun) and, distributed, ``ranks``: every
rank's, in rank order. A run of the same world size takes its own rank's; a single process takes the top-level
ones; another world size reseeds each rank (its shards differ anyway).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from workloads.sdk.checkpoint import Checkpoint
from workloads.sdk.distributed import Comm


def seed_everything(seed: int) -> None:
    """Python's, numpy's and torch's generators (every CUDA device's too) from one seed."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's random streams (torch, Python, numpy; CUDA on a GPU), in types a ``weights_only``
    checkpoint loads."""
    version, key, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    rng: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": [version, list(key), gauss],
        "numpy": [str(name), torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), cached],
    }
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return rng


def set_rng_state(rng: Mapping[str, Any], device: torch.device) -> None:
    """Put back what :func:`rng_state` took (a checkpoint that lacks a stream leaves it as it is)."""
    torch.set_rng_state(rng["torch"])
    if "python" in rng:
        version, key, gauss = rng["python"]
        random.setstate((int(version), tuple(int(k) for k in key), gauss))
    if "numpy" in rng:
        name, keys, pos, has_gauss, cached = rng["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    if device.type == "cuda" and "cuda" in rng:
        if isinstance(rng["cuda"], list):  # written by earlier built-in trainers: every device's
            torch.cuda.set_rng_state_all(rng["cuda"])
        else:
            torch.cuda.set_rng_state(rng["cuda"], device)


def group_rng(comm: Comm, device: torch.device) -> dict[str, Any]:
    """The ``rng`` of a checkpoint: this process's streams; distributed (a collective), rank 0's plus ``ranks``."""
    own = rng_state(device)
    if not comm.distributed:
        return own
    everyone = comm.gather(own)
    return {**everyone[0], "ranks": everyone}


def restore_rng(checkpoint: Checkpoint, comm: Comm, device: torch.device, seed: int | None) -> None:
    """This rank's streams from ``checkpoint``: its own entry when the world size is the same, the top-level ones
    in a single process, else (another world size) fresh ones from ``seed + rank + 1000 x epoch`` (none: kept)."""
    ranks = checkpoint.rng.get("ranks")
    if isinstance(ranks, list) and len(ranks) == comm.world_size:
        set_rng_state(ranks[comm.rank], device)
    elif not comm.distributed:
        set_rng_state(checkpoint.rng, device)
    elif seed is not None:
        seed_everything(seed + comm.rank + 1000 * checkpoint.epoch)
