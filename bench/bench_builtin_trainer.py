"""The built-in trainer's training time against a peer: the same trainer code at another git ref (``main``).

Both run the built-in MLP's training loop (``workloads.trainer.loop.Trainer``: the dataset loaded, then
``--epochs`` epochs of training and validation) on the same prepared dataset with the same hyperparameters and
seed, each run a fresh process on CPU, the two alternating ``--repeats`` times. The peer is this repository's
``--ref`` exported with ``git archive`` into a temporary folder and put first on ``PYTHONPATH`` (same virtual
environment, same torch). Reported: each side's median seconds for the epochs (data loading excluded, as it is
the same reader on both sides), the ratio new/peer, and whether the figures (every epoch's losses and metrics)
are bit-identical, which they must be for the same seed.

    python -m bench.bench_builtin_trainer [--ref main] [--rows 60000] [--epochs 3] [--repeats 5] [--threads 1] [--sdk]

With ``--sdk`` the new side is the built-in MLP written on the SDK (``workloads.trainer.entry:train`` on
``TorchRun``, its batches from ``SplitLoader(order="global")``) against the peer's built-in loop: the issue's
"within 5 % of today's trainer time", figures bit-identical.

The dataset is digits tiled to ``--rows`` rows with a little seeded noise (70/15/15 split), written as prepare
writes a dataset. On a shared machine single runs vary by several percent: compare medians.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# Runs inside the measured process, with the code under test first on sys.path.
DRIVER = """
import json, sys, time
import torch
from workloads.store import ObjectStore
from workloads.trainer.config import Hyperparameters
from workloads.trainer.data import load_training_data
from workloads.trainer.loop import Trainer

uri, epochs, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
torch.use_deterministic_algorithms(True)
data = load_training_data(uri, ObjectStore())
hyper = Hyperparameters(epochs=epochs, batch_size=64, learning_rate=1e-3, hidden_size=128, dropout=0.1, seed=42)
trainer = Trainer(data, hyper, torch.device("cpu"))
started = time.perf_counter()
figures = []
for _ in range(epochs):
    result = trainer.run_epoch()
    figures.append([result.train_loss, result.validation])
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "figures": figures, "code": __import__("workloads").__file__}))
"""

# ``--sdk``: the new side is the built-in MLP as an SDK trainer (workloads.trainer.entry:train on TorchRun), run in
# this process with a TrainerContext on temporary files (no launcher; the model is not logged). Its seconds are the
# sum of the epochs' epoch_seconds (training and validation, as the peer's loop); checkpoints and metrics lines
# between epochs are outside them, as the built-in trainer's own checkpoints are outside the peer's loop.
SDK_DRIVER = """
import json, os, sys, tempfile
from pathlib import Path
import torch
from workloads.sdk.context import TrainerContext
from workloads.trainer.entry import train

uri, epochs, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
os.environ["GPUFLOW_TORCH_THREADS"] = str(threads)

class BenchContext(TrainerContext):
    def log_model(self, model, **kwargs):
        return ""

with tempfile.TemporaryDirectory() as tmp:
    work = Path(tmp)
    ctx = BenchContext(
        dataset_dir=Path(uri), metrics_file=work / "metrics.jsonl", failure_file=work / "failure",
        stop_file=work / "stop", checkpoint_dir=work / "checkpoints", tracking_uri="", run_id="", device="cpu",
        hparams={"epochs": epochs, "batch_size": 64, "learning_rate": 1e-3, "hidden_size": 128, "dropout": 0.1,
                 "seed": 42},
    )
    train(ctx)
    lines = [json.loads(line)["metrics"] for line in ctx.metrics_file.read_text().splitlines()]
