"""Sampler overhead at 10 Hz: gpuflow's GpuSampler next to MLflow's own system-metrics monitors, same run.

Each monitor samples the same devices at the same rate for the same time, one after the other, repeated and
interleaved so machine noise hits both. Reported per monitor: CPU time of the sampling thread (as % of one
core), CPU time per sample, and the whole process's CPU time over the trial. Over the fake NVML library
(tests/fixtures/fake_nvml, built with gcc) it runs anywhere; where a real GPU answers it runs there too.

    python -m bench.bench_telemetry                  # 10 Hz, 5 s per trial, 2 rounds, 2 fake GPUs
    python -m bench.bench_telemetry --seconds 10 --gpus 8 --json

The fake library answers in well under a microsecond, so fake rows measure the Python side of each monitor;
real-GPU rows add the driver's own query cost (tens of microseconds per query).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MONITORS = ("mlflow GPUMonitor", "mlflow GPU+CPU monitors", "gpuflow GpuSampler")


# ------------------------------------------------------------------------------------------- in the child


def _drive(collect: Callable[[], None], seconds: float, interval: float) -> tuple[int, float]:
    """Call ``collect`` every ``interval`` s on a thread for ``seconds``; (calls, thread CPU seconds)."""
    result = {"n": 0, "cpu": 0.0}
    stop = threading.Event()

    def loop() -> None:
        deadline = time.monotonic() + interval
        while not stop.wait(max(0.0, deadline - time.monotonic())):
            t0 = time.thread_time()
            collect()
            result["cpu"] += time.thread_time() - t0
            result["n"] += 1
            deadline += interval

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    time.sleep(seconds)
    stop.set()
    thread.join()
    return int(result["n"]), float(result["cpu"])


def _trial(name: str, seconds: float, interval: float) -> dict[str, Any]:
    if name == "gpuflow GpuSampler":
        from workloads.telemetry import GpuSampler

        with GpuSampler(interval=interval) as sampler:
            proc0, wall0 = time.process_time(), time.monotonic()  # set-up (NVML init) left out, as for MLflow
            time.sleep(seconds)
            proc_s, wall = time.process_time() - proc0, time.monotonic() - wall0
        summary = sampler.summary()
        samples, cpu = summary.samples, summary.sampler_cpu_s
        gpus = summary.gpu_count
    else:
        from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
        from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor

        monitors: list[Any] = [GPUMonitor()]
        if name == "mlflow GPU+CPU monitors":
            monitors.append(CPUMonitor())
        gpus = monitors[0].num_gpus

        def collect() -> None:
            for monitor in monitors:
                monitor.collect_metrics()

        proc0, wall0 = time.process_time(), time.monotonic()
        samples, cpu = _drive(collect, seconds, interval)
        proc_s, wall = time.process_time() - proc0, time.monotonic() - wall0
    return {
        "monitor": name,
        "gpus": gpus,
        "samples": samples,
        "thread_cpu_s": cpu,
        "wall_s": wall,
        "process_cpu_s": proc_s,
    }


def child(seconds: float, interval: float, rounds: int) -> None:
    import pynvml  # noqa: F401 - imports before the clock starts, and before mlflow's GPUMonitor needs it

    import workloads.telemetry  # noqa: F401

    results = [_trial(name, seconds, interval) for _ in range(rounds) for name in MONITORS]
    print(json.dumps(results))


# ------------------------------------------------------------------------------------------- in the parent


def _fake_env(gpus: int, work: Path) -> dict[str, str]:
    from tests.fixtures.fake_nvml.build import build, library_env
    from tests.fixtures.fake_nvml.script import Device, Script, Step

    steps = [Step(util=40 + i % 50, mem=(8 + i % 4) * 2**30, power_mw=250_000 + 1000 * i) for i in range(64)]
    script = Script(devices=[Device(steps=steps) for _ in range(gpus)]).write(work / "bench-script.txt")
    return library_env(build(work / "lib"), script)


def _real_gpu_present() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return bool(pynvml.nvmlDeviceGetCount() > 0)
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return False


def _run_child(env: dict[str, str], args: argparse.Namespace) -> list[dict[str, Any]]:
    command = [sys.executable, "-m", "bench.bench_telemetry", "--child"]
    command += ["--seconds", str(args.seconds), "--interval", str(args.interval), "--rounds", str(args.rounds)]
    env = {**env, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    return list(json.loads(out.stdout.strip().splitlines()[-1]))


def _aggregate(backend: str, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for name in MONITORS:
        trials = [r for r in results if r["monitor"] == name]
        samples = sum(r["samples"] for r in trials)
        cpu = sum(r["thread_cpu_s"] for r in trials)
        wall = sum(r["wall_s"] for r in trials)
        rows.append(
            {
                "backend": backend,
                "monitor": name,
                "gpus": trials[0]["gpus"],
                "samples": samples,
                "us_per_sample": 1e6 * cpu / samples if samples else float("nan"),
                "thread_core_pct": 100.0 * cpu / wall,
                "process_core_pct": 100.0 * sum(r["process_cpu_s"] for r in trials) / wall,
                "spread_us": statistics.pstdev([1e6 * r["thread_cpu_s"] / max(r["samples"], 1) for r in trials]),
            }
        )
    base = rows[0]["us_per_sample"]
    for row in rows:
        row["ratio_vs_mlflow_gpu"] = row["us_per_sample"] / base if base else float("nan")
    return rows


def _table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"sampler overhead at {1 / args.interval:g} Hz, {args.seconds:g} s x {args.rounds} rounds per monitor",
        f"{'backend':<10}{'monitor':<26}{'gpus':>5}{'samples':>9}{'us/sample':>11}{'+-':>7}"
        f"{'thread %core':>14}{'process %core':>15}{'x MLflow GPU':>14}",
    ]
    for r in rows:
        lines.append(
            f"{r['backend']:<10}{r['monitor']:<26}{r['gpus']:>5}{r['samples']:>9}{r['us_per_sample']:>11.1f}"
            f"{r['spread_us']:>7.1f}{r['thread_core_pct']:>14.3f}{r['process_core_pct']:>15.3f}"
            f"{r['ratio_vs_mlflow_gpu']:>14.2f}"
        )
    lines.append(
        "MLflow GPUMonitor reads memory, utilisation, power and power limit per GPU; its CPU monitor adds host CPU "
        "and memory.\nGpuSampler also reads energy, temperature, SM clock, throttle reasons, ECC, XID events and the "
        "process list,\nplus host CPU/memory and this process tree's CPU and RSS (once a second)."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per trial")
    parser.add_argument("--interval", type=float, default=0.1, help="sampling interval (0.1 s = 10 Hz)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of every monitor")
    parser.add_argument("--gpus", type=int, default=2, help="GPUs the fake library reports")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.seconds, args.interval, args.rounds)
        return 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-telemetry-") as work:
        rows += _aggregate("fake NVML", _run_child(_fake_env(args.gpus, Path(work)), args))
    if _real_gpu_present():
        rows += _aggregate("real GPU", _run_child(dict(os.environ), args))
    else:
        rows.append({"backend": "real GPU", "monitor": "(none: NVML found no GPU on this machine)"})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(_table([r for r in rows if "samples" in r], args))
        for r in rows:
            if "samples" not in r:
                print(f"{r['backend']}: {r['monitor']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
