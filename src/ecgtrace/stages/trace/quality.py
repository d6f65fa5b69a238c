"""Quality flags: per lead, whether the row path read a trace ("ok") or why not."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from ecgtrace import paper
from ecgtrace.paper import LAYOUT_3X4, N_ROWS, RHYTHM_KEY, ROW_KEYS, Page
from ecgtrace.stages.trace.params import ClassicalParams
from ecgtrace.stages.trace.path import RowTrace


class RowPaths(Protocol):
    """Anything holding per-row paths (a :class:`~ecgtrace.stages.trace_classical.ClassicalResult`)."""

    rows: dict[str, RowTrace]


def _foreign_columns(res: RowPaths, page: Page, tol_mm: float = 0.4) -> dict[int, np.ndarray]:
    """Per row: the columns where its path runs on the same ink as another row's path, nearer that row's baseline.

    When a page is read one row off (a layout the geometry does not expect, a picture stage 1
    mis-registered) two rows end up on one trace; the row it belongs to less is not read.
    """
    out = {r: np.zeros(len(res.rows[ROW_KEYS[r]].x), bool) for r in range(N_ROWS) if ROW_KEYS[r] in res.rows}
    tol = tol_mm * page.px_per_mm
    for r in out:
        a = res.rows[ROW_KEYS[r]]
        for q in out:
            b = res.rows[ROW_KEYS[q]]
            if q == r or len(b.x) != len(a.x):
                continue
            same = np.abs(a.y - b.y) <= tol
            nearer_q = np.abs(a.y - page.baseline_y(q)) < np.abs(a.y - page.baseline_y(r))
            out[r] |= same & nearer_q
    return out


def quality_flags(res: RowPaths, page: Page, params: ClassicalParams | None = None) -> dict[str, str]:
    """Per lead: "ok", or a short reason (weak/missing trace, another row's trace, wandering path, clipped peaks)."""
    p = params or ClassicalParams()
    flags: dict[str, str] = {}
    foreign = _foreign_columns(res, page)
    for r in range(N_ROWS):
        tr = res.rows[ROW_KEYS[r]]
        t = page.x_to_time(tr.x.astype(np.float64))
        leads = (paper.RHYTHM_LEAD,) if r == N_ROWS - 1 else LAYOUT_3X4[r]
        row_mv = page.y_to_mv(r, tr.y)
        row_mad = float(np.median(np.abs(row_mv - np.median(row_mv)))) if len(row_mv) else 0.0
        for lead in leads:
            if r < N_ROWS - 1 and lead == paper.RHYTHM_LEAD and RHYTHM_KEY in res.rows:
                continue
            t0, t1 = (0.0, paper.DURATION_S) if r == N_ROWS - 1 else paper.lead_window(lead)
            m = (t >= t0) & (t < t1)
            if not m.any():
                flags[lead] = "no columns"
                continue
            weak = float(np.mean(tr.ink[m] < p.weak_ink))
            clip = float(np.mean(tr.clipped[m]))
            # an ECG trace spends most of its time near its isoelectric line; a path that follows
            # random strokes (a photo that is not an ECG) wanders far from its median
            mv = page.y_to_mv(r, tr.y[m])
            mad = max(float(np.median(np.abs(mv - np.median(mv)))), row_mad)
            shared = float(np.mean(foreign[r][m]))
            if shared > 0.5:
                flags[lead] = f"no trace found (the path follows another row's trace in {shared:.0%} of columns)"
            elif mad > p.max_wander_mv:
                flags[lead] = f"no trace found (path wanders {mad:.1f} mV around its median)"
            elif weak > 0.5:
                flags[lead] = f"no trace found ({weak:.0%} of columns without ink)"
            elif weak > 0.15:
                flags[lead] = f"weak trace ({weak:.0%} of columns without ink)"
            elif clip > 0.01:
                flags[lead] = f"clipped ({clip:.0%} of columns at the band edge)"
            else:
                flags[lead] = "ok"
    return {lead: flags[lead] for lead in paper.LEADS if lead in flags}