seconds = sum(m["epoch_seconds"] for m in lines)
figures = [[m["train_loss"], {k: m[k] for k in ("val_loss", "val_accuracy")}] for m in lines]
print(json.dumps({"seconds": seconds, "figures": figures, "code": __import__("workloads").__file__}))
"""


def write_dataset(root: Path, rows: int) -> str:
    """Digits tiled to ``rows`` rows (seeded noise), published as prepare publishes; returns its URI."""
    import numpy as np
    import pandas as pd
    from sklearn.datasets import load_digits

    from workloads.dataset import DatasetManifest, SplitFile, dataset_uri
    from workloads.store import ObjectStore, join

    digits = load_digits()
    rng = np.random.default_rng(0)
    pick = rng.integers(0, len(digits.target), rows)
    features = [f"pixel_{i}" for i in range(digits.data.shape[1])]
    noisy = digits.data[pick] + rng.normal(0.0, 1.0, (rows, digits.data.shape[1]))
    frame = pd.DataFrame(noisy.astype("float32"), columns=features)
    frame["label"] = digits.target[pick].astype("int64")
    cut_train, cut_val = int(rows * 0.7), int(rows * 0.85)
    parts = {"train": frame.iloc[:cut_train], "val": frame.iloc[cut_train:cut_val], "test": frame.iloc[cut_val:]}
    version = hashlib.sha256(pd.util.hash_pandas_object(frame).to_numpy().tobytes()).hexdigest()[:12]
    uri = dataset_uri(str(root), "digits-bench", version)
    store = ObjectStore()
    splits: dict[str, SplitFile] = {}
    for split, part in parts.items():
        buffer = io.BytesIO()
        part.to_parquet(buffer, index=False)
        data = buffer.getvalue()
        store.write_bytes(join(uri, f"{split}.parquet"), data)
        splits[split] = SplitFile(f"{split}.parquet", len(part), hashlib.sha256(data).hexdigest(), len(data))
    manifest = DatasetManifest(
        name="digits-bench",
        version=version,
        source_uri="sklearn.datasets.load_digits (tiled)",
        source_sha256="",
        source_bytes=0,
        source_format="sklearn",
        schema={"features": features, "label": "label", "labels": list(range(10)), "dtype": "float32"},
        parameters={"val_fraction": 0.15, "test_fraction": 0.15, "seed": 0, "drop_duplicates": False},
        rows={split: len(part) for split, part in parts.items()},
        class_balance={},
        splits=splits,
        duplicates={"found": 0, "dropped": 0, "examples": []},
        created_at=datetime.now(UTC).isoformat(),
        created_by="bench",
    )
    store.write_bytes(join(uri, "manifest.json"), manifest.to_json())
    return uri


def export(ref: str, folder: Path) -> Path:
    """The repository at ``ref`` as plain files (git archive: no worktree, nothing in .git changes)."""
    archive = subprocess.run(["git", "archive", ref], cwd=ROOT, check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    return folder


def measure(code: Path, uri: str, epochs: int, threads: int, driver: str = DRIVER) -> dict[str, Any]:
    """One fresh process training with the code in ``code``."""
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(
        [sys.executable, "-c", driver, uri, str(epochs), str(threads)],
        cwd=code,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if not result["code"].startswith(str(code)):
        raise RuntimeError(f"measured {result['code']}, not the code in {code}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref", default="main", help="git ref of the peer trainer (default main)")
    parser.add_argument("--rows", type=int, default=60000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--sdk", action="store_true", help="new side: the built-in MLP as an SDK trainer (workloads.trainer.entry)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-trainer-") as tmp:
        folder = Path(tmp)
        peer = export(args.ref, folder / "peer")
        uri = write_dataset(folder / "store", args.rows)
        times: dict[str, list[float]] = {"peer": [], "new": []}
        figures: dict[str, Any] = {}
        for repeat in range(args.repeats):
            sides = [("peer", peer), ("new", ROOT)]
            for side, code in sides if repeat % 2 == 0 else sides[::-1]:
                driver = SDK_DRIVER if args.sdk and side == "new" else DRIVER
                result = measure(code, uri, args.epochs, args.threads, driver)
                times[side].append(result["seconds"])
                figures[side] = result["figures"]
                print(f"repeat {repeat + 1} {side:4s} {result['seconds']:.3f}s", flush=True)
    peer_s, new_s = statistics.median(times["peer"]), statistics.median(times["new"])
    side_note = " (new: on the SDK)" if args.sdk else ""
    print(
        f"built-in trainer{side_note}, {args.rows} rows x {args.epochs} epochs, {args.repeats} repeats each: "
        f"peer ({args.ref}) median {peer_s:.3f}s, new median {new_s:.3f}s, ratio new/peer {new_s / peer_s:.3f}; "
        f"figures {'bit-identical' if figures['peer'] == figures['new'] else 'DIFFER'}"
    )


if __name__ == "__main__":
    main()
