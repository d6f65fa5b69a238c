"""Path search: the minimum-cost (Viterbi) path of one trace row, and its sub-pixel centre line.

One dynamic-programming path per row, column by column from signal time 0 to 10 s. The cost of a
column is ``1 - p``; moving vertically between columns costs the *ink along the way*, so a steep
QRS stroke that is drawn costs almost nothing while jumping through white paper is expensive.
:func:`_subpixel` then reads one sub-pixel y per column: centroid on flat parts, run end-points
on extrema, run mid-points on strokes.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import cv2
import numpy as np

#: Ink level that counts as "on the trace" when measuring a column's ink run (thin anti-aliased
#: strokes rarely reach 0.5).
RUN_THRESHOLD = 0.4


@dataclass
class RowTrace:
    """The path of one row: columns, sub-pixel y, ink under the path."""

    key: str
    row: int
    x: np.ndarray  # (n,) float page x of each reading (pixel column + the classical reader's lag; a model: its scale)
    y: np.ndarray  # (n,) float sub-pixel y
    ink: np.ndarray  # (n,) trace probability under the path
    clipped: np.ndarray  # (n,) bool: the path touches the band edge (a peak left the band)


def true_runs(mask: np.ndarray) -> np.ndarray:
    """(k, 2) first and last index of each run of True in the 1-d ``mask``."""
    d = np.diff(np.concatenate([[0], np.asarray(mask).astype(np.int8), [0]]))
    return np.stack([np.flatnonzero(d == 1), np.flatnonzero(d == -1) - 1], axis=1)


def with_y(tr: RowTrace, y: np.ndarray) -> RowTrace:
    """``tr`` itself where ``y`` is its own reading, else a copy of it read at ``y`` (never changed in place)."""
    if np.array_equal(y, tr.y):
        return tr
    new = copy.copy(tr)
    new.y = y
    return new


def viterbi(unary: np.ndarray, step: np.ndarray) -> np.ndarray:
    """Minimum-cost path through a (Hb, n) cost image, one y per column.

    ``step[y, x]`` is the cost of passing pixel ``y`` of column ``x`` while moving
    vertically into that column. The min over predecessors of
    ``D[y'] + |C[y] - C[y']|`` (C = cumulative step cost) is computed in O(Hb) with
    two running minima, so the whole path is O(Hb * n), a loop compiled by numba
    (:mod:`~ecgtrace.stages.trace.path_kernel`). Only the costs are kept; the predecessor is
    found while tracing the path back (of equal predecessors, the nearest on each side, and
    the one above on a tie between the sides). A NaN cost counts as +inf.
    """
    from ecgtrace.stages.trace.path_kernel import viterbi_kernel  # numba: imported (0.3 s) on first use

    return viterbi_kernel(np.asarray(unary), np.asarray(step))


def _runs(prob_band: np.ndarray, path: np.ndarray, thr: float, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Sub-pixel top/bottom (ya, yb) of the ink run through the path point of every column.

    The run is grown from the path pixel (and across the span to the neighbours' path
    pixels, which the drawn stroke connects) while ink >= ``thr``, at most ``max_len`` px
    past that span; its ends are placed where the ink crosses ``thr`` (linear interpolation,
    in the band's own float type).
    """
    hb, n = prob_band.shape
    path = np.asarray(path, dtype=np.int64)
    cols = np.arange(n)
    prev = np.r_[path[:1] + 1, path[:-1] + 1]  # the first column has no neighbour: its span is its pixel
    lo = np.minimum(path, prev)
    hi = np.maximum(path, np.r_[path[:1] - 1, path[:-1] - 1])
    top = _grow(prob_band, lo, np.maximum(0, lo - max_len), -1, thr)
    bot = _grow(prob_band, hi, np.minimum(hb - 1, hi + max_len), 1, thr)
    ya, yb = top.astype(np.float64), bot.astype(np.float64)
    ft = prob_band.dtype.type
    # edge between top - 1 (below thr) and top; between bot and bot + 1
    c0, c1 = prob_band[np.maximum(top - 1, 0), cols], prob_band[top, cols]
    edge = (top > 0) & (c0 < thr) & (thr <= c1)
    ya[edge] = top[edge].astype(ft) - (c1[edge] - thr) / (c1[edge] - c0[edge])
    c0, c1 = prob_band[bot, cols], prob_band[np.minimum(bot + 1, hb - 1), cols]
    edge = (bot < hb - 1) & (c1 < thr) & (thr <= c0)
    yb[edge] = bot[edge].astype(ft) + (c0[edge] - thr) / (c0[edge] - c1[edge])
    return ya, yb


def _grow(prob_band: np.ndarray, start: np.ndarray, limit: np.ndarray, d: int, thr: float) -> np.ndarray:
    """Per column, ``start`` moved ``d`` (+-1) pixels at a time while the next pixel holds ink >= ``thr``,
    never past ``limit``: all columns a step at a time (most stop within the drawn line's width, and only
    the few on a steep stroke go on)."""
    pos = start.copy()
    idx = np.flatnonzero(pos != limit)
    while len(idx):
        idx = idx[prob_band[pos[idx] + d, idx] >= thr]
        pos[idx] += d
        idx = idx[pos[idx] != limit[idx]]
    return pos


