"""The host probe: this process tree's CPU and memory, and which GPU processes are ours."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import psutil
import pytest

from workloads.telemetry.host import HostProbe


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_a_child_started_after_the_tree_was_listed_is_still_ours(sleeper: subprocess.Popen[bytes]) -> None:
    probe = HostProbe(refresh_s=3600.0)  # listed once, now, and not again during the test
    probe.pids()
    late = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert late.pid not in probe.pids()
        assert probe.owns({late.pid, sleeper.pid, 1}) == {late.pid, sleeper.pid}  # pid 1 is not ours
        assert late.pid in probe.pids()  # adopted into the tree: its CPU and RSS now count
    finally:
        late.kill()
        late.wait()


def test_a_process_outside_the_tree_is_not_ours() -> None:
    parent = psutil.Process().ppid()  # our parent is not below us

    assert HostProbe().owns({parent}) == frozenset()


def test_host_readings_cover_cpu_and_memory_of_host_and_tree() -> None:
    probe = HostProbe()
    started, cpu_started = time.monotonic(), time.process_time()
    first = probe.read()
    while time.process_time() - cpu_started < 0.2:  # 0.2 s of CPU, however long a loaded machine takes to give it
        sum(i * i for i in range(1000))
    second = probe.read()
    share_pct = 100.0 * (time.process_time() - cpu_started) / (time.monotonic() - started)  # what we really got

    assert first.cpu_pct is None and first.proc_cpu_pct is None  # a rate needs two readings
    assert second.cpu_pct is not None and 0.0 <= second.cpu_pct <= 100.0
    assert second.proc_cpu_pct is not None and second.proc_cpu_pct > 0.25 * share_pct > 0
    assert second.proc_rss is not None and second.proc_rss > 10 * 2**20
    assert second.mem_used is not None and second.mem_used > 0


def test_an_unreadable_root_is_reported_not_raised() -> None:
    probe = HostProbe(root_pid=2**22 + 12345)  # above the kernel's pid limit: never a live process

    assert probe.pids() == frozenset()
    assert probe.read().proc_rss is None
    assert probe.error.startswith(f"process {2**22 + 12345} is not readable")
