"""The path search's loop over columns, compiled (:func:`ecgtrace.stages.trace.path.viterbi` prepares its arrays).

As numpy calls it was seven ufunc calls per column, 0.03-0.04 s for a 200 dpi row, four rows a page;
compiled by numba it is a few milliseconds. The operations and their order are those of that numpy
loop, so the paths are the same to the bit (tests/test_speed.py holds a reference); a NaN unary cost
counts as +inf.
"""

from __future__ import annotations

from collections.abc import Callable

import numba
import numpy as np


def _jit(fn: Callable) -> Callable:
    """``fn`` compiled on first call, the machine code kept in numba's cache for the next process."""
    try:
        return numba.njit(cache=True)(fn)
    except RuntimeError:  # no writable cache folder (a read-only install): compiled in each process
        return numba.njit(fn)


@_jit
def _least(D: np.ndarray, C: np.ndarray, sign: float, start: int, stop: int, d: int) -> tuple[float, int]:
    """The least ``D[k] + sign C[k]`` for k = start, start + d, ... before ``stop``, and its k (the first of
    equal minima in that order)."""
    best, at = D[start] + sign * C[start], start
    for k in range(start + d, stop, d):
        v = D[k] + sign * C[k]
        if v < best:
            best, at = v, k
    return best, at


@_jit
def _column_sums(step: np.ndarray, x: int, out: np.ndarray) -> None:
    """C of column ``x``: the running sum of ``step[:, x]`` down the column, in float64 (as ``np.cumsum``)."""
    acc = 0.0
    for y in range(step.shape[0]):
        acc += np.float64(step[y, x])
        out[y] = acc


@_jit
def viterbi_kernel(unary: np.ndarray, step: np.ndarray) -> np.ndarray:
    """The path's y per column through (Hb, n) ``unary`` and ``step`` costs (see ``path.viterbi``).

    The arrays are read a column at a time in place (the column's pixels stay in cache from one column
    to the next, no transposed copy); the costs so far are kept one column per row, for the way back."""
    hb, n = unary.shape
    cost = np.empty((n, hb))
    for y in range(hb):
        v = np.float64(unary[y, 0])
        cost[0, y] = np.inf if v != v else v  # a NaN cost: nowhere to pass
    C = np.empty(hb)
    fa = np.empty(hb)
    for x in range(1, n):
        _column_sums(step, x, C)
        D, out = cost[x - 1], cost[x]
        m = D[0] - C[0]  # predecessors above (y' <= y): the running min of D[y'] - C[y'], then + C[y]
        fa[0] = m + C[0]
        for y in range(1, hb):
            v = D[y] - C[y]
            m = v if v < m else m
            fa[y] = m + C[y]
        m = D[hb - 1] + C[hb - 1]  # predecessors below (y' >= y): the running min of D[y'] + C[y'], then - C[y]
        for y in range(hb - 1, -1, -1):
            v = D[y] + C[y]
            m = v if v < m else m
            b = m - C[y]
            a = fa[y]
            u = np.float64(unary[y, x])
            out[y] = (np.inf if u != u else u) + (a if a <= b else b)
    path = np.empty(n, dtype=np.int64)
    y = int(np.argmin(cost[n - 1]))  # the first of equal minima
    path[n - 1] = y
    for x in range(n - 1, 0, -1):
        _column_sums(step, x, C)
        D = cost[x - 1]
        # of equal predecessors the nearest on each side (the running minimum above keeps the last one), and
        # the one above on a tie between the sides
        a, ka = _least(D, C, -1.0, y, -1, -1)
        b, kb = _least(D, C, 1.0, y, hb, 1)
        c = C[y]
        y = ka if a + c <= b - c else kb
        path[x - 1] = y
    return path
