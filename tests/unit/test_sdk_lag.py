"""Naming the rank behind: marks published to a real TCPStore (torch's, in this process), ranks played by threads."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
import torch.distributed as dist

from workloads.sdk.errors import GroupError
from workloads.sdk.lag import LagWatch, Mark, describe


@pytest.fixture
def store() -> Iterator[dist.TCPStore]:
    server = dist.TCPStore("127.0.0.1", 0, 1, True, timeout=timedelta(seconds=30))
    yield server


def client(server: dist.TCPStore) -> dist.TCPStore:
    """Another rank's connection to the same store."""
    return dist.TCPStore("127.0.0.1", server.port, 1, False, timeout=timedelta(seconds=30))


def test_the_lowest_mark_is_named_with_where_and_how_long_ago() -> None:
    marks = {
        0: Mark(4, 0, "waiting at 'reporting step 4'", 100.0),
        1: Mark(3, 7, "at batch 7 of 'train' (epoch 4) after step 3", 88.0),
        2: Mark(4, 0, "waiting at 'reporting step 4'", 99.0),
    }
    assert describe(marks, 0, 3, now=100.0) == (
        "rank 1 is behind: last seen at batch 7 of 'train' (epoch 4) after step 3, 12.0 s ago"
    )
    assert describe({0: marks[0]}, 0, 3, now=100.0) == (
        "ranks 1, 2 are behind: rank 1 never reached the group's store; rank 2 never reached the group's store"
    )
    tie = {r: Mark(3, 2, "at batch 2 of 'train' after step 3", 90.0) for r in range(2)}
    tied = describe(tie, 1, 2, now=100.0)
    assert tied.startswith("no rank is behind the others' marks: all were last seen at batch 2")


def test_a_meeting_that_everyone_reaches_passes(store: dist.TCPStore) -> None:
    watches = [LagWatch(store if r == 0 else client(store), r, 3, timeout_s=10).start() for r in range(3)]
    errors: list[BaseException] = []

    def meet(watch: LagWatch) -> None:
        try:
            for step in range(1, 4):
                watch.meet(f"reporting step {step}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=meet, args=(w,)) for w in watches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors
    assert [w.marks()[w.rank].where for w in watches] == ["after 'reporting step 3'"] * 3
    for watch in watches:
        watch.close()


def test_a_rank_that_does_not_come_is_named_after_the_timeout(store: dist.TCPStore) -> None:
    behind = LagWatch(client(store), 1, 2, timeout_s=1).start()
    waiting = LagWatch(store, 0, 2, timeout_s=1).start()
    first = threading.Thread(target=behind.meet, args=("resuming",))
    first.start()
    waiting.meet("resuming")
    first.join(timeout=10)
    behind.batch("at batch 3 of 'train' (epoch 1) after step 0")
    behind._push()  # what its thread would publish within a second
    started = time.monotonic()
    with pytest.raises(GroupError) as failed:
        waiting.meet("reporting step 1")
    assert 1 <= time.monotonic() - started < 5
    assert failed.value.exit_code == 1
    message = str(failed.value)
    assert message.startswith("rank 1 is behind: last seen at batch 3 of 'train' (epoch 1) after step 0, ")
    assert message.endswith("; rank 0 waited 1 s at 'reporting step 1' (rank_timeout_seconds)")
    behind.close()
    waiting.close()


def test_a_rank_that_leaves_with_an_error_ends_the_wait_with_its_code(store: dist.TCPStore) -> None:
    waiting = LagWatch(store, 0, 2, timeout_s=60).start()
    failing = LagWatch(client(store), 1, 2, timeout_s=60).start()
    threading.Timer(0.3, failing.leave, args=(3, "DatasetError: split 'train' is missing")).start()
    started = time.monotonic()
    with pytest.raises(GroupError) as failed:
        waiting.meet("reporting step 1")
    assert time.monotonic() - started < 10  # not the 60 s timeout
    assert failed.value.exit_code == 3
    assert str(failed.value) == (
        "rank 1 failed (exit 3: DatasetError: split 'train' is missing), last seen joining the group; "
        "rank 0 stopped waiting at 'reporting step 1'"
    )
    waiting.close()
    failing.close()


def test_a_rank_whose_heartbeat_stops_is_lost_long_before_the_timeout(store: dist.TCPStore) -> None:
    waiting = LagWatch(store, 0, 2, timeout_s=60, silent_after_s=2).start()
    dying = LagWatch(client(store), 1, 2, timeout_s=60, silent_after_s=2).start()
    dying.batch("at batch 5 of 'train' (epoch 2) after step 1")
    dying._push()
    time.sleep(1.5)  # a beat or two heard, then its process is gone (killed: no leave(), its thread stops)
    dying.close()
    started = time.monotonic()
    with pytest.raises(GroupError) as failed:
        waiting.meet("reporting step 2")
    assert 1.5 <= time.monotonic() - started < 20  # the 2 s of silence, not the 60 s timeout
    assert failed.value.exit_code == 1  # retryable: a replaced pod resumes
    assert str(failed.value) == (
        "lost contact with rank 1: no heartbeat for 2 s, its process or node is gone (rank 1 last seen at batch 5 "
        "of 'train' (epoch 2) after step 1); rank 0 stopped waiting at 'reporting step 2'"
    )
    waiting.close()


def test_a_rank_that_is_slow_but_alive_is_behind_not_lost(store: dist.TCPStore) -> None:
    # silent_after_s three beats long (a beat a second), so a beat late on a busy machine is not a death
    waiting = LagWatch(store, 0, 2, timeout_s=6, silent_after_s=3).start()
    slow = LagWatch(client(store), 1, 2, timeout_s=6, silent_after_s=3).start()  # its thread beats on
    with pytest.raises(GroupError) as failed:
        waiting.meet("reporting step 1")
    assert str(failed.value).startswith("rank 1 is behind: last seen joining the group, ")
    assert str(failed.value).endswith("rank 0 waited 6 s at 'reporting step 1' (rank_timeout_seconds)")
    slow.close()
    waiting.close()
