"""Benchmark: peak RSS of evaluating a large test split streamed (row group by row group) against reading it whole.

Writes a synthetic prepared dataset in a temp folder: a test split of ``--rows`` rows x ``--features`` float32
features (2M x 64 is about 500 MB of features) in Parquet row groups of 32,768 rows, as prepare writes them, with
its manifest, and a seeded torch MLP classifier (``--classes`` outputs). Then, each in a fresh subprocess, scores
the model on the split with gpuflow's evaluation code (``tasks.evaluation.scoring.score_loaded``):

- ``whole`` (the named peer): ``read_test_split``, the split read into memory whole, as evaluation did before;
- ``streamed``: ``open_test_split``, what the evaluate flow uses now (one row group and one batch at a time).

Reports each child's peak RSS (ru_maxrss; imports included, so the imports-only RSS is printed too), the ratio
streamed / whole, wall time, and checks that both give exactly the same quality metrics.

Usage: ``python bench/bench_eval_memory.py [--rows 2000000] [--features 64] [--classes 2] [--workdir DIR]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

ROOT = Path(__file__).resolve().parent.parent
GROUP = 32_768
TIMINGS = ("inference_ms_per_sample", "latency_p50_ms")


def model(features: int, classes: int) -> nn.Module:
    from torch import nn

    return nn.Sequential(nn.Linear(features, 64), nn.ReLU(), nn.Linear(64, classes))


def write_dataset(folder: Path, rows: int, features: int, classes: int) -> int:
    """The test split and its manifest; returns the file's bytes."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from workloads.dataset import file_sha256

    rng = np.random.default_rng(0)
    names = [f"f{j}" for j in range(features)]
    path = folder / "test.parquet"
    schema = pa.schema([*(pa.field(n, pa.float32()) for n in names), pa.field("label", pa.int64())])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, GROUP):
            n = min(GROUP, rows - start)
            x = rng.normal(size=(n, features)).astype(np.float32)
            y = (x[:, 0] > 0).astype(np.int64) if classes == 2 else rng.integers(0, classes, n)
            writer.write_table(pa.table({**{name: x[:, j] for j, name in enumerate(names)}, "label": y}, schema))
    size = path.stat().st_size
    entry = {"file": path.name, "rows": rows, "sha256": file_sha256(path), "bytes": size}
    manifest = {
        "format": 2, "name": "bench", "version": "v1", "task": "classification", "rows": {"test": rows},
        "splits": {"test": entry}, "schema": {"features": names, "label": "label", "labels": list(range(classes))},
    }  # fmt: skip
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return size


def child(mode: str, folder: Path, features: int, classes: int) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    import torch

    from tasks.evaluation.model_loading import LoadedModel, ModelInput
    from tasks.evaluation.scoring import ScoredSplit, open_test_split, read_test_split, score_loaded
    from workloads.store import ObjectStore

    net = model(features, classes)
    net.load_state_dict(torch.load(folder / "model.pt"))
    net.eval()
    imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    started = time.perf_counter()
    store, uri = ObjectStore(), folder.as_uri()
    split: ScoredSplit = read_test_split(store, uri) if mode == "whole" else open_test_split(store, uri)
    loaded = LoadedModel("bench", "pytorch", ModelInput(), module=net)
    score = score_loaded(loaded, split, list(range(classes)), "classification")
    return {
        "seconds": time.perf_counter() - started,
        "imports": imports,
        "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "metrics": {k: v for k, v in score.metrics.items() if k not in TIMINGS},
        "rows": score.rows,
    }


def run_child(mode: str, folder: Path, features: int, classes: int) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", mode, "--dataset", str(folder)]
    command += ["--features", str(features), "--classes", str(classes)]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} evaluation failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--classes", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--dataset", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.dataset, args.features, args.classes)))
        return

    sys.path.insert(0, str(ROOT))
    import torch

    folder = Path(tempfile.mkdtemp(prefix="gpuflow-bench-eval-", dir=args.workdir))
    try:
        began = time.perf_counter()
        size = write_dataset(folder, args.rows, args.features, args.classes)
        torch.manual_seed(0)
        torch.save(model(args.features, args.classes).state_dict(), folder / "model.pt")
        print(
            f"test split: {args.rows:,} rows x {args.features} float32 features "
            f"({args.rows * args.features * 4 / 1e6:.0f} MB of features, {size / 1e6:.0f} MB Parquet in row groups "
            f"of {GROUP:,}), {args.classes} classes; "
            f"written in {time.perf_counter() - began:.0f}s"
        )
        results = {mode: run_child(mode, folder, args.features, args.classes) for mode in ("whole", "streamed")}
        for mode, result in results.items():
            print(
                f"{mode:>8}: peak RSS {result['maxrss'] / 1e6:,.0f} MB (imports and model "
                f"{result['imports'] / 1e6:,.0f} MB), {result['seconds']:.1f}s"
            )
        whole, streamed = (int(results[m]["maxrss"]) for m in ("whole", "streamed"))
        base = max(int(results[m]["imports"]) for m in ("whole", "streamed"))
        same = results["whole"]["metrics"] == results["streamed"]["metrics"]
        print(
            f"streamed / whole peak RSS: {streamed / whole:.2f}x; above the imports: {(streamed - base) / 1e6:,.0f} MB "
            f"vs {(whole - base) / 1e6:,.0f} MB = {(streamed - base) / (whole - base):.2f}x; metrics identical: {same}"
        )
        if not same:
            raise SystemExit(f"the metrics differ: {results['whole']['metrics']} vs {results['streamed']['metrics']}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
