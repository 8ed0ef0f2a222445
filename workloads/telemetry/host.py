"""Host CPU and memory with psutil, and the process tree whose GPU memory counts as "ours".

Sampled next to the GPUs so a run without a GPU is still accounted (CPU %, memory, node time). Host CPU %
comes from our own cpu_times deltas rather than psutil.cpu_percent(), whose module-wide state other monitors
(MLflow's among them) would reset between our samples.

Listing a process tree reads every process on the host, so the tree (for CPU and RSS) is re-listed only every
few seconds; a GPU process NVML reports is attributed at once by walking its parent chain instead.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable

import psutil

from workloads.telemetry.readings import HostReading


def _busy_total(times: object) -> tuple[float, float]:
    fields = times._asdict()  # type: ignore[attr-defined]
    total = sum(fields.values()) - fields.get("guest", 0.0) - fields.get("guest_nice", 0.0)
    idle = fields.get("idle", 0.0) + fields.get("iowait", 0.0)
    return total - idle, total


class HostProbe:
    """Reads host and process-tree figures; the tree is re-listed at most every ``refresh_s`` seconds."""

    def __init__(
        self, root_pid: int | None = None, *, refresh_s: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._root_pid = root_pid if root_pid is not None else os.getpid()
        self._refresh_s = refresh_s
        self._clock = clock
        self._procs: dict[int, psutil.Process] = {}
        self._foreign: set[int] = set()
        self._listed_at = float("-inf")
        self._last_cpu: tuple[float, float] | None = None
        self._last_proc: tuple[float, float] | None = None
        self.error = ""

    def pids(self) -> frozenset[int]:
        """This process and all its descendants (NVML lists GPU processes by pid)."""
        now = self._clock()
        if now - self._listed_at >= self._refresh_s:
            self._listed_at = now
            try:
                root = self._procs.get(self._root_pid) or psutil.Process(self._root_pid)
                tree = [root, *root.children(recursive=True)]
            except psutil.Error as exc:
                self.error = f"process {self._root_pid} is not readable: {exc}"
                tree = []
            known = self._procs
            self._procs = {p.pid: known.get(p.pid, p) for p in tree}  # keep objects: psutil caches per object
            self._foreign.clear()
        return frozenset(self._procs)

    def owns(self, pids: Iterable[int]) -> frozenset[int]:
        """Which of these pids (e.g. NVML's GPU processes) belong to our tree, children started since included."""
        tree = self.pids()
        ours = set()
        for pid in pids:
            if pid in tree:
                ours.add(pid)
            elif pid not in self._foreign:
                if self._descends(pid):
                    ours.add(pid)
                else:
                    self._foreign.add(pid)
        return frozenset(ours)

    def _descends(self, pid: int) -> bool:
        """Walk the parent chain of a process not in the last listing; adopt it into the tree when ours."""
        chain: list[psutil.Process] = []
        current = pid
        for _ in range(64):
            if current in self._procs:
                for proc in chain:
                    self._procs[proc.pid] = proc
                return True
            if current <= 1:
                return False
            try:
                proc = psutil.Process(current)
                chain.append(proc)
                current = proc.ppid()
            except psutil.Error:
                return False
        return False

    def read(self) -> HostReading:
        self.pids()
        now = self._clock()
        cpu_pct = None
        busy, total = _busy_total(psutil.cpu_times())
        if self._last_cpu is not None and total > self._last_cpu[1]:
            # clamped: on a fully busy host float rounding of the tick sums gave 100.00000000364
            cpu_pct = min(100.0, max(0.0, 100.0 * (busy - self._last_cpu[0]) / (total - self._last_cpu[1])))
        self._last_cpu = (busy, total)
        cpu_s, rss = 0.0, 0
        for proc in list(self._procs.values()):
            try:
                with proc.oneshot():
                    t = proc.cpu_times()
                    cpu_s += t.user + t.system + t.children_user + t.children_system
                    rss += proc.memory_info().rss
            except psutil.Error:
                continue
        proc_pct = None
        if self._last_proc is not None and now > self._last_proc[1]:
            proc_pct = max(0.0, 100.0 * (cpu_s - self._last_proc[0]) / (now - self._last_proc[1]))
        self._last_proc = (cpu_s, now)
        return HostReading(
            cpu_pct=cpu_pct,
            mem_used=int(psutil.virtual_memory().used),
            proc_cpu_pct=proc_pct,
            proc_rss=rss if self._procs else None,
        )
