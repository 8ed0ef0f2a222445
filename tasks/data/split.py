"""Deterministic stratified train/val/test split, independent of numpy's random streams.

Each row's place in the shuffle is a keyed hash of (seed, row number), so the same file and seed give the
same split on every machine and numpy version; each class is cut separately so every split keeps the
class balance of the whole file. Row ids come back sorted, which keeps the files in source order and
makes ``Table.take`` sequential.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SPLIT_NAMES: tuple[str, str, str] = ("train", "val", "test")

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def splitmix64(values: np.ndarray, *, inplace: bool = False) -> np.ndarray:
    """The splitmix64 finaliser: a fast, well-mixed 64-bit hash of each uint64 (vectorised).

    ``inplace=True`` reuses ``values`` (which must then be a uint64 array) instead of copying it.
    """
    z = values if inplace and values.dtype == np.uint64 else values.astype(np.uint64, copy=True)
    z += _GOLDEN
    z ^= z >> np.uint64(30)
    z *= np.uint64(0xBF58476D1CE4E5B9)
    z ^= z >> np.uint64(27)
    z *= np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return z


def allocate(rows: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """(train, val, test) rows for one class: fractions rounded half up, at least one row each for val/test."""
    val = max(1, int(rows * val_fraction + 0.5))
    test = max(1, int(rows * test_fraction + 0.5))
    return rows - val - test, val, test


def min_rows_per_class(val_fraction: float, test_fraction: float) -> int:
    """Fewest rows a class needs so that train, val and test each get at least one of them."""
    rows = 3
    while min(allocate(rows, val_fraction, test_fraction)) < 1:
        rows += 1
    return rows


def stratified_split(
    labels: np.ndarray,
    *,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    row_ids: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Row ids (int64, sorted) of train, val and test; every class split by the same fractions.

    ``labels[i]`` is the label of row ``row_ids[i]`` (default: ``i``). Classes must have at least
    :func:`min_rows_per_class` rows; validation checks that first and says which class is short.
    """
    labels = np.asarray(labels)
    ids = None if row_ids is None else np.asarray(row_ids, dtype=np.int64)
    if ids is not None and len(ids) != len(labels):
        raise ValueError(f"{len(labels)} labels for {len(ids)} row ids")
    salt = splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0]
    classes, order, bounds = _group_by_class(labels)
    code = np.zeros(len(labels), dtype=np.int8)  # 0 train, 1 val, 2 test
    for c, label in enumerate(classes):
        members = order[bounds[c] : bounds[c + 1]]  # positions in labels, ascending
        n_train, n_val, n_test = allocate(len(members), val_fraction, test_fraction)
        if n_train < 1:
            raise ValueError(f"class {label!r} has {len(members)} rows: too few to split")
        key = splitmix64((members if ids is None else ids[members]).astype(np.uint64) ^ salt, inplace=True)
        # The rows with the smallest keys go to test, the next ones to val: a seeded shuffle in O(n).
        ranked = members[np.argpartition(key, [n_test - 1, n_test + n_val - 1])]
        code[ranked[:n_test]] = 2
        code[ranked[n_test : n_test + n_val]] = 1
    out = {name: np.flatnonzero(code == k) for k, name in enumerate(SPLIT_NAMES)}
    if ids is not None:
        out = {name: ids[positions] for name, positions in out.items()}
        if len(ids) > 1 and not bool(np.all(ids[1:] > ids[:-1])):
            out = {name: np.sort(rows) for name, rows in out.items()}
    return out


def _group_by_class(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(classes, positions grouped by class in ascending order, group bounds) with few full-size temporaries.

    Small non-negative integer labels (the usual case) take a counting path: a stable sort of int16 is a
    radix sort, O(n); anything else goes through ``np.unique``.
    """
    if labels.size and np.issubdtype(labels.dtype, np.integer) and labels.min() >= 0 and labels.max() < 2**15:
        counts = np.bincount(labels)
        classes = np.flatnonzero(counts)
        order = np.argsort(labels.astype(np.int16), kind="stable")
        bounds = np.concatenate([[0], np.cumsum(counts[classes])])
        return classes, order, bounds
    classes, index = np.unique(labels, return_inverse=True)
    order = np.argsort(index, kind="stable")
    bounds = np.searchsorted(index[order], np.arange(len(classes) + 1))
    return classes, order, bounds


def class_counts(labels: np.ndarray, classes: Sequence[int]) -> dict[int, int]:
    """Rows per class, zero for a class that does not occur."""
    labels = np.asarray(labels)
    if labels.size and np.issubdtype(labels.dtype, np.integer) and labels.min() >= 0 and labels.max() < 2**16:
        counts = np.bincount(labels)  # small non-negative labels (the usual case): O(n), no sort
        found = {int(v): int(counts[v]) for v in np.flatnonzero(counts)}
    else:
        values, counts = np.unique(labels, return_counts=True)
        found = {int(v): int(c) for v, c in zip(values, counts, strict=True)}
    return {int(c): found.get(int(c), 0) for c in classes}