def _zhang_suen_tables() -> np.ndarray:
    """(2, 256) uint8: 1 where Zhang-Suen's sub-iteration 0 / 1 removes a pixel whose 8 neighbours, read
    clockwise from the one above (p2, p3, ..., p9), are the bits 0..7 of the index."""
    nb = (np.arange(256)[:, None] >> np.arange(8)[None, :]) & 1 == 1
    p2, p4, p6, p8 = nb[:, 0], nb[:, 2], nb[:, 4], nb[:, 6]
    b = nb.sum(axis=1)  # neighbours set
    a = (~nb & np.roll(nb, -1, axis=1)).sum(axis=1)  # 0 -> 1 transitions around the ring
    keep = (b >= 2) & (b <= 6) & (a == 1)
    return np.stack([keep & ~(p2 & p4 & p6) & ~(p4 & p6 & p8),
                     keep & ~(p2 & p4 & p8) & ~(p2 & p6 & p8)]).astype(np.uint8)


_ZHANG_SUEN = _zhang_suen_tables()
#: the weight of each neighbour in the byte: p2 (above) bit 0, then clockwise to p9 (above left) bit 7
_NEIGHBOUR_BITS = np.array([[128, 1, 2], [64, 0, 4], [32, 16, 8]], np.float32)


def thin(mask: np.ndarray, max_iter: int = 20) -> np.ndarray:
    """Zhang-Suen thinning of a boolean mask: a 1-px 8-connected centre line.

    Each pixel's 8 neighbours are packed into one byte (a 3 x 3 filter of powers of two) and the rule
    of each sub-iteration is looked up in a 256-entry table: a few passes over the mask, not some forty."""
    m = np.ascontiguousarray(mask, dtype=np.uint8)
    for _ in range(max_iter):
        changed = False
        for table in _ZHANG_SUEN:
            code = cv2.filter2D(m, -1, _NEIGHBOUR_BITS, borderType=cv2.BORDER_CONSTANT)
            kill = cv2.bitwise_and(cv2.LUT(code, table), m)
            if cv2.countNonZero(kill):
                m = cv2.subtract(m, kill)
                changed = True
        if not changed:
            break
    return m.astype(bool)


def thin_touching(mask: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """:func:`thin` of the 8-connected parts of ``mask`` that hold a ``seeds`` pixel (False elsewhere).

    Thinning looks at a pixel's 8 neighbours only, which lie in its own part or are background,
    so each part thins alone: thinning just these, within their bounding box, gives exactly what
    thinning the whole mask gives on them, for a fraction of the area.
    """
    out = np.zeros(mask.shape, bool)
    if not seeds.any():
        return out
    _, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    keep = np.zeros(int(labels.max()) + 1, bool)
    keep[labels[seeds]] = True
    keep[0] = False
    part = keep[labels]
    rows, cols = np.flatnonzero(part.any(axis=1)), np.flatnonzero(part.any(axis=0))
    if not len(rows):
        return out
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    out[box] = thin(part[box])
    return out


def _subpixel(prob_band: np.ndarray, path: np.ndarray, radius: int, max_run: int) -> np.ndarray:
    """One float y per column of the trace centre line at the column's centre time.

    Short runs (the trace is ~horizontal): ink centroid around the path. Long runs
    (steep strokes): a column that peaks above both neighbours reads its run top
    (plus half the line width), a trough its bottom, a monotone stroke its midpoint.
    """
    hb, n = prob_band.shape
    ya, yb = _runs(prob_band, path, RUN_THRESHOLD, max_run)
    offs = np.arange(-radius, radius + 1)
    rows = np.clip(path[None, :] + offs[:, None], 0, hb - 1)
    wts = prob_band[rows, np.arange(n)[None, :]] ** 2
    sw = wts.sum(axis=0)
    cen = path + (wts * offs[:, None]).sum(axis=0) / np.maximum(sw, 1e-6)
    length = yb - ya
    short = length <= 2 * radius + 1
    # half the drawn line width, measured on the flat parts of this very trace
    hw = float(np.median(length[short])) / 2 if short.sum() > 10 else 1.0
    mid = 0.5 * (ya + yb)
    mp = np.concatenate([mid[:1], mid[:-1]])
    mn = np.concatenate([mid[1:], mid[-1:]])
    peak = (mp > mid) & (mn > mid)  # image y grows downwards: a peak has larger y either side
    trough = (mp < mid) & (mn < mid)
    y = np.where(peak, ya + hw, np.where(trough, yb - hw, mid))
    # where a skeleton exists inside the run, its extent is the centre line's own span in this
    # column (the line width no longer bleeds in from the neighbouring columns of a sharp peak)
    # (read in the long-run columns and their neighbours only: thin just the ink that reaches into them)
    yy = np.arange(hb, dtype=np.float64)[:, None]
    span = (yy >= np.floor(ya)[None, :]) & (yy <= np.ceil(yb)[None, :])
    ink = prob_band >= RUN_THRESHOLD
    used = ~short
    used = used | np.r_[used[1:], False] | np.r_[False, used[:-1]]
    inrun = thin_touching(ink, ink & span & used[None, :]) & span
    has = inrun.any(axis=0)
    # the first and last skeleton row of each column that has one (0 elsewhere)
    st = np.where(has, inrun.argmax(axis=0), 0).astype(np.float64)
    sb = np.where(has, hb - 1 - inrun[::-1].argmax(axis=0), 0).astype(np.float64)
    sm = 0.5 * (st + sb)
    smp = np.concatenate([sm[:1], sm[:-1]])
    smn = np.concatenate([sm[1:], sm[-1:]])
    speak = (smp > sm) & (smn > sm)
    strough = (smp < sm) & (smn < sm)
    ys = np.where(speak, st, np.where(strough, sb, sm))
    y = np.where(has & ~short, ys, y)
    y = np.where(short & (sw > 1e-3), cen, y)
    return np.clip(y, 0, hb - 1)
