"""Benchmark: gpuflow's prepare against plain pandas (read_csv -> stratified split -> to_parquet x3).

Generates a digits-shaped CSV (``--rows`` x ``--features`` integer pixels in [0, 16] plus a label in
0..9) in a temp folder, then runs each contender in its own fresh subprocess, one after the other, and
reports wall time of the work (imports excluded) and the process's peak RSS (ru_maxrss, imports
included) next to the file size:

- ``gpuflow``: ``tasks.data.publish.prepare_dataset`` (the task's logic: hash, read, validate, duplicates,
  stratified split, Parquet x3, manifest, atomic publish);
- ``pandas``: ``pd.read_csv`` -> ``sklearn.model_selection.train_test_split`` (stratified, twice) ->
  ``DataFrame.to_parquet`` x3, with no validation at all;
- ``pandas same work``: the same work as gpuflow with pandas' fastest reader (``engine="pyarrow"``): sha256 of
  the file, range/NaN/label checks, a duplicate-row check, the stratified split, features as float32, Parquet x3;
  the ratio ``vs same work`` and MB/s (file bytes / work seconds) compare gpuflow against it;
- ``gpuflow cached``: the same call again on the published version (cache hit: hash only);
- ``flow`` (unless ``--no-flow``): the whole Prefect ``prepare`` flow (MLflow logging, event) on an
  ephemeral Prefect API, timed after a warm-up run on the demo data so server start-up is not counted.

Usage: ``python bench/bench_prepare.py [--rows 1000000] [--features 64] [--no-flow] [--workdir DIR]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def generate_csv(path: Path, rows: int, features: int, values: str = "int", seed: int = 0) -> None:
    """Random digits-like rows, written in chunks with pyarrow (unique rows with overwhelming probability).

    ``values="int"``: integer pixels 0..16 as in digits; ``"float"``: one decimal (e.g. ``12.5``), which
    takes gpuflow's float parse instead of its small-integer fast path.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pcsv

    rng = np.random.default_rng(seed)
    names = [f"pixel_{i}" for i in range(features)]
    with path.open("wb") as handle:
        handle.write((",".join([*names, "label"]) + "\n").encode())
        options = pcsv.WriteOptions(include_header=False)
        for start in range(0, rows, 200_000):
            n = min(200_000, rows - start)
            if values == "int":
                pixels = rng.integers(0, 17, size=(n, features), dtype=np.int8)
            else:
                pixels = (rng.integers(0, 161, size=(n, features)) / 10).astype(np.float32)
            labels = rng.integers(0, 10, size=n, dtype=np.int8)
            columns = [pa.array(pixels[:, j]) for j in range(features)] + [pa.array(labels)]
            table = pa.Table.from_arrays(columns, names=[*names, "label"])
            sink = pa.BufferOutputStream()
            pcsv.write_csv(table, sink, write_options=options)
            handle.write(sink.getvalue().to_pybytes())


# --------------------------------------------------------------------------- children


def _rss_now() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child_gpuflow(csv: Path, out: Path, features: int) -> dict[str, object]:
    sys.path.insert(0, str(ROOT))
    from tasks.data.publish import prepare_dataset
    from tasks.data.schema import DatasetSchema, PrepareParams
    from workloads.store import ObjectStore

    schema = DatasetSchema(
        features=tuple(f"pixel_{i}" for i in range(features)),
        label="label",
        labels=tuple(range(10)),
        value_range=(0.0, 16.0),
    )
    store = ObjectStore()
    rss_before = _rss_now()
    cpu = _cpu()
    started = time.perf_counter()
    result = prepare_dataset(str(csv), store=store, root=str(out), name="bench", schema=schema, params=PrepareParams())
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "cpu_seconds": _cpu() - cpu,
        "rss_before_work": rss_before,
        "cache_hit": result.cache_hit,
        "rows": result.manifest.rows,
        "timings": result.timings,
    }


