"""Classical stage 2: read the four trace rows of a rectified page without a model.

Steps (all geometry from :mod:`ecgtrace.paper`):

1. :func:`trace_probability`: a per-pixel "this is trace ink" score in [0, 1]. The
   trace is dark and unsaturated; printed grids are coloured (red/pink/blue/green/
   brown: a high channel maximum) or, on black-and-white scans, lighter and thinner
   than the trace. The page is flat-fielded first so phone-photo shading does not
   read as ink.
2. :func:`mask_furniture`: weaken the known positions of separator ticks, lead labels
   and calibration pulses, which are ink but not signal.
3. :func:`trace_rows`: one dynamic-programming (Viterbi) path per row, column by
   column from signal time 0 to 10 s. The cost of a column is ``1 - p``; moving
   vertically between columns costs the *ink along the way*, so a steep QRS stroke
   that is drawn costs almost nothing while jumping through white paper is
   expensive. A weak quadratic pull to the row's baseline and a penalty on pixels
   already claimed by the row above keep a path from wandering into a
   neighbouring row's trace where the two overlap.
4. :func:`row_values`: one sub-pixel y per column (centroid on flat parts, run
   end-points on extrema, run mid-points on strokes), then mV via the page scale.
5. :func:`cut_leads`: band-limited resampling of each lead window to ``fs``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from ecgtrace import paper
from ecgtrace.paper import CANONICAL, LAYOUT_3X4, N_ROWS, RHYTHM_KEY, Page

#: row key -> the leads it shows (rows 0-2: four leads; row 3: the rhythm strip).
ROW_KEYS: tuple[str, ...] = ("row0", "row1", "row2", RHYTHM_KEY)
#: Ink level that counts as "on the trace" when measuring a column's ink run (thin anti-aliased
#: strokes rarely reach 0.5).
RUN_THRESHOLD = 0.4
#: Columns left out at a lead's window edge where a jump sits (see :func:`cut_leads`).
EDGE_COLUMNS = 1.0
#: Median ink of a pixel column (row) above which it holds a grid line too dark to subtract.
LINE_VISIBLE = 0.2


@dataclass
class ClassicalParams:
    """Tunable constants of the classical reader (defaults tuned on synthetic renders)."""

    band_above_mv: float = 3.2  # search band above the baseline (taller R waves are clipped)
    band_below_mv: float = 2.6
    step_ink_cost: float = 1.0  # vertical move cost per px of paper (no ink)
    step_base_cost: float = 0.002  # vertical move cost per px on ink
    blind_step_cost: float = 0.02  # vertical move cost per px in a column hidden by a dark grid line
    baseline_pull: float = 0.02  # per column, per mV^2 of distance from the row's baseline
    baseline_pull_cap_mv: float = 4.0
    claimed_penalty: float = 0.5  # cost added on pixels the row above already follows
    claimed_halfwidth_px: float = 2.5  # at 200 dpi; scales with the page
    label_weight: float = 0.35  # ink inside lead-label boxes counts this much
    weak_ink: float = 0.35  # a path column on less ink than this is "off trace"
    max_wander_mv: float = 0.5  # median |mV - median| above this is not an ECG trace


@dataclass
class RowTrace:
    """The path of one row: columns, sub-pixel y, ink under the path."""

    key: str
    row: int
    x: np.ndarray  # (n,) pixel columns (int for the classical reader; float for a model read at another scale)
    y: np.ndarray  # (n,) float sub-pixel y
    ink: np.ndarray  # (n,) trace probability under the path
    clipped: np.ndarray  # (n,) bool: the path touches the band edge (a peak left the band)


@dataclass
class ClassicalResult:
    rows: dict[str, RowTrace] = field(default_factory=dict)
    prob: np.ndarray | None = None


def page_for(image: np.ndarray) -> Page:
    """The :class:`Page` geometry of a rectified image (canonical page scaled to its width)."""
    h, w = image.shape[:2]
    page = CANONICAL if w == CANONICAL.width_px else CANONICAL.scaled_to(w)
    if abs(page.height_px - h) > 2:
        raise ValueError(f"rectified page is {w}x{h} px; expected the canonical aspect ({page.width_px}x{page.height_px})")
    return page


# --------------------------------------------------------------------------- ink
def trace_probability(image_bgr: np.ndarray) -> np.ndarray:
    """Per-pixel trace-ink score in [0, 1] (float32) of a BGR or grey page.

    Darkness is measured on the *largest* channel, so a saturated grid line (red,
    blue, green) scores ~0 however dark its hue is; remaining saturation is
    penalised, and a robust contrast stretch pushes the (lighter, thinner) grid of
    grey/B&W pages under the floor.
    """
    return ink_map(image_bgr)[0]


def ink_map(image_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`trace_probability`, and which pixel columns are *blind*: a dark vertical grid line
    was in-painted there from its neighbours, so the ink a steep stroke left in them is lost.

    (Rows in-painted under dark horizontal lines are not treated alike: crediting them as
    unknown ink lets the path run along a line past a hard QRS; measured worse on black grids.)
    """
    img = image_bgr
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    f = img.astype(np.float32)
    mx = f.max(axis=2)
    mn = f.min(axis=2)
    # paper brightness: a max filter wider than the trace removes the ink, a blur smooths it
    k = max(3, int(round(img.shape[1] / 2200 * 9)) | 1)
    bg = cv2.dilate(mx, cv2.getStructuringElement(cv2.MORPH_RECT, (k, k)))
    bg = cv2.GaussianBlur(bg, (0, 0), sigmaX=3 * k)
    bg = np.maximum(bg, 40.0)
    dark = np.clip(1.0 - mx / bg, 0.0, 1.0)
    sat = (mx - mn) / np.maximum(mx, 1.0)
    score = dark * np.clip(1.0 - 1.5 * sat, 0.0, 1.0)
    # grey/B&W grids survive the colour test; on a rectified page their lines are axis-aligned.
    # Vertical lines: the median down each pixel column (the trace covers a small part of it)
    # is the line's own ink; columns with a visible line are in-painted from the nearest clean
    # columns either side (a black grid is as dark as the trace, no contrast can split them).
    # Horizontal lines: their level is read in the right margin, past 10 s, where no trace runs
    # (a flat trace fills most of its own pixel row), and subtracted.
    w = score.shape[1]
    page = CANONICAL.scaled_to(w)
    col_level = np.median(score, axis=0)
    blind = col_level >= LINE_VISIBLE
    score = _remove_lines(score, col_level)
    xr = int(np.ceil(float(page.time_to_x(paper.DURATION_S)) + 0.5 * page.px_per_mm))
    if w - xr >= 8:
        score = _remove_lines(score.T, np.median(score[:, xr:], axis=1)).T
        score = _erase_long_lines(score, page, xr)
    score = np.clip(score, 0.0, 1.0)
    # robust stretch: the floor sits above paper and most grid, the top at solid ink
    lo = float(np.percentile(score, 80))
    hi = float(np.percentile(score, 99.7))
    hi = max(hi, lo + 0.15, 0.25)
    floor = lo + 0.25 * (hi - lo)
    return np.clip((score - floor) / (hi - floor), 0.0, 1.0).astype(np.float32), blind


