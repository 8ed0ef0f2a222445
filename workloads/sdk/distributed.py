"""Training under torchrun: the device, the process group and the few collectives a trainer needs, in one place.

torchrun starts one trainer per device on each node and sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and
MASTER_PORT (:func:`workloads.sdk.ranks.parse_ranks` reads them). :class:`Comm` is a trainer's only door
to ``torch.distributed``; for a single process every method is the identity and nothing is initialised, so a
run without torchrun computes exactly what it did before distributed training existed.

No rank may wait forever for another:

- a phase wrapped in :meth:`Comm.together` ends with every rank agreeing on an exit code, so when one rank
  fails there (bad checkpoint, MLflow down on rank 0, missing dataset), the others end with the same code;
- a rank that dies outright breaks the others' next collective (gloo at once; NCCL through its watchdog);
- and joining the group, like every collective, gives up after ``GPUFLOW_DIST_TIMEOUT_SECONDS``.

With a ``wait_s`` (the SDK's ``TorchRun`` gives its ``rank_timeout_seconds``), collectives after joining give up
after ``wait_s`` instead, and a :class:`~workloads.sdk.lag.LagWatch` names the rank that fell behind: at
:meth:`Comm.meet` (the SDK's sync points) and in :meth:`Comm.lost` (any other collective that timed out).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from workloads.sdk.contract import EXIT_FAILED, EXIT_INTERRUPTED
from workloads.sdk.errors import GroupError, TrainerError
from workloads.sdk.lag import LagWatch
from workloads.sdk.ranks import DIST_TIMEOUT_ENV, Ranks


def exit_code_of(exc: BaseException) -> int:
    """The exit code the program will end with for ``exc`` (see ``cli.main``)."""
    if isinstance(exc, TrainerError):
        return exc.exit_code
    if isinstance(exc, SystemExit) and isinstance(exc.code, int):  # an SDK trainer's ctx.fail, or sys.exit(n)
        return exc.code or EXIT_FAILED
    return EXIT_INTERRUPTED if isinstance(exc, KeyboardInterrupt) else EXIT_FAILED


def shard(order: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This rank's share of a permutation, as ``DistributedSampler`` cuts it: every rank gets the same count.

    The permutation is padded by repeating it from the start up to a multiple of ``world_size``, then rank r
    takes every ``world_size``-th index from position r. Equal counts mean equal numbers of batches, which DDP
    needs (a rank with one batch more would wait for a gradient all-reduce nobody joins).
    """
    n = int(order.shape[0])
    total = -(-n // world_size) * world_size
    if total > n:
        order = order.repeat(-(-total // n))[:total]
    return order[rank:total:world_size]


def span(rows: int, rank: int, world_size: int) -> tuple[int, int]:
    """This rank's contiguous slice ``[first, end)`` of ``rows`` rows: the slices cover every row once (evaluation,
    whose sums over ranks must count each row once)."""
    return rank * rows // world_size, (rank + 1) * rows // world_size


def pick_device(requested: str, local_rank: int | None = None) -> torch.device:
    """``auto`` means CUDA when present; asking for ``cuda`` without one raises ``ValueError``.

    Under torchrun (``local_rank`` given) a CUDA device is ``cuda:<local rank>``, which must exist.
    """
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was requested but no CUDA device is available")
    kind = ("cuda" if torch.cuda.is_available() else "cpu") if requested == "auto" else requested
    if local_rank is None or kind != "cuda":
        return torch.device(kind)
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise ValueError(
            f"LOCAL_RANK {local_rank} has no CUDA device: {count} visible; start at most {count} processes per "
            "node (--nproc-per-node)"
        )
    return torch.device("cuda", local_rank)


class Comm:
    """The process group of one trainer run; use as a context manager (it joins and leaves the group)."""

    def __init__(self, ranks: Ranks, device: torch.device, wait_s: float | None = None) -> None:
        """``wait_s``: how long a rank waits for the others once joined (default: the joining timeout), with
        the ranks behind named when it passes (see :mod:`workloads.sdk.lag`)."""
        self.ranks = ranks
        self.device = device
        self.wait_s = wait_s
        self.watch: LagWatch | None = None
        self._joined = False

    @property
    def distributed(self) -> bool:
        return self.ranks.distributed

    @property
    def is_main(self) -> bool:
        return self.ranks.is_main

    @property
    def rank(self) -> int:
        return self.ranks.rank

    @property
    def world_size(self) -> int:
        return self.ranks.world_size

    @property
    def backend(self) -> str:
        """NCCL between GPUs, gloo between CPUs."""
        return "nccl" if self.device.type == "cuda" else "gloo"

    def __enter__(self) -> Comm:
        if not self.distributed:
            return self
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # NCCL and the object collectives use the current device
        try:
            dist.init_process_group(
                self.backend,
                timeout=timedelta(seconds=self.ranks.timeout_s),
                device_id=self.device if self.device.type == "cuda" else None,
            )
        except Exception as exc:
            raise GroupError(
                f"could not join the process group ({self.backend}, world size "
                f"{self.world_size}) within {self.ranks.timeout_s:g}s: {type(exc).__name__}: {exc}"
            ) from exc
        self._joined = True
        if self.wait_s is not None:
            self.watch = _watch(self.ranks, self.wait_s)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.watch is not None:
            self.watch.close()
        if self._joined:
            self._joined = False
            with suppress(Exception):  # leaving a broken group must not hide why it broke
                dist.destroy_process_group()

    @property
    def timeout_s(self) -> float:
        """How long a collective waits for the other ranks."""
        return self.wait_s if self.wait_s is not None else self.ranks.timeout_s

    # ------------------------------------------------------------------ lag (no-ops without a watch)

    def meet(self, phase: str) -> None:
        """Every rank reaches ``phase`` (bounded by :attr:`timeout_s`, the ranks behind named), before its
        collectives: a rank that does not come is named here rather than waited for in silence."""
        if self.watch is not None:
            self.watch.meet(phase)

    def mark(self, where: str) -> None:
        """This rank drew one more batch (``where``, in words): what names it if it falls behind."""
        if self.watch is not None:
            self.watch.batch(where)

    # ------------------------------------------------------------------ collectives (identity on one process)

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum over all ranks, in float64; every rank gets the same numbers."""
        if not self.distributed:
            return [float(v) for v in values]
        tensor = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return [float(v) for v in tensor.tolist()]

    def broadcast(self, values: Sequence[int]) -> list[int]:
        """Rank 0's integers, on every rank: its decisions (resume epoch, stop) are everyone's."""
        if not self.distributed:
            return [int(v) for v in values]
        tensor = torch.tensor(list(values), dtype=torch.int64, device=self.device)
        dist.broadcast(tensor, src=0)
        return [int(v) for v in tensor.tolist()]

    def share(self, value: Any) -> Any:
        """Rank 0's ``value`` (picklable: a checkpoint it read, a decision), on every rank."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (picklable), in rank order, on every rank."""
        if not self.distributed:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def agree(self, code: int) -> int:
        """The highest exit code any rank brings (0: all fine), on every rank."""
        if not self.distributed:
            return code
        tensor = torch.tensor([code], dtype=torch.int64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return int(tensor.item())

    @contextmanager
    def together(self, phase: str) -> Iterator[None]:
        """Run a phase whose failure on any rank ends every rank, each with the failing rank's exit code.

        The body must not itself call collectives on some ranks only. The rank that failed re-raises its
        own error (its message is the useful one); the others raise :class:`GroupError` naming the phase.
        """
        if not self.distributed:
            yield
            return
        try:
            yield
        except BaseException as exc:
            with suppress(Exception):  # the group is gone too: the error at hand is still the one to report
                self.meet(f"the end of {phase}")
                self.agree(exit_code_of(exc))
            raise
        self.meet(f"the end of {phase}")  # rank 0's part may be long: a rank that does not come back is named
        code = self.agree(0)
        if code:
            raise GroupError(f"another rank failed while {phase} (exit {code}); see its log", code)

    def lost(self, exc: Exception) -> GroupError:
        """The error for a collective that broke: a peer died, or the timeout passed (the ranks behind named
        when a watch runs)."""
        if self.watch is not None:
            gone = self.watch.gone("lost contact with it")
            if gone is not None:
                return gone
            text = " ".join(str(exc).split())
            how = (
                f"rank {self.rank} gave up on a collective after {self.timeout_s:g} s (rank_timeout_seconds)"
                if "timed out" in text.lower() or "timeout" in text.lower()
                else f"a collective broke ({type(exc).__name__}: {text[:160]})"
            )
            return GroupError(f"{self.watch.behind()}; {how}")
        return GroupError(
            f"lost contact with the other ranks ({type(exc).__name__}: {exc}); "
            f"a peer failed or did not answer within {self.ranks.timeout_s:g}s ({DIST_TIMEOUT_ENV})"
        )


def is_group_failure(exc: BaseException) -> bool:
    """A collective that broke (a peer died or timed out), as opposed to a bug in the training code."""
    if not isinstance(exc, RuntimeError):
        return False
    text = str(exc)
    return isinstance(exc, dist.DistError) or any(word in text for word in ("gloo", "NCCL", "ProcessGroup"))


def _watch(ranks: Ranks, wait_s: float) -> LagWatch | None:
    """A watch over the group's own store, its collectives bounded by ``wait_s``; None where this torch does
    not expose them (then the joining timeout bounds the collectives, unnamed)."""
    try:
        from torch.distributed.distributed_c10d import _get_default_store, _set_pg_timeout

        store = _get_default_store()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _set_pg_timeout(timedelta(seconds=wait_s))
        return LagWatch(store, ranks.rank, ranks.world_size, wait_s).start()
    except Exception:
        return None