def child_pandas(csv: Path, out: Path) -> dict[str, object]:
    import pandas as pd
    import pyarrow.parquet  # noqa: F401 - imported up front, as gpuflow's child imports its modules
    from sklearn.model_selection import train_test_split

    rss_before = _rss_now()
    cpu = _cpu()
    started = time.perf_counter()
    frame = pd.read_csv(csv)
    labels = frame["label"].to_numpy()
    rest, test = train_test_split(frame.index.to_numpy(), test_size=0.15, stratify=labels, random_state=42)
    train, val = train_test_split(rest, test_size=0.15 / 0.85, stratify=labels[rest], random_state=42)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("val", val), ("test", test)):
        frame.iloc[rows].to_parquet(out / f"{name}.parquet", index=False)
    seconds = time.perf_counter() - started
    rows = {"train": len(train), "val": len(val), "test": len(test)}
    return {"seconds": seconds, "cpu_seconds": _cpu() - cpu, "rss_before_work": rss_before, "rows": rows}


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child_pandas_same_work(csv: Path, out: Path, features: int) -> dict[str, object]:
    """What gpuflow does, with pandas: hash, read (pyarrow engine), validate, duplicates, split, float32, Parquet."""
    import hashlib

    import numpy as np
    import pandas as pd
    import pyarrow.parquet  # noqa: F401
    from sklearn.model_selection import train_test_split

    rss_before = _rss_now()
    cpu = _cpu()
    started = time.perf_counter()
    with csv.open("rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    frame = pd.read_csv(csv, engine="pyarrow")
    names = [f"pixel_{i}" for i in range(features)]
    values = frame[names].to_numpy(dtype=np.float32)
    if frame.isna().any().any() or not bool(((values >= 0) & (values <= 16)).all()):
        raise SystemExit("invalid feature values")
    if not frame["label"].isin(range(10)).all():
        raise SystemExit("invalid labels")
    if frame.duplicated().any():
        raise SystemExit("duplicate rows")
    frame[names] = values
    labels = frame["label"].to_numpy()
    rest, test = train_test_split(frame.index.to_numpy(), test_size=0.15, stratify=labels, random_state=42)
    train, val = train_test_split(rest, test_size=0.15 / 0.85, stratify=labels[rest], random_state=42)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", np.sort(train)), ("val", np.sort(val)), ("test", np.sort(test))):
        frame.iloc[rows].to_parquet(out / f"{name}.parquet", index=False, compression="snappy")
    seconds = time.perf_counter() - started
    rows_out = {"train": len(train), "val": len(val), "test": len(test)}
    return {
        "seconds": seconds,
        "cpu_seconds": _cpu() - cpu,
        "rss_before_work": rss_before,
        "rows": rows_out,
        "sha256": digest[:12],
    }


def child_flow(csv: Path, home: Path) -> dict[str, object]:
    os.environ["GPUFLOW_HOME"] = str(home)
    (home / "prefect").mkdir(parents=True, exist_ok=True)
    os.environ["PREFECT_HOME"] = str(home / "prefect")  # an ephemeral API of its own, not the user's profile
    for var in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "GPUFLOW_STORE_URI"):
        os.environ.pop(var, None)
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")  # fresh database: migrations
    sys.path.insert(0, str(ROOT))
    from workloads.quiet import quiet_environment

    quiet_environment()
    from flows.prepare import prepare

    prepare("demo")  # warm-up: starts the ephemeral Prefect API and creates the MLflow store
    rss_before = _rss_now()
    started = time.perf_counter()
    result = prepare(str(csv), dataset_name="bench")
    seconds = time.perf_counter() - started
    again = time.perf_counter()
    cached = prepare(str(csv), dataset_name="bench")
    return {
        "seconds": seconds,
        "cached_seconds": time.perf_counter() - again,
        "cache_hit_second": cached.cache_hit,
        "rss_before_work": rss_before,
        "rows": result.rows,
        "stage_seconds": result.seconds,
    }


def run_child(kind: str, *args: str) -> dict[str, object]:
    """One contender in a fresh interpreter; its own ru_maxrss is its peak RSS."""
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--child", kind, *args], capture_output=True, text=True, cwd=ROOT, check=False
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{kind} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_wall"] = wall
    return result


def summarize(runs: list[dict[str, object]]) -> dict[str, object]:
    """The fastest run's figures, with the highest peak RSS of all runs."""
    best = dict(min(runs, key=lambda r: float(r["seconds"])))  # type: ignore[arg-type]
    best["maxrss"] = max(int(r["maxrss"]) for r in runs)  # type: ignore[call-overload]
    best["runs"] = len(runs)
    best["all_seconds"] = [round(float(r["seconds"]), 3) for r in runs]  # type: ignore[arg-type]
    return best


