"""Naming the rank that falls behind, instead of every other rank hanging silently in a collective.

Each rank keeps a *mark* of where it is (a sync point it reached, the batches it has drawn since) and publishes it
to the process group's own key-value store (the TCPStore ``init_process_group`` set up; under torchrun the agent's):
a background thread writes the latest mark at most once a second, so marking a batch costs a tuple and a clock
read. The SDK's sync points (``report``, ``resume``, ``log_model``, ``all_sum``) meet in that store before any
collective: :meth:`LagWatch.meet` waits at most ``timeout_s`` for every rank, and on timeout reads everyone's mark
and names the ranks behind: ``rank 1 is behind: last seen reading batch 3 of 'train' (epoch 4) after step 3,
12.0 s ago; rank 0 waited 10 s at 'reporting step 4'``. Every waiting rank can say it, on any backend (gloo's
``monitored_barrier`` names the missing ranks on rank 0 only, without where they are, and NCCL has none).
A wait inside a collective the SDK does not see (DDP's gradient all-reduce) ends with the group's timeout; then
:meth:`LagWatch.behind` gives the same account from the marks.

A rank behind is not a rank gone: the same thread adds to the rank's *heartbeat* counter every second, whatever
the rank's main thread is doing (a long step, a slow read, a sleep). A rank that waits at a sync point and sees a
peer's heartbeat stand still for :data:`SILENT_AFTER_S` knows the peer's process (or its node) is gone, and ends at
once with ``lost contact with rank N`` (exit 1) instead of waiting out ``timeout_s``: a pod lost mid-training ends
the others in seconds, as a dead peer does inside a gloo collective.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Any

from workloads.sdk.errors import GroupError

PUSH_EVERY_S = 1.0  # how stale a published mark may be; the timeouts that read it are many times longer
SILENT_AFTER_S = 10.0  # a heartbeat that stood still this long (ten beats missed): that rank is gone
PREFIX = "gpuflow/lag/"
GONE = f"{PREFIX}gone"


@dataclass(frozen=True)
class Mark:
    """Where one rank was: ``seq`` sync points reached, ``batches`` drawn since, in words, and when (epoch s)."""

    seq: int
    batches: int
    where: str
    at: float

    @property
    def position(self) -> tuple[int, int]:
        return self.seq, self.batches

    def to_json(self) -> str:
        return json.dumps({"seq": self.seq, "batches": self.batches, "where": self.where, "at": self.at})

    @classmethod
    def from_json(cls, text: bytes | str) -> Mark:
        data = json.loads(text)
        return cls(int(data["seq"]), int(data["batches"]), str(data["where"]), float(data["at"]))


def _ranks(ranks: list[int]) -> str:
    shown = ", ".join(str(r) for r in ranks[:8]) + (f" and {len(ranks) - 8} more" if len(ranks) > 8 else "")
    return f"rank {shown}" if len(ranks) == 1 else f"ranks {shown}"


def describe(marks: dict[int, Mark], me: int, world_size: int, now: float) -> str:
    """Who is behind, from every rank's mark (a rank without one never published any: it is the one behind)."""
    missing = [r for r in range(world_size) if r not in marks]
    if missing:
        behind = missing
    elif marks:
        lowest = min(m.position for m in marks.values())
        behind = sorted(r for r, m in marks.items() if m.position == lowest)
        if len(behind) == len(marks):
            where = (marks.get(me) or marks[behind[0]]).where
            return f"no rank is behind the others' marks: all were last seen {where}; one of them is stuck there"
    described = []
    for r in behind[:4]:
        m = marks.get(r)
        seen = f"last seen {m.where}, {max(0.0, now - m.at):.1f} s ago" if m else "never reached the group's store"
        described.append(f"{_ranks([r])} {seen}" if len(behind) > 1 else seen)
    more = f"; {len(behind) - 4} more" if len(behind) > 4 else ""
    return f"{_ranks(behind)} {'is' if len(behind) == 1 else 'are'} behind: {'; '.join(described)}{more}"