def _remove_lines(score: np.ndarray, level: np.ndarray, visible: float = LINE_VISIBLE) -> np.ndarray:
    """Remove axis-aligned grid lines of known per-column ink ``level`` from ``score`` (H, W).

    Faint levels are subtracted; columns holding a visible line are in-painted from the
    nearest clean columns either side, so a trace crossing the line keeps its ink.
    """
    w = score.shape[1]
    bad = level >= visible
    out = score - np.where(bad, 0.0, level)[None, :]
    if not bad.any() or bad.all():
        return out
    idx = np.arange(w)
    left = np.maximum.accumulate(np.where(~bad, idx, -1))
    right = np.minimum.accumulate(np.where(~bad, idx, w)[::-1])[::-1]
    cols = np.where(bad)[0]
    lc, rc = left[cols], right[cols]
    lc = np.where(lc < 0, rc, lc)
    rc = np.where(rc >= w, lc, rc)
    f = np.where(rc > lc, (cols - lc) / np.maximum(rc - lc, 1), 0.5)[None, :]
    out[:, cols] = (1 - f) * out[:, lc] + f * out[:, rc]
    return out


def _follow_line(mask: np.ndarray, x: int, y: float, slope: float, direction: int, max_gap: int) -> list[tuple[int, float]]:
    """Walk along a near-horizontal ridge of ``mask`` from column ``x`` in ``direction`` (+1/-1).

    Each step looks 2 px either side of the position the recent slope predicts, so a gently bent
    line (a page edge after rectification) is followed to its true end, while a trace, which
    leaves the predicted position within a few columns, is not.
    """
    h, w = mask.shape
    pts: list[tuple[int, float]] = []
    gap = 0
    while 0 <= x + direction < w and gap <= max_gap:
        x += direction
        y += slope * direction
        yi = int(round(y))
        lo, hi = max(0, yi - 2), min(h, yi + 3)
        hits = np.nonzero(mask[lo:hi, x])[0]
        if hits.size:
            y_new = float(lo + hits.mean())
            if len(pts) >= 20:  # update the slope from the last stretch followed
                x_old, y_old = pts[-20]
                slope = (y_new - y_old) / (x - x_old)
            y = y_new
            pts.append((x, y))
            gap = 0
        else:
            gap += 1
    return pts


