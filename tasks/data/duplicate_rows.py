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
    hashes = np.full(table.num_rows, FNV_OFFSET, dtype=np.uint64)
    for bits in columns:
        hashes ^= bits.astype(np.uint64, copy=False)
        hashes *= FNV_PRIME
    hashes = splitmix64(hashes, inplace=True)
    return repeated_rows(
        hashes,
        lambda rows: np.concatenate([bits[rows].view(np.uint8).reshape(len(rows), -1) for bits in columns], axis=1),
    )


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
