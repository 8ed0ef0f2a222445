"""Benchmark: prepare a multi-part input (a glob of CSV parts) batch by batch, peak RSS against the largest part.

Generates ``--parts`` digits-shaped CSV parts of about ``--part-mb`` MB each in a temp folder (``--values int``:
pixels 0..16; ``float``: one decimal), then prepares the glob with the prepare stage's own code
(``tasks.data.publish.prepare_dataset``: hash every part, read in record batches, check, duplicates by row
hash, block-stratified split, three Parquet splits, manifest, atomic publish) in a fresh subprocess, and reports
wall time, MB/s and the child's peak RSS (ru_maxrss, imports included) as a ratio to the largest part (the
issue's target: at most 1.5x).

``--s3`` publishes into an S3 store instead of a local folder: moto's server, started by the bench in its own
process and reached over HTTP through the ``AWS_*`` variables a pod would have (the split files are spooled to
local temp files and uploaded, so the peak should not grow with the splits).

Usage: ``python bench/bench_parts.py [--parts 4] [--part-mb 512] [--values int|float] [--s3] [--workdir DIR]``
(the default is a 2 GB input; ``--part-mb 64`` is a quick run).
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

ROOT = Path(__file__).resolve().parent.parent
FEATURES = 64


def generate_part(path: Path, target_bytes: int, values: str, seed: int) -> int:
    """Random digits-like rows until the part holds about ``target_bytes``; returns its rows."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pcsv

    rng = np.random.default_rng(seed)
    names = [f"pixel_{i}" for i in range(FEATURES)]
    rows = 0
    with path.open("wb") as handle:
        handle.write((",".join([*names, "label"]) + "\n").encode())
        while handle.tell() < target_bytes:
            n = 100_000
            if values == "int":
                pixels = rng.integers(0, 17, size=(n, FEATURES), dtype=np.int8)
            else:
                pixels = (rng.integers(0, 161, size=(n, FEATURES)) / 10).astype(np.float32)
            labels = rng.integers(0, 10, size=n, dtype=np.int8)
            table = pa.Table.from_arrays(
                [pa.array(pixels[:, j]) for j in range(FEATURES)] + [pa.array(labels)], names=[*names, "label"]
            )
            sink = pa.BufferOutputStream()
            pcsv.write_csv(table, sink, write_options=pcsv.WriteOptions(include_header=False))
            handle.write(sink.getvalue().to_pybytes())
            rows += n
    return rows


def child_prepare(pattern: str, out: str) -> dict[str, object]:
    sys.path.insert(0, str(ROOT))
    from tasks.data.demo import digits_schema
    from tasks.data.publish import prepare_dataset
    from tasks.data.schema import PrepareParams
    from workloads.store import store_from_env

    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime
    started = time.perf_counter()
    result = prepare_dataset(
        pattern, store=store_from_env(), root=out, name="parts", schema=digits_schema(), params=PrepareParams()
    )
    seconds = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime - cpu
    return {"seconds": seconds, "cpu_seconds": cpu, "rows": result.manifest.rows, "timings": result.timings}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", type=int, default=4)
    parser.add_argument("--part-mb", type=int, default=512, help="size of each part in MB (1e6 bytes)")
    parser.add_argument("--values", choices=["int", "float"], default="int")
    parser.add_argument(
        "--s3", action="store_true", help="publish into an S3 store (moto's server) instead of a folder"
    )
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--pattern", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "prepare":
        result = child_prepare(args.pattern, args.out)
        result["maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(json.dumps(result))
        return

    workdir = Path(tempfile.mkdtemp(prefix="gpuflow-bench-parts-", dir=args.workdir))
    moto: subprocess.Popen[bytes] | None = None
    try:
        env, out = dict(os.environ), str(workdir / "store")
        if args.s3:
            moto, env = s3_store(env)
            out = "s3://bench/store"
        raw = workdir / "raw"
        raw.mkdir()
        began = time.perf_counter()
        rows = sum(
            generate_part(raw / f"part-{i:03d}.csv", args.part_mb * 1_000_000, args.values, seed=i)
            for i in range(args.parts)
        )
        sizes = [p.stat().st_size for p in sorted(raw.iterdir())]
        total, largest = sum(sizes), max(sizes)
        print(
            f"generated {args.parts} parts, {rows:,} rows x {FEATURES} {args.values} features + label, "
            f"{total / 1e6:.0f} MB (largest part {largest / 1e6:.0f} MB) in {time.perf_counter() - began:.0f}s; "
            f"{os.cpu_count()} CPU(s)"
        )
        began = time.perf_counter()
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                "prepare",
                "--pattern",
                str(raw / "*.csv"),
                "--out",
                out,
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=env,
            check=False,
        )
        if proc.returncode != 0:
            raise SystemExit(f"prepare failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        seconds = float(result["seconds"])
        rss = int(result["maxrss"])
        print(
            f"prepare (batch by batch) into {'S3 (moto server)' if args.s3 else 'a local folder'}: "
            f"{seconds:.1f}s work ({float(result['cpu_seconds']):.1f} CPU s), "
            f"{time.perf_counter() - began:.1f}s process, "
            f"{total / 1e6 / seconds:.0f} MB/s; rows {result['rows']}"
        )
        print(
            f"peak RSS {rss / 1e6:.0f} MB = {rss / largest:.2f}x the largest part ({largest / 1e6:.0f} MB), "
            f"{rss / total:.3f}x the whole input (target: <= 1.5x the largest part)"
        )
        print(f"stages (s): {result['timings']}")
    finally:
        if moto is not None:
            moto.terminate()
            moto.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)


def s3_store(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    """moto's S3 server on a free port with a bucket ``bench``, and the environment that reaches it."""
    import socket

    import boto3
    import requests

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            requests.get(f"{endpoint}/moto-api/", timeout=2)
            break
        except requests.ConnectionError:
            if time.monotonic() > deadline:
                server.terminate()
                raise SystemExit("moto's server did not start") from None
            time.sleep(0.2)
    keys = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
    boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
    ).create_bucket(Bucket="bench")
    return server, {**env, **keys, "AWS_ENDPOINT_URL_S3": endpoint}


if __name__ == "__main__":
    main()
