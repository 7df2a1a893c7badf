"""`read_event_arrays` scatters each Arrow chunk of the vector column straight into one
matrix in (time, id) order; these pin that against a plain concat-and-gather."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pertinent.stores.lancedb import _rows_in_order

DIM = 4


def _column(sizes: list[int], *, sliced: bool = False) -> tuple[pa.ChunkedArray, np.ndarray]:
    """A chunked FixedSizeList column of `sizes` rows per chunk, and its rows as a matrix."""
    rows = np.arange(sum(sizes) * DIM, dtype=np.float32).reshape(-1, DIM)
    chunks, start = [], 0
    for n in sizes:
        part = rows[start : start + n]
        if sliced:  # a chunk that is a view into a larger array (non-zero offset)
            padded = np.vstack([np.full((2, DIM), -1, np.float32), part])
            arr = pa.FixedSizeListArray.from_arrays(pa.array(padded.reshape(-1)), DIM)[2:]
        else:
            arr = pa.FixedSizeListArray.from_arrays(pa.array(part.reshape(-1)), DIM)
        chunks.append(arr)
        start += n
    return pa.chunked_array(chunks, type=pa.list_(pa.float32(), DIM)), rows


@pytest.mark.parametrize("sliced", [False, True])
@pytest.mark.parametrize("sizes", [[5], [3, 0, 4], [1, 1, 1, 1, 2]])
def test_rows_land_where_the_order_puts_them(sizes: list[int], sliced: bool) -> None:
    column, rows = _column(sizes, sliced=sliced)
    n = len(rows)
    for order in (np.arange(n), np.random.default_rng(n).permutation(n), np.arange(n)[::-1]):
        got = _rows_in_order(column, np.ascontiguousarray(order), DIM)
        assert got.dtype == np.float32 and got.shape == (n, DIM)
        np.testing.assert_array_equal(got, rows[order])


def test_an_empty_log_is_an_empty_matrix() -> None:
    column, _ = _column([0])
    got = _rows_in_order(column, np.zeros(0, dtype=np.int64), DIM)
    assert got.shape == (0, DIM)