class LagWatch:
    """This rank's mark, published to ``store``; the bounded meeting of all ranks at the SDK's sync points."""

    def __init__(
        self, store: Any, rank: int, world_size: int, timeout_s: float, silent_after_s: float = SILENT_AFTER_S
    ) -> None:
        self.store = store
        self.rank, self.world_size, self.timeout_s = rank, world_size, timeout_s
        self.silent_after_s = silent_after_s
        self._beats: dict[int, tuple[int, float]] = {}  # peer -> (last heartbeat seen, monotonic time it changed)
        self._lock = threading.Lock()
        self._mark = Mark(0, 0, "joining the group", time.time())
        self._pushed: Mark | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._pusher, name="gpuflow-lag-watch", daemon=True)

    def start(self) -> LagWatch:
        self._push()
        self._beat()
        self._thread.start()
        return self

    def close(self) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2 * PUSH_EVERY_S)

    # ------------------------------------------------------------------ marks

    def batch(self, where: str) -> None:
        """One more batch drawn, ``where`` in words (cheap: the thread publishes it)."""
        m = self._mark
        self._mark = Mark(m.seq, m.batches + 1, where, time.time())

    def _push(self) -> None:
        with self._lock:
            mark = self._mark
            if mark is not self._pushed:
                self.store.set(f"{PREFIX}mark/{self.rank}", mark.to_json())
                self._pushed = mark

    def _beat(self) -> None:
        self.store.add(f"{PREFIX}beat/{self.rank}", 1)

    def _pusher(self) -> None:
        while not self._done.wait(PUSH_EVERY_S):
            try:
                self._push()
                self._beat()
            except Exception:  # the store went away with the group: nothing left to tell
                return

    def silent(self, now: float) -> list[int]:
        """The peers whose heartbeat has stood still for ``silent_after_s`` (``now``: ``time.monotonic()``). A peer
        never heard from is not among them: it may still be starting (the rank timeout covers it)."""
        found = []
        for r in range(self.world_size):
            if r == self.rank:
                continue
            beat = int(self.store.add(f"{PREFIX}beat/{r}", 0))  # reads the counter (0 when it has none yet)
            if not beat:
                continue
            seen = self._beats.get(r)
            if seen is None or seen[0] != beat:
                self._beats[r] = (beat, now)
            elif now - seen[1] >= self.silent_after_s:
                found.append(r)
        return found

    def marks(self) -> dict[int, Mark]:
        """Every rank's last published mark (this rank's own, current one included)."""
        found: dict[int, Mark] = {}
        for r in range(self.world_size):
            key = f"{PREFIX}mark/{r}"
            try:
                if r == self.rank:
                    found[r] = self._mark
                elif self.store.check([key]):
                    found[r] = Mark.from_json(self.store.get(key))
            except Exception:
                continue
        return found

    def behind(self) -> str:
        return describe(self.marks(), self.rank, self.world_size, time.time())

    # ------------------------------------------------------------------ meeting

    def leave(self, exit_code: int, why: str) -> None:
        """This rank is ending with ``exit_code`` outside a sync point: the ranks waiting at one stop waiting and
        end with its code (the first rank to leave is the one they name)."""
        note = json.dumps({"rank": self.rank, "code": exit_code, "why": why, "where": self._mark.where})
        try:
            if not self.store.check([GONE]):
                self.store.set(GONE, note)
        except Exception:
            return

    def gone(self, doing: str) -> GroupError | None:
        """The error that ends this rank because another one left first (:meth:`leave`), with its exit code."""
        try:
            if not self.store.check([GONE]):
                return None
            note = json.loads(self.store.get(GONE))
        except Exception:
            return None
        if note["rank"] == self.rank:
            return None
        return GroupError(
            f"rank {note['rank']} failed (exit {note['code']}: {note['why']}), last seen {note['where']}; "
            f"{_ranks([self.rank])} {doing}",
            int(note["code"]) or 1,
        )

    def meet(self, phase: str) -> None:
        """Wait until every rank has reached this sync point (the n-th on every rank), at most ``timeout_s``;
        then :class:`GroupError` (exit 1, a retry may pass) naming the ranks behind. A rank that left with an
        error (:meth:`leave`) ends the wait with its exit code."""
        seq = self._mark.seq + 1
        self._mark = Mark(seq, 0, f"waiting at {phase!r}", time.time())
        arrived, done = f"{PREFIX}arrived/{seq}", f"{PREFIX}done/{seq}"
        try:
            self._push()
            if self.store.add(arrived, 1) >= self.world_size:
                self.store.set(done, "1")
            else:
                self._wait(done, phase)
        except GroupError:
            raise
        except Exception as exc:  # the store itself is gone: its host (torchrun's agent, or rank 0) went away
            raise GroupError(f"lost contact with the other ranks at {phase!r}: {type(exc).__name__}: {exc}") from exc
        self._mark = Mark(seq, 0, f"after {phase!r}", time.time())
        if self.rank == 0 and seq > 1:  # every rank is past the meeting before this one: its keys are spent
            for key in (f"{PREFIX}arrived/{seq - 1}", f"{PREFIX}done/{seq - 1}"):
                try:
                    self.store.delete_key(key)
                except Exception:
                    break

    def _wait(self, done: str, phase: str) -> None:
        """Poll (2 ms, doubling to 250 ms: no timed-out waits, which torch would log) for ``done``; the peers'
        heartbeats once a second."""
        deadline = time.monotonic() + self.timeout_s
        pause = 0.002
        listened = 0.0
        while not self.store.check([done]):
            gone = self.gone(f"stopped waiting at {phase!r}")
            if gone is not None:
                raise gone
            now = time.monotonic()
            if now - listened >= PUSH_EVERY_S:
                listened = now
                silent = self.silent(now)
                if silent:
                    raise GroupError(self._lost(silent, phase))
            if now >= deadline:
                raise GroupError(
                    f"{self.behind()}; {_ranks([self.rank])} waited {self.timeout_s:g} s at {phase!r} "
                    "(rank_timeout_seconds)"
                )
            time.sleep(pause)
            pause = min(2 * pause, 0.25)

    def _lost(self, silent: list[int], phase: str) -> str:
        marks = self.marks()
        seen = "; ".join(
            f"{_ranks([r])} last seen {marks[r].where}" if r in marks else f"{_ranks([r])} never seen"
            for r in silent[:4]
        )
        return (
            f"lost contact with {_ranks(silent)}: no heartbeat for {self.silent_after_s:g} s, its process or node is "
            f"gone ({seen}); {_ranks([self.rank])} stopped waiting at {phase!r}"
        )
