"""The dynamic batcher on a real event loop: when batches run, how big they get, and where inference runs."""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from workloads.server.batching import Batcher, Item


class Recorder:
    """Collects what the batcher delivers, and when."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.times: list[float] = []
        self.errors: list[BaseException] = []
        self.threads: list[str] = []

    def infer(self, x: np.ndarray) -> np.ndarray:
        self.threads.append(threading.current_thread().name)
        return x * 2

    def deliver(self, items: list[Item], out: np.ndarray | None, error: BaseException | None) -> None:
        if error is not None:
            self.errors.append(error)
            return
        assert out is not None
        start = 0
        for item in items:  # each item gets its own rows back
            np.testing.assert_array_equal(out[start : start + len(item.x)], item.x * 2)
            start += len(item.x)
        self.batches.append([int(item.x[0, 0]) for item in items])
        self.times.append(time.perf_counter())


def item(value: int, rows: int = 1) -> Item:
    request = SimpleNamespace(received=time.perf_counter())
    return Item(np.full((rows, 2), value, dtype=np.float32), None, request, False, False)


def batcher(recorder: Recorder, senders: int, **options: object) -> Batcher:
    settings = {"max_batch_size": 64, "max_wait_s": 0.05, "offload": False, **options}
    return Batcher(
        asyncio.get_running_loop(),
        recorder.infer,
        recorder.deliver,
        lambda: senders,
        observe=lambda rows, seconds: None,
        **settings,  # type: ignore[arg-type]
    )


async def settle(recorder: Recorder, batches: int, timeout: float = 2.0) -> None:
    deadline = time.perf_counter() + timeout
    while len(recorder.batches) + len(recorder.errors) < batches and time.perf_counter() < deadline:
        await asyncio.sleep(0.001)


def test_a_lone_request_does_not_pay_the_wait() -> None:
    async def scenario() -> float:
        recorder = Recorder()
        queue = batcher(recorder, senders=10, max_wait_s=1.0)
        submitted = time.perf_counter()
        queue.submit(item(1))
        await settle(recorder, 1)
        assert recorder.batches == [[1]]
        return recorder.times[0] - submitted

    assert asyncio.run(scenario()) < 0.1


def test_requests_close_together_wait_for_each_other_up_to_max_wait() -> None:
    async def scenario() -> tuple[Recorder, float]:
        recorder = Recorder()
        queue = batcher(recorder, senders=10, max_wait_s=0.05)
        queue.submit(item(0))
        await settle(recorder, 1)
        started = time.perf_counter()
        for value in (1, 2, 3):  # traffic is no longer idle: these may wait for others to join
            queue.submit(item(value))
            await asyncio.sleep(0.002)
        await settle(recorder, 2)
        return recorder, recorder.times[1] - started

    recorder, waited = asyncio.run(scenario())
    assert recorder.batches == [[0], [1, 2, 3]]
    assert 0.04 <= waited < 0.5


def test_when_every_sender_is_waiting_the_batch_runs_at_once() -> None:
    async def scenario() -> tuple[Recorder, float]:
        recorder = Recorder()
        queue = batcher(recorder, senders=3, max_wait_s=1.0)
        queue.submit(item(0))
        await settle(recorder, 1)
        started = time.perf_counter()
        for value in (1, 2, 3):
            queue.submit(item(value))
        await settle(recorder, 2)
        return recorder, recorder.times[1] - started

    recorder, waited = asyncio.run(scenario())
    assert recorder.batches == [[0], [1, 2, 3]]
    assert waited < 0.1


def test_the_last_missing_sender_runs_the_batch_within_submit() -> None:
    async def scenario() -> Recorder:
        recorder = Recorder()
        queue = batcher(recorder, senders=2, max_wait_s=1.0)
        queue.submit(item(0))
        await settle(recorder, 1)
        queue.submit(item(1))
        assert recorder.batches == [[0]], "one of two senders waiting: the batch waits for the loop turn"
        queue.submit(item(2))
        assert recorder.batches == [[0], [1, 2]], "no loop turn needed when nobody else can join"
        return recorder

    asyncio.run(scenario())


def test_batches_stop_at_max_batch_size_rows() -> None:
    async def scenario() -> Recorder:
        recorder = Recorder()
        queue = batcher(recorder, senders=100, max_batch_size=4, max_wait_s=0.02)
        queue.submit(item(0))
        await settle(recorder, 1)
        for value in range(1, 11):
            queue.submit(item(value))
        queue.submit(item(11, rows=3))
        await settle(recorder, 5)
        return recorder

    batches = asyncio.run(scenario()).batches
    assert batches == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9, 10], [11]]


def test_offloaded_inference_runs_in_a_worker_thread_and_failures_reach_every_request() -> None:
    async def scenario() -> Recorder:
        recorder = Recorder()
        queue = batcher(recorder, senders=2, offload=True)
        queue.submit(item(1))
        queue.submit(item(2))
        await settle(recorder, 1)

        def broken(x: np.ndarray) -> np.ndarray:
            raise RuntimeError("boom")

        queue._infer = broken
        queue.submit(item(3))
        await settle(recorder, 2)
        queue.close()
        return recorder

    recorder = asyncio.run(scenario())
    assert recorder.batches == [[1, 2]]
    assert recorder.threads and all(name.startswith("inference") for name in recorder.threads)
    assert [str(error) for error in recorder.errors] == ["boom"]


@pytest.mark.parametrize("offload", [False, True])
def test_the_batcher_is_idle_once_everything_is_answered(offload: bool) -> None:
    async def scenario() -> bool:
        recorder = Recorder()
        queue = batcher(recorder, senders=5, offload=offload)
        queue.submit(item(1))
        assert not queue.idle
        await settle(recorder, 1)
        queue.close()
        return queue.idle

    assert asyncio.run(scenario())


@pytest.mark.parametrize("offload", [False, True])
def test_a_batch_the_model_refuses_is_rerun_request_by_request(offload: bool) -> None:
    """A value the model refuses (say, an unknown category) fails its own request; the others are answered."""

    async def scenario() -> Recorder:
        recorder = Recorder()

        def refuses_sevens(x: np.ndarray) -> np.ndarray:
            if (x == 7).any():
                raise ValueError("unknown category 7")
            return x * 2

        recorder.infer = refuses_sevens  # type: ignore[method-assign]
        queue = batcher(recorder, senders=3, offload=offload)
        for value in (1, 7, 3):
            queue.submit(item(value))
        await settle(recorder, 3)
        queue.close()
        return recorder

    recorder = asyncio.run(scenario())
    assert recorder.batches == [[1], [3]]
    assert [str(error) for error in recorder.errors] == ["unknown category 7"]


def test_the_worker_thread_is_set_up_before_its_first_inference() -> None:
    """The server caps OpenMP/BLAS threads there: OpenMP's thread count is per thread, not per process."""

    async def scenario() -> tuple[Recorder, list[str]]:
        recorder = Recorder()
        setups: list[str] = []
        queue = batcher(
            recorder, senders=1, offload=True, thread_setup=lambda: setups.append(threading.current_thread().name)
        )
        queue.submit(item(1))
        await settle(recorder, 1)
        queue.submit(item(2))
        await settle(recorder, 2)
        queue.close()
        return recorder, setups

    recorder, setups = asyncio.run(scenario())
    assert recorder.batches == [[1], [2]]
    assert len(setups) == 1 and setups[0] == recorder.threads[0] and setups[0].startswith("inference")
