"""Move numeric data between Arrow and numpy without copies and without pyarrow's pandas shim.

``Array.to_numpy()`` and ``pa.array(ndarray)`` import pandas on first use (about 35 MB of resident memory
for a module prepare never needs), so the hot paths here read Arrow buffers directly. Only fixed-width
numeric arrays are handled; values behind nulls are undefined and callers check nulls first.
"""

from __future__ import annotations

import ctypes
import sys

import numpy as np
import pyarrow as pa


def pool() -> pa.MemoryPool:
    """The Arrow memory pool for prepare's large buffers (parsed table, split copies): the system allocator.

    Measured on a million-row file, prepare's peak resident memory was about 40 MB lower with it than
    with Arrow's default pool (mimalloc), which held on to freed parse buffers. Passed explicitly to
    each call, so the process-wide default pool is left alone.
    """
    return pa.system_memory_pool()


def release_memory() -> None:
    """Hand memory freed to the system allocator back to the system, after a phase that freed a lot of it.

    ``pa.system_memory_pool().release_unused()`` leaves glibc's heaps as they are (measured after parsing a
    1M x 64 CSV: RSS 218 MB before and after it, 176 MB after glibc's ``malloc_trim(0)``), so glibc is asked
    directly; elsewhere the pool's own call.
    """
    if MALLOC_TRIM is not None:
        MALLOC_TRIM(0)
    else:
        pool().release_unused()


def _malloc_trim() -> ctypes._NamedFuncPointer | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc's; absent from musl
    except (OSError, AttributeError):
        return None


MALLOC_TRIM = _malloc_trim()


_DTYPES: dict[pa.DataType, np.dtype] = {
    pa.int8(): np.dtype(np.int8),
    pa.int16(): np.dtype(np.int16),
    pa.int32(): np.dtype(np.int32),
    pa.int64(): np.dtype(np.int64),
    pa.uint8(): np.dtype(np.uint8),
    pa.uint16(): np.dtype(np.uint16),
    pa.uint32(): np.dtype(np.uint32),
    pa.uint64(): np.dtype(np.uint64),
    pa.float32(): np.dtype(np.float32),
    pa.float64(): np.dtype(np.float64),
}


def numpy_dtype(kind: pa.DataType) -> np.dtype:
    """The numpy dtype of a fixed-width numeric Arrow type (``DataType.to_pandas_dtype`` imports pandas)."""
    try:
        return _DTYPES[kind]
    except KeyError:
        raise TypeError(f"not a fixed-width numeric Arrow type: {kind}") from None


def view(array: pa.Array) -> np.ndarray:
    """A read-only numpy view of a fixed-width numeric Arrow array (no copy)."""
    dtype = numpy_dtype(array.type)
    data = array.buffers()[1]
    if data is None or len(array) == 0:
        return np.empty(0, dtype=dtype)
    return np.frombuffer(data, dtype=dtype, count=len(array), offset=array.offset * dtype.itemsize)


def values(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """The whole column as one numpy array: a view for one chunk, one concatenated copy otherwise."""
    if isinstance(column, pa.Array):
        return view(column)
    chunks = [view(chunk) for chunk in column.chunks]
    if len(chunks) == 1:
        return chunks[0]
    if not chunks:
        return np.empty(0, dtype=numpy_dtype(column.type))
    return np.concatenate(chunks)


def indices(positions: np.ndarray) -> pa.Array:
    """Row positions as an Arrow int64 array for ``take``, sharing the numpy buffer."""
    data = np.ascontiguousarray(positions, dtype=np.int64)
    return pa.Array.from_buffers(pa.int64(), len(data), [None, pa.py_buffer(data)])


def mask(selected: np.ndarray) -> pa.BooleanArray:
    """A numpy bool array as an Arrow boolean array for ``filter`` (bit-packed, no pandas)."""
    bits = np.packbits(np.ascontiguousarray(selected, dtype=bool), bitorder="little")
    return pa.Array.from_buffers(pa.bool_(), len(selected), [None, pa.py_buffer(bits)])


def from_numpy(values: np.ndarray) -> pa.Array:
    """A contiguous numeric numpy array as an Arrow array sharing its buffer (``pa.array`` would import pandas)."""
    data = np.ascontiguousarray(values)
    kind = next(arrow for arrow, numpy in _DTYPES.items() if numpy == data.dtype)
    return pa.Array.from_buffers(kind, len(data), [None, pa.py_buffer(data)])
