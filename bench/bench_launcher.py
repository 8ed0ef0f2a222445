"""The launcher's cost: how fast it relays metrics to a real ``mlflow server``, and what it adds to a training step.

Relay: a trainer process appends ``--points`` metric points (10 per step) to its metrics file as fast as it can,
and the launcher's own watch loop (``Launch.watch``: tail, parse, per-step telemetry, batches, checkpoint mirror)
relays them to an ``mlflow server`` (SQLite, one worker, as the tests start it). Points/s counts from the
trainer's start (its interpreter's start-up included) to the last batch acknowledged; afterwards every
(key, step) is read back: nothing lost, nothing doubled.
The same file is then relayed again into the same run, as after a restart: every point must be skipped.
Baselines on the same server: one ``log_metric`` call per point, and ``log_batch`` of 1000 prebuilt points (the
ceiling: no file, no parsing).

Overhead: a trainer whose steps are a fixed amount of CPU work (tests/fixtures/trainers/step_trainer.py, one
metrics line per step, a checkpoint every 10) runs alone and under the launcher, interleaved, ``--repeats``
times. Reported: the step loop's slowdown under the launcher (median against median) and the launcher's own CPU
time during the loop as a share of the loop's time (read from /proc at the trainer's first and last step).

    python -m bench.bench_launcher [--points 20000] [--per-call 300] [--steps 50] [--step-ms 100] [--repeats 3]

The three relay figures are measured in interleaved rounds and their medians compared; the server itself is the
bottleneck (a relay batch and a ceiling batch are the same request; the relay reads and parses on while its one
batch in flight is stored, the ceiling's loop only builds requests). On a shared machine the step slowdown is
noisy at the percent level (the best-of-runs figure is the steadier one); the launcher's CPU share is not.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
STEP_TRAINER = ROOT / "tests" / "fixtures" / "trainers" / "step_trainer.py"
PER_STEP = 10  # metric points per step in the relay run

WRITER = f"""
import json, os, sys
steps = int(sys.argv[1])
with open(os.environ["GPUFLOW_METRICS_FILE"], "a") as handle:
    for step in range(1, steps + 1):
        metrics = {{f"m{{i}}": step * 0.001 + i for i in range({PER_STEP})}}
        handle.write(json.dumps({{"step": step, "metrics": metrics}}) + "\\n")
"""


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_mlflow(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``mlflow server`` on SQLite with proxied artifacts, as tests/conftest.py starts it."""
    import requests

    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination", (root / "artifacts").as_uri(), "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1",
        ],
        stdout=open(root / "server.log", "wb"),  # noqa: SIM115 - closed with the process
        stderr=subprocess.STDOUT,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},  # no idle huey consumers beside the relay
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"mlflow server exited {proc.returncode}; see {root / 'server.log'}")
        try:
            if requests.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise SystemExit("mlflow server did not start within 180 s")


def new_run(url: str, name: str) -> str:
    from mlflow import MlflowClient

    client = MlflowClient(url)
    found = client.get_experiment_by_name("bench-launcher")
    experiment = found.experiment_id if found else client.create_experiment("bench-launcher")
    return client.create_run(experiment, run_name=name).info.run_id


# ------------------------------------------------------------------------------------------- relay


def relay_once(url: str, run_id: str, dataset_uri: str, work: Path, steps: int) -> dict[str, Any]:
    """The launcher's watch loop relaying a writer process's lines; seconds and the relay's counters."""
    from workloads.launcher.checkpoints import CheckpointSync
    from workloads.launcher.config import LauncherConfig
    from workloads.launcher.process import TrainerProcess
    from workloads.launcher.relay import MetricRelay, run_history
    from workloads.launcher.run import Files, Launch
    from workloads.launcher.telemetry import LaunchTelemetry
    from workloads.store import ObjectStore

    folder = Path(tempfile.mkdtemp(prefix="relay-", dir=work))
    files = Files(folder)
    command = (sys.executable, "-c", WRITER, str(steps))
    config = LauncherConfig(
        command=command,
        dataset_uri=dataset_uri,
        training_id="bench",
        hparams={},
        checkpoint_uri=str(work / "checkpoints"),
        tracking_uri=url,
        run_id=run_id,
    )
    telemetry = LaunchTelemetry(config.telemetry_interval)
    telemetry.start()
    launch = Launch(config, telemetry, time.perf_counter())
    relay = MetricRelay(launch.client, run_id, run_history(launch.client, run_id), batch_seconds=config.batch_seconds)
    sync = CheckpointSync(ObjectStore(), config.checkpoint_uri, files.checkpoint)
    env = {**os.environ, "GPUFLOW_METRICS_FILE": str(files.metrics)}
    trainer = TrainerProcess(command, env)
    began = time.perf_counter()
    telemetry.trainer_started()
    trainer.start()
    try:
        code = launch.watch(trainer, files, relay, None, sync, "classification")
    finally:
        trainer.clean_up()
    relay.flush()
    seconds = time.perf_counter() - began
    telemetry.stop()
    return {"code": code, "seconds": seconds, "sent": relay.sent, "skipped": relay.skipped, "batches": relay.batches}


