"""Lead cutting: row paths to (time, mV), then each lead's window resampled to the record's ``fs``."""

from __future__ import annotations

import numpy as np
from scipy.signal import resample

from ecgtrace import paper
from ecgtrace.paper import LAYOUT_3X4, RHYTHM_KEY, ROW_KEYS, Page
from ecgtrace.stages.trace.path import RowTrace

#: Columns left out at a lead's window edge where a jump sits (see :func:`cut_leads`).
EDGE_COLUMNS = 1.0
#: How far (mV) :func:`carry_start` may carry a row's first value back along the stroke. On ECG-Image-Kit's
#: pages 0.3 mV lifted aug by 0.39 dB and wrinkle by 0.66 dB (0.5 and 1.0 lifted less and lost on clean and
#: header pages); carrying the other window ends (at the lead switches) gained nothing there and lost
#: 0.9 dB on our own pages.
START_CARRY_MV = 0.3


def row_values(tr: RowTrace, page: Page, pen_offset_px: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(time s, mV) of every path column of a row.

    ``pen_offset_px``: where the drawn line sits relative to the true one, in this page's px
    (see :data:`ecgtrace.paper.PEN_OFFSET_PX`); subtracted from both x and y.
    """
    x = tr.x.astype(np.float64) - pen_offset_px
    return page.x_to_time(x), page.y_to_mv(tr.row, np.asarray(tr.y, dtype=np.float64) - pen_offset_px)


def lead_indices(lead: str, fs: float, sig_len: int | None = None) -> tuple[int, int]:
    """Sample range [i0, i1) of ``lead`` in a 10 s record at ``fs`` (competition rule; II = full record)."""
    n = int(round(paper.DURATION_S * fs)) if sig_len is None else int(sig_len)
    return paper.csv_rows(paper.RHYTHM_LEAD if lead == RHYTHM_KEY else lead, fs, n)


def uniform_columns(t: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(t, v)`` on evenly spaced times (the finest common step), interpolated where the steps differ.

    A fused row joins readers that sample it at different steps (the network at its 100 dpi page,
    the classical reader at the page's own pixels); the band-limited resampling below reads sample
    ``k`` at ``t[0] + k * dt``, so uneven steps would stretch time between the joins.
    """
    d = np.diff(t)
    pos = d[d > 0]
    if pos.size == 0 or d.max() - d.min() <= 1e-6 * pos.max():
        return t, v
    step = float(np.percentile(pos, 10))  # the finer reader's step (a join's odd step is one column)
    k = int(np.floor((t[-1] - t[0]) / step + 1e-9))
    tu = t[0] + np.arange(k + 1) * step
    return tu, np.interp(tu, t, v)


def resample_window(t: np.ndarray, v: np.ndarray, t0: float, fs: float, n: int, oversample: int = 8) -> np.ndarray:
    """Values at ``t0 + k / fs`` (k < n) from column samples ``(t, v)`` (evened by :func:`uniform_columns`).

    Band-limited: the column samples are FFT-upsampled ``oversample`` times (after
    removing the end-to-end line and mirroring, so the periodic FFT sees no jump),
    then read off by linear interpolation on the fine grid.
    """
    t = np.asarray(t, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    tq = t0 + np.arange(n) / float(fs)
    if len(t) < 4:
        return np.interp(tq, t, v) if len(t) else np.zeros(n)
    t, v = uniform_columns(t, v)
    dt = (t[-1] - t[0]) / (len(t) - 1)
    line = v[0] + (v[-1] - v[0]) * (t - t[0]) / (t[-1] - t[0])
    r = v - line
    m = len(r)
    sym = np.concatenate([r, -r[::-1][1:-1]])  # odd mirror: continuous, zero at the ends
    fine = resample(sym, len(sym) * oversample)[: (m - 1) * oversample + 1]
    tf = t[0] + np.arange(len(fine)) * dt / oversample
    lf = v[0] + (v[-1] - v[0]) * (tf - t[0]) / (t[-1] - t[0])
    return np.interp(tq, tf, fine + lf)


def carry_start(t: np.ndarray, v: np.ndarray, ta: float,
                max_mv: float = START_CARRY_MV) -> tuple[np.ndarray, np.ndarray]:
    """Column samples ``(t, v)`` with one point added at ``ta``, on the line of the first two columns.

    A row's first columns are left out (the calibration pulse's edge sits there), so its first lead's
    first samples lie up to two columns before the kept ones. Held flat (as interpolation holds
    them), they lag a steep stroke leaving the pulse; carried back on the stroke's line, at most
    ``max_mv`` from the first kept value, they follow it. Nothing is added when ``t`` starts at ``ta``.
    """
    if len(t) < 3 or ta >= t[0] - 0.5 * float(t[1] - t[0]):
        return t, v
    lift = (v[1] - v[0]) / max(float(t[1] - t[0]), 1e-9) * (ta - t[0])
    return np.r_[ta, t], np.r_[v[0] + np.clip(lift, -max_mv, max_mv), v]


def cut_leads(rows: dict[str, tuple[np.ndarray, np.ndarray]], fs: float,
              n_samples: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """Cut row signals ``{row key: (t, mV)}`` into the 12 leads, each resampled to its own window at ``fs``.

    Lead ``L`` gets the samples ``i0 .. i1-1`` of :func:`lead_indices` (times ``i / fs``), so
    its length is what the competition files hold (2.5 s windows can differ by one
    sample at fs = 1025); ``n_samples[L]`` overrides the length (``number_of_rows``).
    Lead II comes from the rhythm strip when present (10 s), else from row 1.
    """
    out: dict[str, np.ndarray] = {}
    for r, leads in enumerate(LAYOUT_3X4):
        key = ROW_KEYS[r]
        if key not in rows:
            continue
        t, v = rows[key]
        for lead in leads:
            if lead == paper.RHYTHM_LEAD and RHYTHM_KEY in rows:
                continue
            t0, t1 = paper.lead_window(lead)
            i0, i1 = lead_indices(lead if lead != paper.RHYTHM_LEAD else "I", fs)
            n = int((n_samples or {}).get(lead) or (i1 - i0))
            # stay EDGE_COLUMNS inside the window where a neighbour's jump sits on its edge (the
            # calibration pulse before the first column, the next lead after); the last column's
            # leads end with the trace itself, so they are read to the end (a QRS there is kept)
            eps = EDGE_COLUMNS * float(t[1] - t[0]) if len(t) > 1 else 0.0
            m = (t >= t0 + eps) & (t <= (t1 - eps if t1 < paper.DURATION_S else t1))
            tm, vm = carry_start(t[m], v[m], i0 / fs) if t0 == 0.0 else (t[m], v[m])  # past the pulse edge
            out[lead] = resample_window(tm, vm, i0 / fs, fs, n)
    if RHYTHM_KEY in rows:
        t, v = rows[RHYTHM_KEY]
        i0, i1 = lead_indices(RHYTHM_KEY, fs)
        n = int((n_samples or {}).get(paper.RHYTHM_LEAD) or (i1 - i0))
        m = (t >= 0) & (t <= paper.DURATION_S)
        out[paper.RHYTHM_LEAD] = resample_window(t[m], v[m], 0.0, fs, n)
    return {lead: out[lead] for lead in paper.LEADS if lead in out}