# --------------------------------------------------------------------------- report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--values", choices=["int", "float"], default="int", help="int: pixels 0..16; float: 12.5")
    parser.add_argument("--workdir", type=Path, default=None, help="where to put the CSV and outputs (temp dir)")
    parser.add_argument("--repeat", type=int, default=3, help="fresh processes per contender (best time, worst RSS)")
    parser.add_argument("--no-flow", action="store_true", help="skip the Prefect flow measurement")
    parser.add_argument("--json", action="store_true", help="also print the raw measurements as JSON")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--csv", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        if args.child == "generate":
            generate_csv(args.csv, args.rows, args.features, args.values)
            return
        if args.child == "gpuflow":
            result = child_gpuflow(args.csv, args.out, args.features)
        elif args.child == "pandas":
            result = child_pandas(args.csv, args.out)
        elif args.child == "pandas-same":
            result = child_pandas_same_work(args.csv, args.out, args.features)
        else:
            result = child_flow(args.csv, args.out)
        result["maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(json.dumps(result))
        return

    workdir = Path(tempfile.mkdtemp(prefix="gpuflow-bench-", dir=args.workdir))
    try:
        csv = workdir / "raw.csv"
        began = time.perf_counter()
        # In a child: ru_maxrss survives fork+exec, so the parent must stay small for the children's peaks.
        subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                "generate",
                "--csv",
                str(csv),
                "--rows",
                str(args.rows),
                "--features",
                str(args.features),
                "--values",
                args.values,
            ],
            check=True,
        )
        size = csv.stat().st_size
        print(
            f"generated {csv.name}: {args.rows:,} rows x {args.features} {args.values} features + label, "
            f"{size / 1e6:.1f} MB in {time.perf_counter() - began:.1f}s; {os.cpu_count()} CPU(s)"
        )
        common = ["--csv", str(csv), "--features", str(args.features)]
        contenders = {
            "pandas": ("pandas", *common, "--out", str(workdir / "pandas")),
            "pandas same work": ("pandas-same", *common, "--out", str(workdir / "pandas-same")),
            "gpuflow": ("gpuflow", *common, "--out", str(workdir / "store")),
        }
        runs: dict[str, list[dict[str, object]]] = {name: [] for name in contenders}
        for _ in range(max(1, args.repeat)):  # interleaved, so load from elsewhere hits both alike
            for name, child in contenders.items():
                shutil.rmtree(workdir / "store", ignore_errors=True)  # a cold run each time, not a cache hit
                runs[name].append(run_child(*child))
        # The store is left published now: this is the cache-hit path (hash the file, find the manifest).
        runs["gpuflow cached"] = [run_child(*contenders["gpuflow"]) for _ in range(max(1, args.repeat))]
        results = {name: summarize(found) for name, found in runs.items()}
        if not args.no_flow:
            results["flow"] = run_child("flow", *common, "--out", str(workdir / "home"))
        report(results, size)
        if args.json:
            print(json.dumps(results, indent=2, default=str))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def report(results: dict[str, dict[str, object]], size: int) -> None:
    base = float(results["pandas"]["seconds"])  # type: ignore[arg-type]
    same = float(results["pandas same work"]["seconds"])  # type: ignore[arg-type]
    header = (
        f"{'contender':<18}{'work s':>8}{'cpu s':>7}{'MB/s':>7}{'process s':>11}{'pandas/this':>13}"
        f"{'same-work/this':>16}{'peak RSS MB':>13}{'RSS/file':>10}{'(RSS-imports)/file':>20}"
    )
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        seconds = float(r["seconds"])  # type: ignore[arg-type]
        rss = int(r["maxrss"])  # type: ignore[call-overload]
        own = rss - int(r["rss_before_work"])  # type: ignore[call-overload]
        cpu = float(r.get("cpu_seconds", float("nan")))  # type: ignore[arg-type]
        print(
            f"{name:<18}{seconds:>8.2f}{cpu:>7.2f}{size / 1e6 / seconds:>7.0f}{float(r['process_wall']):>11.2f}"  # type: ignore[arg-type]
            f"{base / seconds:>13.2f}{same / seconds:>16.2f}{rss / 1e6:>13.0f}{rss / size:>10.2f}{own / size:>20.2f}"
        )
    for name, r in results.items():
        if "all_seconds" in r:
            print(f"  {name}: runs {r['all_seconds']}" + (f", cache_hit={r['cache_hit']}" if "cache_hit" in r else ""))
    print(
        f"file size {size / 1e6:.1f} MB; 'work s': best of {results['pandas']['runs']} fresh processes, "
        "imports excluded; peak RSS: highest of those runs, imports included"
    )
    gpuflow = results["gpuflow"]
    print(f"gpuflow stages (s): {gpuflow['timings']}; RSS after imports {int(gpuflow['rss_before_work']) / 1e6:.0f} MB")  # type: ignore[call-overload]
    if "flow" in results:
        flow: dict[str, Any] = dict(results["flow"])
        print(
            f"flow: first run {float(flow['seconds']):.2f}s (stage work {flow['stage_seconds']}s), "
            f"cache hit {float(flow['cached_seconds']):.2f}s (cache_hit={flow['cache_hit_second']})"
        )


if __name__ == "__main__":
    main()
