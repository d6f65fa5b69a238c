"""Classical stage 2: read the four trace rows of a rectified page without a model.

Steps (all geometry from :mod:`ecgtrace.paper`; the shared core lives in :mod:`ecgtrace.stages.trace`):

1. :func:`~ecgtrace.stages.trace.ink.ink_map` (:mod:`.trace.ink`): a per-pixel "this is trace
   ink" score in [0, 1]. The trace is dark and unsaturated; printed grids are coloured
   (red/pink/blue/green/brown: a high channel maximum) or, on black-and-white scans, lighter and
   thinner than the trace. The page is flat-fielded first so phone-photo shading does not read
   as ink.
2. :func:`~ecgtrace.stages.trace.ink.mask_furniture` (:mod:`.trace.ink`): weaken the known
   positions of separator ticks, lead labels and calibration pulses, which are ink but not signal.
3. :func:`trace_rows` (here), with :func:`~ecgtrace.stages.trace.path.viterbi`
   (:mod:`.trace.path`): one dynamic-programming path per row, column by column from signal
   time 0 to 10 s. The cost of a column is ``1 - p``; moving vertically between columns costs the
   *ink along the way*, so a steep QRS stroke that is drawn costs almost nothing while jumping
   through white paper is expensive. A weak quadratic pull to the row's baseline and a penalty
   on pixels already claimed by the row above keep a path from wandering into a neighbouring
   row's trace where the two overlap.
4. The sub-pixel centre line of each path (:mod:`.trace.path`), then
   :func:`~ecgtrace.stages.trace.leads.row_values` (:mod:`.trace.leads`): one sub-pixel y per
   column (centroid on flat parts, run end-points on extrema, run mid-points on strokes), then
   mV via the page scale.
5. :func:`~ecgtrace.stages.trace.leads.cut_leads` (:mod:`.trace.leads`): band-limited
   resampling of each lead window to ``fs``; :func:`~ecgtrace.stages.trace.quality.quality_flags`
   (:mod:`.trace.quality`) says per lead whether a trace was read.

The public names that used to live here are re-exported, so ``trace_classical.X`` keeps working;
new code imports the shared core from :mod:`ecgtrace.stages.trace`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from ecgtrace import paper
from ecgtrace.paper import CANONICAL, N_ROWS, Page
from ecgtrace.paper import ROW_KEYS as ROW_KEYS  # re-exported: the names that lived here keep working
from ecgtrace.paper import page_for as page_for
from ecgtrace.stages.steps import step
from ecgtrace.stages.trace.ink import clean_neighbours, ink_map, mask_furniture
from ecgtrace.stages.trace.ink import ink_near_path as ink_near_path
from ecgtrace.stages.trace.ink import trace_probability as trace_probability
from ecgtrace.stages.trace.leads import cut_leads as cut_leads
from ecgtrace.stages.trace.leads import lead_indices as lead_indices
from ecgtrace.stages.trace.leads import resample_window as resample_window
from ecgtrace.stages.trace.leads import row_values
from ecgtrace.stages.trace.params import ClassicalParams
from ecgtrace.stages.trace.path import RowTrace, _subpixel, viterbi
from ecgtrace.stages.trace.quality import quality_flags


@dataclass
class ClassicalResult:
    """The row paths of one page, and the ink map they were read on."""

    rows: dict[str, RowTrace] = field(default_factory=dict)
    prob: np.ndarray | None = None
    raw: np.ndarray | None = None  # the ink map before furniture in-painting (lead-switch marks still drawn)


def _row_band(page: Page, row: int, params: ClassicalParams, h: int) -> tuple[int, int]:
    top, bot = page.row_band(row, above_mv=params.band_above_mv, below_mv=params.band_below_mv)
    return int(max(0, np.floor(top))), int(min(h - 1, np.ceil(bot)))


def _blind_step_cost(band: np.ndarray, blind: np.ndarray, p: ClassicalParams) -> np.ndarray:
    """Vertical move cost in the blind columns of ``band`` (one column per True of ``blind``).

    A steep stroke that crossed a blind column left its ink in the clean columns either side, its
    two ends at most ``blind_bridge_slope`` px per column of the blind run apart. A pixel of the
    run is bridged when ink lies within half that reach of it in both clean neighbours: moving there
    costs ``blind_step_cost``; elsewhere it costs as paper does. Without this a grey grid, whose
    every minor line is blind, lets the path drop through a line onto text below the trace
    ("10mm/mV" under the rhythm strip of ECG-Image-Kit's black-and-white pages) and back.
    """
    if blind.all():  # no clean column to bridge from: moving costs as on paper
        return np.full((band.shape[0], band.shape[1]), p.blind_step_cost + p.step_ink_cost)
    cols, lc, rc = clean_neighbours(blind)
    inked = np.clip(band / 0.4, 0.0, 1.0)
    bridge = np.zeros((band.shape[0], len(cols)), np.float32)
    for width in np.unique(rc - lc):
        sel = (rc - lc) == width
        k = 2 * int(np.ceil(p.blind_bridge_slope * max(int(width), 1) / 2)) + 1
        kernel = np.ones((k, 1), np.uint8)
        near_l = cv2.dilate(np.ascontiguousarray(inked[:, lc[sel]], np.float32), kernel)
        near_r = cv2.dilate(np.ascontiguousarray(inked[:, rc[sel]], np.float32), kernel)
        bridge[:, sel] = np.minimum(near_l, near_r)
    return p.blind_step_cost + p.step_ink_cost * (1.0 - bridge)


def trace_rows(image_bgr: np.ndarray, params: ClassicalParams | None = None,
               prob: np.ndarray | None = None) -> ClassicalResult:
    """Find the four trace rows of a rectified page; returns per-row columns and sub-pixel y (px)."""
    p = params or ClassicalParams()
    page = page_for(image_bgr)
    blind = np.zeros(image_bgr.shape[1], bool)
    raw = prob
    if prob is None:
        with step("ink map"):
            raw, blind = ink_map(image_bgr)
        with step("furniture"):
            prob = mask_furniture(raw, page, p)
    h, w = prob.shape
    x0, x1 = page.signal_columns(w)
    xs = np.arange(x0, x1 + 1)
    scale = page.px_per_mm / CANONICAL.px_per_mm
    claimed = np.zeros_like(prob)
    out = ClassicalResult(prob=prob, raw=raw)
    for row in range(N_ROWS):
        top, bot = _row_band(page, row, p, h)
        band = own = prob[top:bot + 1, x0:x1 + 1]
        # the row's own ink level: the strongest ink of most columns is this row's trace (a thin
        # grey trace can be much fainter than bold labels or a scanner streak, which set the page scale)
        level = float(np.median(band.max(axis=0)))
        if 0.25 < level < 0.85:
            band = np.clip(band / (level / 0.85), 0.0, 1.0)
        ys = np.arange(top, bot + 1, dtype=np.float64)
        d_mv = np.minimum(np.abs(page.y_to_mv(row, ys)), p.baseline_pull_cap_mv)
        unary = (1.0 - band) + p.baseline_pull * (d_mv ** 2)[:, None] + claimed[top:bot + 1, x0:x1 + 1]
        # moving along faint ink (a thin, anti-aliased steep stroke) should be as cheap as along solid ink:
        # a move costs only the base cost from ClassicalParams.step_ink_full of ink on. A move into column x
        # is drawn between columns x-1 and x: a thin slanted stroke puts part of its ink in each, so the
        # move is as cheap as the inkier of the two columns.
        reach = np.maximum(band, np.concatenate([band[:, :1], band[:, :-1]], axis=1))
        step_cost = p.step_ink_cost * (1.0 - np.clip(reach / p.step_ink_full, 0.0, 1.0)) + p.step_base_cost
        # a stroke crossing an in-painted grid-line column left no ink there: moving is cheap, but not free,
        # and only between ink that a stroke could join (see _blind_step_cost)
        bl = blind[x0:x1 + 1]
        if bl.any():
            step_cost[:, bl] = np.minimum(step_cost[:, bl], _blind_step_cost(band, bl, p))
        if row < N_ROWS - 1:
            # the row switches lead at each column start: the trace may jump there for free
            for c in range(1, paper.N_COLUMNS):
                xb = int(round(page.column_x(c))) - x0
                step_cost[:, max(0, xb - 2):min(step_cost.shape[1], xb + 3)] = p.step_base_cost
        with step("path search"):
            path = viterbi(unary, step_cost)
        with step("centre line"):
            ysub = _subpixel(band, path, radius=max(1, int(round(2 * scale))), max_run=int(3 * page.px_per_mv))
        ink = own[path, np.arange(len(path))]  # quality is judged on the page's own ink scale
        clipped = (path <= 1) | (path >= band.shape[0] - 2)
        key = ROW_KEYS[row]
        out.rows[key] = RowTrace(key=key, row=row, x=xs + p.column_lag_mm * page.px_per_mm, y=ysub + top, ink=ink,
                                 clipped=clipped)
        # claim this row's pixels so the next row does not follow them where rows overlap
        # (the pixels within hw of the path's integer rows: offsets |k| <= hw, set column by column)
        hw = p.claimed_halfwidth_px * scale
        cols = np.arange(x0, x1 + 1)
        for k in range(-int(np.floor(hw)), int(np.floor(hw)) + 1):
            yk = path + top + k
            ok = (yk >= 0) & (yk < h)
            claimed[yk[ok], cols[ok]] = np.maximum(claimed[yk[ok], cols[ok]], p.claimed_penalty)
    return out


def extract(image_bgr: np.ndarray, fs: float, n_samples: dict[str, int] | None = None,
            params: ClassicalParams | None = None) -> tuple[dict[str, np.ndarray], ClassicalResult, dict[str, str]]:
    """Rectified page -> (12 leads in mV at ``fs``, the row paths, per-lead quality flags)."""
    page = page_for(image_bgr)
    res = trace_rows(image_bgr, params)
    rows = {k: row_values(tr, page, paper.PEN_OFFSET_PX) for k, tr in res.rows.items()}
    return cut_leads(rows, fs, n_samples), res, quality_flags(res, page, params)