def _erase_long_lines(score: np.ndarray, page: Page, xr: int) -> np.ndarray:
    """Erase long straight strokes that are not traces: page edges, folds, ruled lines, scanner streaks.

    A trace is never straight for long (a QRS comes every second or so; even a flat, lead-off
    trace spans one 2.5 s window, 0.22 of the page width), so near-horizontal segments longer than
    0.3 of the width and near-vertical ones longer than 0.3 of the height are found with a
    probabilistic Hough transform, then followed along their ridge to their real ends (after
    rectification such a line is often gently bent) and erased.
    """
    mask = (score >= 0.5).astype(np.uint8) * 255
    th = max(3, int(round(0.6 * page.px_per_mm)))
    erase = np.zeros_like(mask)
    for transpose in (False, True):  # near-horizontal lines, then near-vertical ones (transposed)
        m = mask.T if transpose else mask
        e = np.zeros(m.shape, np.uint8)  # C order: cv2 cannot draw into a transposed view
        long_side = m.shape[1]
        max_gap = max(3, int(0.002 * long_side))
        lines = cv2.HoughLinesP(m, 1, np.pi / 720, threshold=int(0.15 * long_side),
                                minLineLength=int(0.3 * long_side), maxLineGap=max_gap)
        if lines is None:
            continue
        for x1, y1, x2, y2 in np.asarray(lines).reshape(-1, 4).astype(np.float64):
            dx, dy = abs(x2 - x1), abs(y2 - y1)
            if dy >= 0.05 * dx:
                continue
            if x1 > x2:
                x1, y1, x2, y2 = x2, y2, x1, y1
            slope = (y2 - y1) / max(x2 - x1, 1.0)
            left = _follow_line(m, int(x1), y1, slope, -1, max_gap)[::-1]
            right = _follow_line(m, int(x2), y2, slope, +1, max_gap)
            pts = [(x, y) for x, y in left] + [(x1, y1), (x2, y2)] + [(x, y) for x, y in right]
            poly = np.round(np.array(pts)).astype(np.int32).reshape(-1, 1, 2)
            cv2.polylines(e, [poly], False, 255, th)
        erase = np.maximum(erase, e.T if transpose else e)
    return np.where(erase > 0, 0.0, score) if erase.any() else score


