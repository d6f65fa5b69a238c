"""The columns beside a lead switch, where a mark (ECG-Image-Kit's bar, a cart's tick) hides the trace.

At each switch of the three lead rows the old lead ends and the next begins at one column, and
many renderers draw a vertical mark there. The ink map has the mark in-painted (see
:func:`~ecgtrace.stages.trace.ink.mask_furniture`), so the path crosses those columns on ghost
ink: on ECG-Image-Kit's clean pages it ran flat through the last 20 ms of the old lead and missed
a QRS that began at the switch, and a lead's first and last 40 ms held most of a page's error.
:func:`read_beside_switch_marks` reads those columns again on the page's own ink (the map before
in-painting): from a column well beside the mark it follows the stroke toward the mark, column
by column, and where the mark's run hides the trace it carries the stroke's line on: inside the
mark's span, or, where the line leaves the span and the mark's run reaches past it on that side
(the stroke touching the mark), as far as the run reaches.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ecgtrace import paper
from ecgtrace.paper import Page
from ecgtrace.stages.trace.path import RUN_THRESHOLD, RowTrace, true_runs, with_y


@dataclass(frozen=True)
class SwitchMarkParams:
    """Where a mark is looked for beside a switch, and how far the stroke is followed toward it."""

    reach_mm: float = 0.8  # a mark's columns lie within this of the switch
    reread_mm: float = 1.5  # columns within this of the switch are read again, following the stroke
    gap_mm: float = 0.15  # ink gaps up to this long (a grid line in-painted across a stroke) do not split a run
    mark_half_mv: float = 0.25  # a run covering the baseline +- this is a mark's (or hides one)
    beyond_mv: float = 0.1  # a mark's run this far past its span, on the stroke's side, is the stroke touching it
    max_jump_mv: float = 0.3  # a stroke not joined to the last column's run is followed only this far


def _is_mark(run: np.ndarray, base: float, half_px: float) -> bool:
    return bool(run[0] <= base - half_px and run[1] >= base + half_px)


def _mark_columns(runs_at: list[np.ndarray], near_x: np.ndarray, base: float, half: float,
                  tol: float) -> tuple[int, float, float] | None:
    """(first mark column in walk order, mark top, mark bottom); None where no mark is drawn.

    The mark is the run across the baseline in the column nearest the switch, and it runs on through
    the neighbouring columns whose run across the baseline ends where it does at one end at least (a
    bar keeps its height in each of its columns, though a stroke joining it lengthens it at the other
    end; a QRS stroke that crosses the baseline has no such end). Its span is the shortest of those
    runs at each end: the bar's own, wherever one of its columns is free of the trace.
    """
    k0 = int(np.argmin(near_x))
    mark = next((q for q in runs_at[k0] if _is_mark(q, base, half)), None)
    if mark is None:
        return None
    first, top, bot = k0, float(mark[0]), float(mark[1])
    for k in range(k0 - 1, -1, -1):
        q = next((q for q in runs_at[k] if _is_mark(q, base, half)
                  and (abs(q[0] - mark[0]) <= tol or abs(q[1] - mark[1]) <= tol)), None)
        if q is None:
            break
        first, top, bot = k, max(top, float(q[0])), min(bot, float(q[1]))
    return first, top, bot


def read_beside_switch_marks(rows: dict[str, RowTrace], raw: np.ndarray, page: Page,
                             params: SwitchMarkParams | None = None) -> dict[str, RowTrace]:
    """Rows whose columns beside each marked lead switch are read again on ``raw``, the page's own ink.

    ``raw``: the trace-ink map before furniture in-painting, at ``page``'s resolution (the rows'
    px). A switch with no mark (a gap, or a renderer that draws none) is left as it was. Rows are
    copied, never changed in place.
    """
    p = params or SwitchMarkParams()
    mv = page.px_per_mv
    g = max(1, int(round(p.gap_mm * page.px_per_mm)))
    ink = cv2.morphologyEx((raw >= RUN_THRESHOLD).astype(np.uint8), cv2.MORPH_CLOSE, np.ones((2 * g + 1, 1), np.uint8)) > 0
    reach, reread = p.reach_mm * page.px_per_mm, p.reread_mm * page.px_per_mm
    out = {}
    for key, tr in rows.items():
        if tr.row >= paper.N_ROWS - 1 or len(tr.x) < 4:  # the rhythm strip has no switch
            out[key] = tr
            continue
        base = page.baseline_y(tr.row)
        x = np.asarray(tr.x, np.float64)
        y = np.array(tr.y, dtype=np.float64)
        for c in range(1, paper.N_COLUMNS):
            xb = page.column_x(c)
            for side in (-1, 1):
                near = (x - xb) * side
                # the new lead starts at the switch column itself; the old one ends just before it
                idx = np.flatnonzero((near >= 0) & (near <= reread)) if side > 0 else \
                    np.flatnonzero((near > 0) & (near <= reread))
                if idx.size < 4:
                    continue
                idx = idx[np.argsort(-near[idx])]  # from the far column toward the mark
                _walk(idx, x, y, ink, base, mv, reach, xb, p)
        out[key] = with_y(tr, y)
    return out


def _walk(idx: np.ndarray, x: np.ndarray, y: np.ndarray, ink: np.ndarray, base: float, mv: float,
          reach: float, xb: float, p: SwitchMarkParams) -> None:
    """Follow the stroke from column ``idx[0]`` toward the mark; fill the columns it hides. Changes ``y``."""
    half = p.mark_half_mv * mv
    w = ink.shape[1]
    runs_at = [true_runs(ink[:, int(np.clip(round(x[i]), 0, w - 1))]) for i in idx]
    near_x = np.abs(x[idx] - xb)
    found = _mark_columns(runs_at, near_x, base, half, tol=1.0 + 0.05 * mv)
    if found is None or near_x[found[0]] > reach:
        return  # no mark drawn at this switch (or none that looks like one)
    first_mark, top, bot = found
    prev = None  # the run followed in the last column
    read: list[tuple[float, float]] = []  # (x, y) of the columns followed
    k = 0
    for k in range(len(idx)):
        i, runs = idx[k], runs_at[k]
        if k >= first_mark:  # beside the mark only ink clear of its span can be followed
            runs = [q for q in runs if q[1] < top - 1 or q[0] > bot + 1]
        if prev is None:
            hit = [q for q in runs if q[0] - 1 <= y[i] <= q[1] + 1]
        else:
            hit = [q for q in runs if q[0] <= prev[1] + 1 and q[1] >= prev[0] - 1]  # joined to the last run
            if not hit and k < first_mark:  # beside the mark a stroke is whole; a label's corner is not it
                hit = [q for q in runs if min(abs(q[0] - read[-1][1]), abs(q[1] - read[-1][1])) <= p.max_jump_mv * mv]
        if not hit:
            if k < first_mark:
                return  # the stroke is lost before the mark: the columns from here keep the path's readings
            break  # the mark hides the stroke from here on
        q = min(hit, key=lambda r: abs(0.5 * (r[0] + r[1]) - (read[-1][1] if read else float(y[i]))))
        y[i] = 0.5 * (q[0] + q[1])
        read.append((float(x[i]), float(y[i])))
        prev = q
    else:
        return  # followed to the switch
    if len(read) < 2:
        return
    (xa, ya), (xz, yz) = read[-2], read[-1]
    slope = (yz - ya) / (xz - xa) if xz != xa else 0.0
    for j in range(k, len(idx)):
        i = idx[j]
        line = yz + slope * (x[i] - xz)
        run = next((q for q in runs_at[j] if q[0] <= bot and q[1] >= top), None)  # the mark's run here
        if run is not None and line < top and top - run[0] > p.beyond_mv * mv:
            y[i] = max(line, run[0] + 1.0)  # the stroke meets the mark from above, where the run reaches
        elif run is not None and line > bot and run[1] - bot > p.beyond_mv * mv:
            y[i] = min(line, run[1] - 1.0)
        else:
            y[i] = float(np.clip(line, top, bot))