def exactly_once(url: str, run_id: str, steps: int) -> tuple[int, int, int]:
    """(points found, steps missing, steps doubled) over the writer's keys."""
    from mlflow import MlflowClient

    client = MlflowClient(url)
    found = missing = doubled = 0
    for i in range(PER_STEP):
        history = [m.step for m in client.get_metric_history(run_id, f"m{i}")]
        found += len(history)
        missing += len(set(range(1, steps + 1)) - set(history))
        doubled += len(history) - len(set(history))
    return found, missing, doubled


def per_call(url: str, points: int) -> float:
    from mlflow import MlflowClient

    client, run_id = MlflowClient(url), new_run(url, "per-call")
    began = time.perf_counter()
    for n in range(points):
        client.log_metric(run_id, f"m{n % PER_STEP}", float(n), step=n // PER_STEP + 1)
    return points / (time.perf_counter() - began)


def batch_ceiling(url: str, points: int) -> float:
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client, run_id = MlflowClient(url), new_run(url, "log-batch")
    now = int(time.time() * 1000)
    metrics = [Metric(f"m{n % PER_STEP}", float(n), now, n // PER_STEP + 1) for n in range(points)]
    began = time.perf_counter()
    for start in range(0, points, 1000):
        client.log_batch(run_id, metrics=metrics[start : start + 1000])
    return points / (time.perf_counter() - began)


# ------------------------------------------------------------------------------------------- overhead


def calibrate(step_ms: float, env: dict[str, str], folder: Path) -> int:
    """Matrix products per step so that one step takes about ``step_ms`` here, alone (measured as the trainer
    runs them: its own process, one thread)."""
    probe = {"steps": 10, "work": 20, "points": 5, "checkpoint_every": 10}
    env = {
        **env,
        "GPUFLOW_HPARAMS": json.dumps(probe),
        "GPUFLOW_METRICS_FILE": str(folder / "metrics.jsonl"),
        "GPUFLOW_CHECKPOINT_DIR": str(folder / "checkpoint"),
    }
    per_product = step_run(probe, env, None)["loop"] / (probe["steps"] * probe["work"])
    return max(1, round(step_ms / 1000.0 / per_product))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime, this process only


def step_run(hparams: dict[str, int], env: dict[str, str], launcher: list[str] | None) -> dict[str, float]:
    """One run of the step trainer, alone or under the launcher; its loop time and the launcher's CPU in it."""
    command = [sys.executable, str(STEP_TRAINER)]
    if launcher is not None:
        command = [*launcher, "--hparams", json.dumps(hparams), "--", *command]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    marks: dict[str, float] = {}
    loop = 0.0
    for line in proc.stdout:
        if line.startswith("loop ") and launcher is not None:
            marks[line.split()[1]] = cpu_seconds(proc.pid)
        if line.startswith("loop_seconds="):
            loop = float(line.split()[0].split("=")[1])
    _, err = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"step trainer run failed ({proc.returncode}): {err[-2000:]}")
    return {"loop": loop, "launcher_cpu": marks.get("end", 0.0) - marks.get("start", 0.0)}


def overhead(url: str, dataset_uri: str, work: Path, args: argparse.Namespace) -> dict[str, float]:
    direct_env = {**os.environ, "OMP_NUM_THREADS": "1"}
    direct_env.pop("MLFLOW_RUN_ID", None)
    (work / "calibrate").mkdir()
    hparams = {"steps": args.steps, "work": calibrate(args.step_ms, direct_env, work / "calibrate"), "points": 5}
    hparams["checkpoint_every"] = 10
    direct_env["GPUFLOW_HPARAMS"] = json.dumps(hparams)
    alone: list[float] = []
    launched: list[float] = []
    shares: list[float] = []
    for repeat in range(args.repeats):
        folder = work / f"direct-{repeat}"
        folder.mkdir()
        env = {
            **direct_env,
            "GPUFLOW_METRICS_FILE": str(folder / "metrics.jsonl"),
            "GPUFLOW_CHECKPOINT_DIR": str(folder / "checkpoint"),
        }
        alone.append(step_run(hparams, env, None)["loop"])
        run_env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "MLFLOW_TRACKING_URI": url,
            "MLFLOW_RUN_ID": new_run(url, f"overhead-{repeat}"),
        }
        launcher = [
            sys.executable, "-m", "workloads.launcher", "--dataset-uri", dataset_uri, "--training-id",
            f"overhead-{repeat}", "--checkpoint-root", str(work / "checkpoints"),
        ]  # fmt: skip
        result = step_run(hparams, run_env, launcher)
        launched.append(result["loop"])
        shares.append(result["launcher_cpu"] / result["loop"])
    return {
        "work": hparams["work"],
        "step_ms_alone": statistics.median(alone) / args.steps * 1000,
        "step_ms_launched": statistics.median(launched) / args.steps * 1000,
        "slowdown": statistics.median(launched) / statistics.median(alone) - 1,
        "slowdown_of_best": min(launched) / min(alone) - 1,  # fixed work: the fastest run is the least disturbed
        "launcher_cpu_share": statistics.median(shares),
        "alone": alone,
        "launched": launched,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=20_000, help="points relayed (10 per step)")
    parser.add_argument("--per-call", type=int, default=300, help="points sent one log_metric call each")
    parser.add_argument("--steps", type=int, default=50, help="steps of the overhead trainer")
    parser.add_argument("--step-ms", type=float, default=100.0, help="CPU work per step, calibrated here")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of each measurement")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    from workloads.quiet import quiet_mlflow

    quiet_mlflow()
    sys.path.insert(0, str(ROOT))
    from tests.fixtures.datasets import write_digits_dataset

    with tempfile.TemporaryDirectory(prefix="bench-launcher-") as tmp:
        work = Path(tmp)
        dataset_uri = write_digits_dataset(work / "store")
        server, url = start_mlflow(work)
        try:
            steps = args.points // PER_STEP
            batch_ceiling(url, 2000)  # warm the server up (first requests, SQLite pages)
            rates: dict[str, list[float]] = {"relay": [], "per-call": [], "log_batch": []}
            for _ in range(args.repeats):  # interleaved, so the machine's noise hits all three alike
                rates["log_batch"].append(batch_ceiling(url, args.points))
                run_id = new_run(url, "relay")
                first = relay_once(url, run_id, dataset_uri, work, steps)
                rates["relay"].append(steps * PER_STEP / first["seconds"])
                rates["per-call"].append(per_call(url, args.per_call))
            found, missing, doubled = exactly_once(url, run_id, steps)
            again = relay_once(url, run_id, dataset_uri, work, steps)
            after = exactly_once(url, run_id, steps)
            relay_rate, call_rate, ceiling = (statistics.median(rates[k]) for k in ("relay", "per-call", "log_batch"))
            cost = overhead(url, dataset_uri, work, args)
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(
        f"relay to mlflow server: {steps * PER_STEP} points, median of {args.repeats}: {relay_rate:,.0f} points/s "
        f"(each: {', '.join(f'{r:,.0f}' for r in rates['relay'])}; last: {first['batches']} batches); "
        f"read back: {found} points, {missing} missing, {doubled} doubled"
    )
    print(
        f"relayed again (a restart): {again['sent']} sent, {again['skipped']} skipped; read back {after[0]} points,"
        f" {after[1]} missing, {after[2]} doubled"
    )
    print(
        f"per-call log_metric: {call_rate:,.0f} points/s   log_batch ceiling: {ceiling:,.0f} points/s "
        f"(each: {', '.join(f'{r:,.0f}' for r in rates['log_batch'])})"
    )
    print(f"ratios: relay / per-call = {relay_rate / call_rate:.1f}x   relay / log_batch = {relay_rate / ceiling:.2f}")
    print(
        f"step of {cost['work']} matrix products: {cost['step_ms_alone']:.1f} ms alone, "
        f"{cost['step_ms_launched']:.1f} ms under the launcher (medians): slowdown {cost['slowdown'] * 100:+.2f} % "
        f"(best runs: {cost['slowdown_of_best'] * 100:+.2f} %); "
        f"launcher CPU during the steps: {cost['launcher_cpu_share'] * 100:.2f} % of their time"
    )
    if args.json:
        print(json.dumps({"relay_points_per_s": relay_rate, "per_call_points_per_s": call_rate,
                          "log_batch_points_per_s": ceiling, "relay": first, "restart": again,
                          "read_back": [found, missing, doubled], "overhead": cost}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
