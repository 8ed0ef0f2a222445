"""What ``gpuflow trainer check`` trains on and logs into: a small sample of a prepared dataset and a throwaway run.

The sample is the first N rows of each split, published in the prepared-dataset layout with the same manifest
(rows, checksums and sizes fixed, so the launcher's and the SDK's sha256 checks pass); the MLflow store is
SQLite in the same temporary folder. Nothing here touches the user's store or tracking server.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.core.errors import DataNotFoundError
from workloads.dataset import (
    MANIFEST,
    DatasetCorrupt,
    DatasetManifest,
    DatasetNotFound,
    SplitFile,
    dataset_uri,
    load_manifest,
    read_split_table,
)
from workloads.store import ObjectStore, StoreError


def sample_dataset(uri: str, rows: int, root: Path, store: ObjectStore) -> tuple[str, DatasetManifest]:
    """Write the first ``rows`` rows of each split of the dataset at ``uri`` under ``root``: its folder, and the
    original manifest."""
    try:
        manifest = load_manifest(uri, store)
        tables = {split: read_split_table(uri, split, store, manifest=manifest) for split in manifest.splits}
    except (DatasetNotFound, DatasetCorrupt) as exc:
        raise DataNotFoundError(f"{exc} (--dataset takes a prepared dataset folder, as `gpuflow run` prints)") from exc
    except StoreError as exc:
        raise DataNotFoundError(f"could not read the dataset at {uri}: {exc}") from exc
    folder = Path(dataset_uri(str(root), manifest.name, manifest.version))
    folder.mkdir(parents=True)
    splits: dict[str, SplitFile] = {}
    balance: dict[str, dict[str, int]] = {}
    for split, full in tables.items():
        table = full.slice(0, rows)
        if manifest.class_balance:
            counts = pc.value_counts(table.column(manifest.label)).to_pylist()
            balance[split] = {str(c["values"]): int(c["counts"]) for c in counts}
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        data = buffer.getvalue()
        entry = manifest.splits[split]
        (folder / entry.file).write_bytes(data)
        splits[split] = SplitFile(entry.file, table.num_rows, hashlib.sha256(data).hexdigest(), len(data))
    sample = dataclasses.replace(
        manifest, rows={split: entry.rows for split, entry in splits.items()}, splits=splits, class_balance=balance
    )
    (folder / MANIFEST).write_bytes(sample.to_json())  # last, as prepare publishes
    return str(folder), manifest


def scratch_run(folder: Path) -> tuple[str, str]:
    """A new SQLite MLflow store in ``folder`` with one experiment and one run: (tracking URI, run id)."""
    from mlflow import MlflowClient

    tracking_uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("gpuflow-trainer-check", artifact_location=(folder / "artifacts").as_uri())
    return tracking_uri, client.create_run(experiment, run_name="trainer-check").info.run_id
