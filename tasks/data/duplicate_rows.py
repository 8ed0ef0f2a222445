"""Rows identical to an earlier row in every column, found in two passes: a 64-bit hash per row (FNV-style over
the value bits, then splitmix64), then an exact byte comparison of the rows whose hash occurs more than once, so
a hash collision is resolved, never trusted. -0.0 and 0.0 count as equal (they compare equal).

The schema path (:mod:`tasks.data.validation`) hashes its features in the same pass that checks them; a
dataset spec's table, with nulls and mixed column types, is hashed here by :func:`table_repeats`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.data import arrays
from tasks.data.split import splitmix64

FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = np.uint64(0x100000001B3)


def repeated_rows(hashes: np.ndarray, records: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(rows, the earlier row each repeats), 0-based. ``records(candidates)`` gives the exact bytes of the
    candidate rows, one uint8 row each, for the rows whose hash occurs more than once."""
    ordered = np.sort(hashes)
    repeated_hashes = ordered[1:][ordered[1:] == ordered[:-1]]
    del ordered
    if len(repeated_hashes) == 0:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty
    candidates = np.flatnonzero(np.isin(hashes, repeated_hashes)).astype(np.int64)
    record = np.ascontiguousarray(records(candidates))
    keys = record.view(np.dtype((np.void, record.shape[1]))).ravel()
    _, first_index, inverse = np.unique(keys, return_index=True, return_inverse=True)
    first = candidates[first_index[inverse.ravel()]]
    again = first != candidates
    return candidates[again], first[again]


def table_repeats(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """:func:`repeated_rows` over every column of ``table`` (nulls included: a null equals a null)."""
    columns = [bits for column in table.columns for bits in _column_bits(column.combine_chunks())]
    hashes = _hash_bits(columns, table.num_rows)
    return repeated_rows(
        hashes,
        lambda rows: np.concatenate([bits[rows].view(np.uint8).reshape(len(rows), -1) for bits in columns], axis=1),
    )


def row_hashes(table: pa.Table) -> np.ndarray:
    """One well-mixed 64-bit hash per row over every column (nulls included), as :func:`table_repeats` uses."""
    return _hash_bits(
        [bits for column in table.columns for bits in _column_bits(column.combine_chunks())], table.num_rows
    )


def _hash_bits(columns: list[np.ndarray], rows: int) -> np.ndarray:
    hashes = np.full(rows, FNV_OFFSET, dtype=np.uint64)
    for bits in columns:
        hashes ^= bits.astype(np.uint64, copy=False)
        hashes *= FNV_PRIME
    return splitmix64(hashes, inplace=True)


class SeenRows:
    """Rows met so far, as (64-bit row hash, row id): 16 bytes a distinct row, for an input read batch by batch.

    Kept as sorted runs, merged while small (like a log-structured merge tree), so adding a batch and looking it
    up cost O(batch * log rows) and no merge ever copies more than :data:`RUN_CAP` entries. Unlike
    :func:`table_repeats` a hash match is trusted (the earlier row is gone): two distinct rows collide with
    probability about rows^2 / 2^65 (3e-6 at ten million rows).
    """

    RUN_CAP = 4_000_000

    def __init__(self) -> None:
        self.runs: list[tuple[np.ndarray, np.ndarray]] = []

    def add(self, hashes: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """The row id each row repeats (its own id when it is new), and remember the new ones."""
        unique, first_index, inverse = np.unique(hashes, return_index=True, return_inverse=True)
        first = rows[first_index]  # earliest row of each distinct hash within the batch
        for run_hashes, run_rows in self.runs:  # oldest first: the earliest match wins, runs never overlap
            at = np.searchsorted(run_hashes, unique)
            at[at == len(run_hashes)] = 0
            found = run_hashes[at] == unique
            first = np.where(found & (first == rows[first_index]), run_rows[at], first)
        new = first == rows[first_index]
        self._push(unique[new], first[new])
        return first[inverse.ravel()]

    def _push(self, hashes: np.ndarray, rows: np.ndarray) -> None:
        self.runs.append((hashes, rows))
        while len(self.runs) > 1:
            (h1, r1), (h2, r2) = self.runs[-2], self.runs[-1]
            if len(h1) > 2 * len(h2) or len(h1) + len(h2) > self.RUN_CAP:
                break
            merged = np.concatenate([h1, h2])
            order = np.argsort(merged, kind="stable")
            self.runs[-2:] = [(merged[order], np.concatenate([r1, r2])[order])]

    @property
    def count(self) -> int:
        return sum(len(h) for h, _ in self.runs)


def _column_bits(array: pa.Array) -> list[np.ndarray]:
    """A column's values as unsigned integers (nulls as 0, -0.0 as 0.0), plus a 0/1 null flag when it has nulls."""
    filled = pc.fill_null(array, pa.scalar(0, array.type)) if array.null_count else array
    values = arrays.view(filled)
    if values.dtype.kind == "f":
        values = values + values.dtype.type(0)  # -0.0 == 0.0
    out = [values.view(np.dtype(f"u{values.dtype.itemsize}"))]
    if array.null_count:
        out.append(np.asarray(array.is_null().to_pylist(), dtype=np.uint8))
    return out
