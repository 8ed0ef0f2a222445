"""How much of ``gpuflow run`` is orchestration, and how much is the stages' own work.

Runs ``gpuflow run --json`` on the digits demo in a fresh GPUFLOW_HOME (the newcomer's path: ephemeral
Prefect, MLflow on SQLite), then splits the wall time into the stages' own work (as each stage reports it)
and everything else (process start-up, imports, Prefect's temporary server, MLflow bookkeeping).

    python -m bench.bench_run [--epochs 20] [--repeat 2]
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

ROOT = Path(__file__).resolve().parent.parent


def one_run(epochs: int, home: Path) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "MLFLOW_", "GPUFLOW_"))}
    env.update(GPUFLOW_HOME=str(home / "gpuflow"), PREFECT_HOME=str(home / "prefect"))
    begin = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", "--epochs", str(epochs), "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - begin
    if proc.returncode != 0:
        raise SystemExit(f"gpuflow run failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    work = sum(result["stage_work_seconds"].values())
    stages = sum(result["stage_seconds"].values())
    return {"wall": wall, "work": work, "stages_wall": stages, "in_flow": result["total_seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=2, help="runs, each from an empty home")
    args = parser.parse_args()
    runs = []
    for index in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="gpuflow-bench-run-") as tmp:
            runs.append(one_run(args.epochs, Path(tmp)))
        print(f"run {index + 1}/{args.repeat}: {runs[-1]['wall']:.1f}s wall", file=sys.stderr)

    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    wall, work, stages_wall, in_flow = med("wall"), med("work"), med("stages_wall"), med("in_flow")
    print(f"gpuflow run on digits, {args.epochs} epochs, median of {args.repeat} runs from an empty home")
    print(f"{'measure':<44}{'seconds':>10}{'share of wall':>16}")
    rows = [
        ("wall time of the gpuflow process", wall),
        ("stages' own work (sum of every stage)", work),
        ("orchestration overhead (wall - work)", wall - work),
        ("  of which process start + Prefect server", wall - in_flow),
        ("  of which inside the pipeline flow", in_flow - work),
        ("  of which per-stage flow bookkeeping", stages_wall - work),
    ]
    for name, value in rows:
        print(f"{name:<44}{value:>10.2f}{value / wall:>15.1%}")
    print(f"overhead ratio (overhead / wall): {(wall - work) / wall:.3f}  goal < 0.05")


if __name__ == "__main__":
    main()
