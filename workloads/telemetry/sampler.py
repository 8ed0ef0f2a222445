"""GpuSampler: NVML and host telemetry on a background thread, attributed to named segments.

Usage::

    with GpuSampler(interval=1.0, label="load") as sampler:
        load()
        sampler.mark("epoch 1")
        train_one_epoch()
    sampler.summary()            # whole run
    sampler.summary("epoch 1")   # one segment
    sampler.series_bytes()       # raw series, CSV.gz

A sample is also taken at start, at each ``mark`` and at stop, so segment boundaries are exact whatever the
interval. The sampler never raises into the caller for GPU trouble: no library, no device, a query the device
does not support, a device lost mid-run all end up in ``summary().missing`` while host figures go on.
No Prefect or MLflow import here: workloads run it in pods.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Mapping

from workloads.telemetry.accumulator import Accumulator
from workloads.telemetry.host import HostProbe
from workloads.telemetry.nvml import NvmlReader
from workloads.telemetry.readings import GpuUnit, HostReading, Sample
from workloads.telemetry.series import encode_series
from workloads.telemetry.summary import TelemetrySummary

MIN_INTERVAL_S = 0.05


class GpuSampler:
    """Samples every visible GPU (and the host) every ``interval`` seconds between start and stop."""

    def __init__(
        self,
        interval: float = 1.0,
        *,
        label: str = "run",
        pid: int | None = None,
        environ: Mapping[str, str] | None = None,
        host_interval: float = 1.0,
        max_series_samples: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``pid``: root of the process tree whose GPU memory counts as ours (default: this process).

        ``host_interval``: host CPU and memory are read at most this often (and at start, marks and stop):
        reading /proc costs more than NVML, and host figures need no 10 Hz. Between reads they are empty.

        ``environ``: where CUDA_VISIBLE_DEVICES / NVIDIA_VISIBLE_DEVICES are read (default: os.environ).
        ``max_series_samples``: past this the kept raw series is thinned by half (summaries are unaffected).
        """
        if not (isinstance(interval, int | float) and math.isfinite(interval) and interval >= MIN_INTERVAL_S):
            raise ValueError(f"interval must be a number of seconds >= {MIN_INTERVAL_S}, got {interval!r}")
        self.interval = float(interval)
        self.host_interval = max(float(host_interval), self.interval)
        self._host_at = float("-inf")
        self._label = label
        self._clock = clock
        self._host = HostProbe(pid, clock=clock)
        self._nvml = NvmlReader(os.environ if environ is None else environ, self._host.owns)
        self._max_series = max(2, max_series_samples)
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._acc = Accumulator((), (), self.interval)
        self._series: list[Sample] = []
        self._stride = 1
        self._taken = 0
        self._t0 = 0.0
        self._started_at = 0.0
        self._cpu_s = 0.0
        self._errors: dict[str, None] = {}
        self._state = "new"

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> GpuSampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> GpuSampler:
        """Open NVML, take the first sample and start the thread; a second start is a no-op."""
        with self._lock:
            if self._state != "new":
                return self
            self._state = "running"
            self._guard(self._nvml.open)
            self._acc = Accumulator(self._nvml.units, self._nvml.domains, self.interval)
            self._t0 = self._clock()  # t=0 is the first sample, so durations add up to the run's
            self._started_at = time.time()
            self._take()
        self._thread = threading.Thread(target=self._run, name="gpuflow-telemetry", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Take the last sample, stop the thread and close NVML; safe to call twice."""
        if self._state != "running":
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 10.0)
        with self._lock:
            self._take()
            self._state = "stopped"
            self._guard(self._nvml.close)

    @property
    def running(self) -> bool:
        return self._state == "running"

    # ------------------------------------------------------------------ segments and results

    def mark(self, label: str) -> None:
        """Attribute time from now on to ``label`` (a stage, "epoch 3"); the time before stays where it was."""
        with self._lock:
            if label == self._label:
                return
            if self._state == "running":
                self._take()
            self._label = label

    @property
    def label(self) -> str:
        return self._label

    @property
    def labels(self) -> list[str]:
        """Segment labels in the order they first appeared."""
        with self._lock:
            return self._acc.labels

    @property
    def devices(self) -> tuple[GpuUnit, ...]:
        return self._nvml.units

    @property
    def missing(self) -> tuple[str, ...]:
        """What telemetry could not see, in plain words (empty when everything was measured)."""
        notes = []
        if self._state != "new" and not self._nvml.units:
            notes.append(f"no GPU: {self._nvml.no_gpu_reason or 'NVML found no device'}")
        notes += self._nvml.notes()
        if self._host.error:
            notes.append(self._host.error)
        notes += list(self._errors)
        return tuple(notes)

    def summary(self, label: str | None = None) -> TelemetrySummary:
        """The whole run (None) or one segment; while running, a fresh sample is taken first."""
        with self._lock:
            if self._state == "running":
                self._take()
            return self._acc.summary(
                label, missing=self.missing, started_at=self._started_at, sampler_cpu_s=self._cpu_s
            )

    def summaries(self) -> dict[str, TelemetrySummary]:
        """Every segment's summary, keyed by label."""
        with self._lock:
            if self._state == "running":
                self._take()
            return {
                label: self._acc.summary(
                    label, missing=self.missing, started_at=self._started_at, sampler_cpu_s=self._cpu_s
                )
                for label in self._acc.labels
            }

    def series_bytes(self) -> bytes:
        """The kept raw samples as CSV.gz (columns in workloads/telemetry/series.py)."""
        with self._lock:
            return encode_series(list(self._series), self._nvml.units)

    # ------------------------------------------------------------------ sampling

    def _run(self) -> None:
        deadline = self._clock() + self.interval
        while not self._stop.wait(max(0.0, deadline - self._clock())):
            with self._lock:
                if self._state != "running":
                    return
                self._take(boundary=False)
            deadline += self.interval
            now = self._clock()
            if deadline < now:  # fell behind (a slow query, a suspended process): skip, do not burst
                deadline = now + self.interval

    def _take(self, boundary: bool = True) -> None:
        """Take one sample under the lock; any unexpected error is noted, never raised.

        ``boundary``: a sample at start, a mark, a summary or stop, which always reads the host too.
        """
        cpu0 = time.thread_time()
        try:
            t = self._clock() - self._t0
            units, domains = self._nvml.read(t)
            host = HostReading()
            if boundary or t - self._host_at >= self.host_interval - 1e-3:
                self._host_at = t
                try:
                    host = self._host.read()
                except Exception as exc:  # psutil on an odd platform: keep the GPU figures
                    self._note_error(f"host metrics failed: {exc!r}")
            sample = Sample(t, self._label, units, domains, host)
            self._acc.add(sample)
            self._keep(sample)
        except Exception as exc:
            self._note_error(f"sampler error: {exc!r}")
        finally:
            self._cpu_s += time.thread_time() - cpu0

    def _keep(self, sample: Sample) -> None:
        self._taken += 1
        if (self._taken - 1) % self._stride == 0:
            self._series.append(sample)
        if len(self._series) > self._max_series:
            self._series = self._series[::2]
            self._stride *= 2

    def _guard(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:
            self._note_error(f"NVML failed: {exc!r}")

    def _note_error(self, text: str) -> None:
        self._errors.setdefault(text, None)