def mask_furniture(prob: np.ndarray, page: Page, params: ClassicalParams | None = None) -> np.ndarray:
    """Weaken ink at known non-signal positions: separator ticks, labels, calibration pulses.

    Tick columns are in-painted from the columns either side (the trace still passes
    there); label boxes are scaled down, not erased, as a deep S wave may cross them.
    """
    p = params or ClassicalParams()
    out = prob.copy()
    h, w = out.shape
    s = page.px_per_mm
    # separator ticks: replace a few columns by the mean of their neighbours
    half = max(2, int(round(0.45 * s)))
    for tick in page.separator_ticks():
        x = int(round(tick[0, 0]))
        y0 = int(max(0, np.floor(tick[:, 1].min() - 0.5 * s)))
        y1 = int(min(h, np.ceil(tick[:, 1].max() + 0.5 * s)))
        xl, xr = x - half - 1, x + half + 1
        if xl < 0 or xr >= w:
            continue
        a, b = out[y0:y1, xl], out[y0:y1, xr]
        for i, xx in enumerate(range(x - half, x + half + 1)):
            f = (i + 1) / (2 * half + 2)
            out[y0:y1, xx] = (1 - f) * a + f * b
    # lead labels: boxes around the canonical centres
    bw, bh = 1.2 * page.px_per_s * 0.12 * 2, 0.6 * page.px_per_mv
    for m in paper.MARKERS:
        cx, cy = page.label_center(m)
        x0, x1 = int(max(0, cx - bw / 2)), int(min(w, cx + bw / 2))
        y0, y1 = int(max(0, cy - bh / 2)), int(min(h, cy + bh / 2))
        out[y0:y1, x0:x1] *= p.label_weight
    # calibration pulses lie left of signal time 0; only their last flat bit touches it
    return out


# --------------------------------------------------------------------------- DP
def _row_band(page: Page, row: int, params: ClassicalParams, h: int) -> tuple[int, int]:
    top, bot = page.row_band(row, above_mv=params.band_above_mv, below_mv=params.band_below_mv)
    return int(max(0, np.floor(top))), int(min(h - 1, np.ceil(bot)))


def viterbi(unary: np.ndarray, step: np.ndarray) -> np.ndarray:
    """Minimum-cost path through a (Hb, n) cost image, one y per column.

    ``step[y, x]`` is the cost of passing pixel ``y`` of column ``x`` while moving
    vertically into that column. The min over predecessors of
    ``D[y'] + |C[y] - C[y']|`` (C = cumulative step cost) is computed in O(Hb) with
    two running minima, so the whole path is O(Hb * n) with a short Python loop.
    """
    hb, n = unary.shape
    ar = np.arange(hb)
    back = np.empty((n, hb), dtype=np.int32)
    D = unary[:, 0].astype(np.float64).copy()
    for x in range(1, n):
        C = np.cumsum(step[:, x], dtype=np.float64)
        a = D - C  # predecessors above (y' <= y): D[y'] - C[y'] + C[y]
        ra = np.minimum.accumulate(a)
        ia = np.maximum.accumulate(np.where(a <= ra, ar, 0))
        b = (D + C)[::-1]  # predecessors below (y' >= y): D[y'] + C[y'] - C[y]
        rb = np.minimum.accumulate(b)
        ib = (hb - 1 - np.maximum.accumulate(np.where(b <= rb, ar, 0)))[::-1]
        fa = ra + C
        fb = rb[::-1] - C
        use_a = fa <= fb
        back[x] = np.where(use_a, ia, ib)
        D = unary[:, x] + np.where(use_a, fa, fb)
    path = np.empty(n, dtype=np.int64)
    path[-1] = int(np.argmin(D))
    for x in range(n - 1, 0, -1):
        path[x - 1] = back[x, path[x]]
    return path


