"""The bundled demo: scikit-learn's digits (no download) as a raw CSV, and the schema that describes it.

``gpuflow run`` works out of the box because ``data_uri="demo"`` writes this CSV under
``<store>/raw/digits.csv`` once and prepares it like any user file.
"""

from __future__ import annotations

import io

import numpy as np

from tasks.data.schema import DatasetSchema
from workloads.store import ObjectStore, join

DEMO = "demo"
DEMO_RELATIVE = "raw/digits.csv"
PIXELS = 64


def digits_schema() -> DatasetSchema:
    """8x8 grey-level digits: ``pixel_0..pixel_63`` in [0, 16], label ``label`` in 0..9."""
    return DatasetSchema(
        features=tuple(f"pixel_{i}" for i in range(PIXELS)),
        label="label",
        labels=tuple(range(10)),
        dtype="float32",
        value_range=(0.0, 16.0),
    )


def digits_csv_bytes() -> bytes:
    """The 1,797 digits as CSV text: a header, then one row per image (integers, as in the original)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    matrix = np.column_stack([digits.data.astype(np.int64), digits.target.astype(np.int64)])
    out = io.StringIO()
    out.write(",".join([*digits_schema().features, "label"]) + "\n")
    np.savetxt(out, matrix, fmt="%d", delimiter=",")
    return out.getvalue().encode()


def write_digits_csv(uri: str, store: ObjectStore) -> int:
    """Write the digits CSV to ``uri`` (path, file:// or s3://) atomically; returns the number of rows."""
    data = digits_csv_bytes()
    store.write_bytes(uri, data)
    return data.count(b"\n") - 1


def demo_uri(root: str) -> str:
    return join(root, DEMO_RELATIVE)


def resolve_data_uri(data_uri: str, root: str, store: ObjectStore) -> str:
    """``"demo"`` becomes ``<root>/raw/digits.csv`` (written only if absent); anything else is returned as is."""
    if data_uri.strip() != DEMO:
        return data_uri
    uri = demo_uri(root)
    if not store.exists(uri):
        write_digits_csv(uri, store)
    return uri