def _runs(prob_band: np.ndarray, path: np.ndarray, thr: float, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Sub-pixel top/bottom (ya, yb) of the ink run through the path point of every column.

    The run is grown from the path pixel (and across the span to the neighbours' path
    pixels, which the drawn stroke connects) while ink >= ``thr``; its ends are placed
    where the ink crosses ``thr`` (linear interpolation).
    """
    hb, n = prob_band.shape
    ya = np.empty(n)
    yb = np.empty(n)
    for x in range(n):
        col = prob_band[:, x]
        lo_i = hi_i = int(path[x])
        if x > 0:
            lo_i, hi_i = min(lo_i, int(path[x - 1]) + 1), max(hi_i, int(path[x - 1]) - 1)
        lo_i, hi_i = min(lo_i, int(path[x])), max(hi_i, int(path[x]))
        stop = max(0, lo_i - max_len)
        i = lo_i
        while i > stop and col[i - 1] >= thr:
            i -= 1
        # sub-pixel edge between i-1 (below thr) and i
        a = float(i)
        if i > 0 and col[i - 1] < thr <= col[i]:
            a = i - (col[i] - thr) / (col[i] - col[i - 1])
        stop = min(hb - 1, hi_i + max_len)
        j = hi_i
        while j < stop and col[j + 1] >= thr:
            j += 1
        b = float(j)
        if j < hb - 1 and col[j + 1] < thr <= col[j]:
            b = j + (col[j] - thr) / (col[j] - col[j + 1])
        ya[x], yb[x] = a, b
    return ya, yb


def thin(mask: np.ndarray, max_iter: int = 20) -> np.ndarray:
    """Zhang-Suen thinning of a boolean mask (vectorised): a 1-px 8-connected centre line."""
    m = np.pad(mask.astype(bool), 1)
    for _ in range(max_iter):
        changed = False
        for step in (0, 1):
            p2, p3, p4 = m[:-2, 1:-1], m[:-2, 2:], m[1:-1, 2:]
            p5, p6, p7 = m[2:, 2:], m[2:, 1:-1], m[2:, :-2]
            p8, p9 = m[1:-1, :-2], m[:-2, :-2]
            nb = [p2, p3, p4, p5, p6, p7, p8, p9]
            b = sum(x.astype(np.uint8) for x in nb)
            a = sum(((~nb[i]) & nb[(i + 1) % 8]).astype(np.uint8) for i in range(8))
            if step == 0:
                c = ~(p2 & p4 & p6) & ~(p4 & p6 & p8)
            else:
                c = ~(p2 & p4 & p8) & ~(p2 & p6 & p8)
            kill = m[1:-1, 1:-1] & (b >= 2) & (b <= 6) & (a == 1) & c
            if kill.any():
                m[1:-1, 1:-1] &= ~kill
                changed = True
        if not changed:
            break
    return m[1:-1, 1:-1]


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
    skel = thin(prob_band >= RUN_THRESHOLD)
    yy = np.arange(hb, dtype=np.float64)[:, None]
    inrun = skel & (yy >= np.floor(ya)[None, :]) & (yy <= np.ceil(yb)[None, :])
    has = inrun.any(axis=0)
    st = np.where(inrun, yy, np.inf).min(axis=0)
    sb = np.where(inrun, yy, -np.inf).max(axis=0)
    st = np.where(has, st, 0.0)
    sb = np.where(has, sb, 0.0)
    sm = 0.5 * (st + sb)
    smp = np.concatenate([sm[:1], sm[:-1]])
    smn = np.concatenate([sm[1:], sm[-1:]])
    speak = (smp > sm) & (smn > sm)
    strough = (smp < sm) & (smn < sm)
    ys = np.where(speak, st, np.where(strough, sb, sm))
    y = np.where(has & ~short, ys, y)
    y = np.where(short & (sw > 1e-3), cen, y)
    return np.clip(y, 0, hb - 1)


def trace_rows(image_bgr: np.ndarray, params: ClassicalParams | None = None,
               prob: np.ndarray | None = None) -> ClassicalResult:
    """Find the four trace rows of a rectified page; returns per-row columns and sub-pixel y (px)."""
    p = params or ClassicalParams()
    page = page_for(image_bgr)
    blind = np.zeros(image_bgr.shape[1], bool)
    if prob is None:
        prob, blind = ink_map(image_bgr)
        prob = mask_furniture(prob, page, p)
    h, w = prob.shape
    x0 = int(np.ceil(float(page.time_to_x(0.0))))
    x1 = int(min(w - 1, np.floor(float(page.time_to_x(paper.DURATION_S)))))
    xs = np.arange(x0, x1 + 1)
    scale = page.px_per_mm / CANONICAL.px_per_mm
    claimed = np.zeros_like(prob)
    out = ClassicalResult(prob=prob)
    for row in range(N_ROWS):
        top, bot = _row_band(page, row, p, h)
        band = raw = prob[top:bot + 1, x0:x1 + 1]
        # the row's own ink level: the strongest ink of most columns is this row's trace (a thin
        # grey trace can be much fainter than bold labels or a scanner streak, which set the page scale)
        level = float(np.median(band.max(axis=0)))
        if 0.25 < level < 0.85:
            band = np.clip(band / (level / 0.85), 0.0, 1.0)
        ys = np.arange(top, bot + 1, dtype=np.float64)
        d_mv = np.minimum(np.abs(page.y_to_mv(row, ys)), p.baseline_pull_cap_mv)
        unary = (1.0 - band) + p.baseline_pull * (d_mv ** 2)[:, None] + claimed[top:bot + 1, x0:x1 + 1]
        # moving along faint ink (a thin, anti-aliased steep stroke) should be as cheap as along solid ink
        # A move into column x is drawn between columns x-1 and x: a thin slanted stroke puts part of
        # its ink in each, so the move is as cheap as the inkier of the two columns.
        reach = np.maximum(band, np.concatenate([band[:, :1], band[:, :-1]], axis=1))
        step = p.step_ink_cost * (1.0 - np.clip(reach / 0.4, 0.0, 1.0)) + p.step_base_cost
        # a stroke crossing an in-painted grid-line column left no ink there: moving is cheap, but not free
        step[:, blind[x0:x1 + 1]] = np.minimum(step[:, blind[x0:x1 + 1]], p.blind_step_cost)
        if row < N_ROWS - 1:
            # the row switches lead at each column start: the trace may jump there for free
            for c in range(1, paper.N_COLUMNS):
                xb = int(round(page.column_x(c))) - x0
                step[:, max(0, xb - 2):min(step.shape[1], xb + 3)] = p.step_base_cost
        path = viterbi(unary, step)
        ysub = _subpixel(band, path, radius=max(1, int(round(2 * scale))), max_run=int(3 * page.px_per_mv))
        ink = raw[path, np.arange(len(path))]  # quality is judged on the page's own ink scale
        clipped = (path <= 1) | (path >= band.shape[0] - 2)
        key = ROW_KEYS[row]
        out.rows[key] = RowTrace(key=key, row=row, x=xs.copy(), y=ysub + top, ink=ink, clipped=clipped)
        # claim this row's pixels so the next row does not follow them where rows overlap
        hw = p.claimed_halfwidth_px * scale
        yy = np.arange(h, dtype=np.float64)[:, None]
        near = np.abs(yy - (path + top)[None, :]) <= hw
        claimed[:, x0:x1 + 1] = np.maximum(claimed[:, x0:x1 + 1], p.claimed_penalty * near)
    return out


def ink_near_path(prob: np.ndarray, x: np.ndarray, y: np.ndarray, radius: float) -> np.ndarray:
    """Page ink at a path read by another method (a model), per path point, with tolerance.

    The strongest ``prob`` within ``radius`` px of the point vertically, over the span to the
    previous point (a steep stroke covers it), and in the columns either side (a column
    in-painted under a dark grid line lost its ink). A model's own confidence says how sure
    the network is, not whether the picture holds a trace there; this does.
    """
    h, w = prob.shape
    xi = np.clip(np.round(np.asarray(x, np.float64)).astype(int), 0, w - 1)
    y = np.asarray(y, np.float64)
    yp = np.concatenate([y[:1], y[:-1]])
    lo = np.clip(np.floor(np.minimum(y, yp) - radius), 0, h - 1).astype(int)
    hi = np.clip(np.ceil(np.maximum(y, yp) + radius), 0, h - 1).astype(int)
    # each column's ink as the max of itself and its two neighbours, then the max over [lo, hi] per point
    wide = cv2.dilate(prob, np.ones((1, 3), np.uint8))
    out = np.empty(len(xi), np.float32)
    for i, (c, a, b) in enumerate(zip(xi, lo, hi)):
        out[i] = wide[a:b + 1, c].max()
    return out


# --------------------------------------------------------------------------- signals
def row_values(tr: RowTrace, page: Page) -> tuple[np.ndarray, np.ndarray]:
    """(time s, mV) of every path column of a row."""
    return page.x_to_time(tr.x.astype(np.float64)), page.y_to_mv(tr.row, tr.y)


def lead_indices(lead: str, fs: float, sig_len: int | None = None) -> tuple[int, int]:
    """Sample range [i0, i1) of ``lead`` in a 10 s record at ``fs`` (competition rule; II = full record)."""
    from ecgtrace.data.signals import csv_rows

    n = int(round(paper.DURATION_S * fs)) if sig_len is None else int(sig_len)
    return csv_rows(paper.RHYTHM_LEAD if lead == RHYTHM_KEY else lead, fs, n)


def resample_window(t: np.ndarray, v: np.ndarray, t0: float, fs: float, n: int, oversample: int = 8) -> np.ndarray:
    """Values at ``t0 + k / fs`` (k < n) from uniformly spaced column samples ``(t, v)``.

    Band-limited: the column samples are FFT-upsampled ``oversample`` times (after
    removing the end-to-end line and mirroring, so the periodic FFT sees no jump),
    then read off by linear interpolation on the fine grid.
    """
    from scipy.signal import resample

    t = np.asarray(t, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    tq = t0 + np.arange(n) / float(fs)
    if len(t) < 4:
        return np.interp(tq, t, v) if len(t) else np.zeros(n)
    dt = (t[-1] - t[0]) / (len(t) - 1)
    line = v[0] + (v[-1] - v[0]) * (t - t[0]) / (t[-1] - t[0])
    r = v - line
    m = len(r)
    sym = np.concatenate([r, -r[::-1][1:-1]])  # odd mirror: continuous, zero at the ends
    fine = resample(sym, len(sym) * oversample)[: (m - 1) * oversample + 1]
    tf = t[0] + np.arange(len(fine)) * dt / oversample
    lf = v[0] + (v[-1] - v[0]) * (tf - t[0]) / (t[-1] - t[0])
    return np.interp(tq, tf, fine + lf)


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
            # stay two columns inside the window where a neighbour's jump sits on its edge (the
            # calibration pulse before the first column, the next lead after); the last column's
            # leads end with the trace itself, so they are read to the end (a QRS there is kept)
            eps = EDGE_COLUMNS * float(t[1] - t[0]) if len(t) > 1 else 0.0
            m = (t >= t0 + eps) & (t <= (t1 - eps if t1 < paper.DURATION_S else t1))
            out[lead] = resample_window(t[m], v[m], i0 / fs, fs, n)
    if RHYTHM_KEY in rows:
        t, v = rows[RHYTHM_KEY]
        i0, i1 = lead_indices(RHYTHM_KEY, fs)
        n = int((n_samples or {}).get(paper.RHYTHM_LEAD) or (i1 - i0))
        m = (t >= 0) & (t <= paper.DURATION_S)
        out[paper.RHYTHM_LEAD] = resample_window(t[m], v[m], 0.0, fs, n)
    return {lead: out[lead] for lead in paper.LEADS if lead in out}


def _foreign_columns(res: ClassicalResult, page: Page, tol_mm: float = 0.4) -> dict[int, np.ndarray]:
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


def quality_flags(res: ClassicalResult, page: Page, params: ClassicalParams | None = None) -> dict[str, str]:
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


def extract(image_bgr: np.ndarray, fs: float, n_samples: dict[str, int] | None = None,
            params: ClassicalParams | None = None) -> tuple[dict[str, np.ndarray], ClassicalResult, dict[str, str]]:
    """Rectified page -> (12 leads in mV at ``fs``, the row paths, per-lead quality flags)."""
    page = page_for(image_bgr)
    res = trace_rows(image_bgr, params)
    rows = {k: row_values(tr, page) for k, tr in res.rows.items()}
    return cut_leads(rows, fs, n_samples), res, quality_flags(res, page, params)
