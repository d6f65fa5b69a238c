"""Register a page by its calibration pulses, when neither lead labels nor a grid could.

A tightly cropped phone photo of a 3x4 + rhythm sheet may show no page edge, a grid too faint or
dotted to measure and labels in a font stage 0 does not know, yet a person reads it at once: every
row starts with the 1 mV calibration pulse, a "⊓" whose foot is the row's baseline and whose
falling edge is where the row's trace begins. Four such pulses stacked at the left fix the page: a
similarity transform (scale, rotation, shift) puts each pulse's falling edge at signal time 0 of
its canonical row and its height at 1 mV; where the rhythm strip's last ink lies near 10 s by
that scale, it sets the time scale exactly. The result is a :class:`RectifiedPage` flagged unsure
(``method="pulses"``): the best estimate of a page that can be read, never a refusal.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import combinations

import cv2
import numpy as np

from ecgtrace import paper
from ecgtrace.geometry import identity_map
from ecgtrace.paper import CAL_PULSE_MV, N_ROWS, Page
from ecgtrace.stages.base import RectifiedPage
from ecgtrace.stages.memo import PageMemo
from ecgtrace.stages.steps import step
from ecgtrace.stages.trace.ink import trace_probability


#: Pulses needed to register a page: one per row, or all but one.
MIN_PULSES = N_ROWS - 1
#: The longest gap (s) between a pulse's falling edge and the row's trace start that
#: :func:`pulses_offset_mm` takes as a cart's layout (ecgtrace's renderer draws up to 0.33 s).
MAX_PULSE_GAP_S = 0.4


@dataclass(frozen=True)
class PulseParams:
    """What counts as a calibration pulse (sizes relative to the picture)."""

    left_fraction: float = 0.25  # pulses lie in this left part of the picture
    min_height: float = 0.035  # pulse height, fraction of the picture height (10 mm of a ~50-280 mm tall view)
    max_height: float = 0.2
    width_ratios: tuple[float, ...] = (0.25, 0.4, 0.55)  # top width / height tried (0.1-0.2 s vs 1 mV)
    min_match_height_px: int = 25  # the smallest pulse is searched for at least this tall (a coarser map)
    min_match: float = 0.45  # normalised correlation of a pulse with the drawn "⊓"
    min_stroke: float = 0.4  # fraction of each edge and of the top that must hold ink (a photo's thin stroke has gaps)
    stroke_ink: float = 0.15  # ink level (of the picture's strongest) that counts
    edge_ink: float = 0.3  # ... along an edge, followed down to the foot
    min_width_ratio: float = 0.15  # a measured pulse at least this wide for its height
    max_height_ratio: float = 1.3  # one cart's pulses: the tallest at most this many times the shortest
    max_fit_error_mm: float = 2.5  # mean distance of the pulse corners from their canonical places
    end_tolerance: float = 0.08  # the rhythm strip's end sets the time scale when this close to 10 s


@dataclass
class PulseFit:
    """Pulses found and the page they fix; ``ok`` False says why not in ``message``."""

    ok: bool
    message: str
    pulses: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))  # (k, 4): x_rise, x_fall, y_top, y_foot
    matrix: np.ndarray | None = None  # 2x3: picture px -> canonical page px
    error_mm: float = float("nan")


def _template(height: int, width: int, thick: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A drawn pulse (foot, rise, top, fall) and its (x_rise, x_fall, y_top, y_foot) in the template."""
    pad = max(2, int(round(0.3 * height)))
    tpl = np.zeros((height + 2 * thick + pad, width + 2 * pad), np.float32)
    xr, xf, yt, yf = pad, pad + width, thick, thick + height
    for a, b in (((0, yf), (xr, yf)), ((xr, yf), (xr, yt)), ((xr, yt), (xf, yt)), ((xf, yt), (xf, yf))):
        cv2.line(tpl, a, b, 1.0, thick)
    return cv2.GaussianBlur(tpl, (0, 0), 1.5), (xr, xf, yt, yf)


def _peak(profile: np.ndarray, lo: int, hi: int) -> float:
    """Sub-pixel position of the strongest entry of ``profile[lo:hi]`` (3-point centroid)."""
    lo, hi = max(0, lo), min(len(profile), hi)
    if hi - lo < 1:
        return float(lo)
    i = lo + int(np.argmax(profile[lo:hi]))
    a, b = max(0, i - 1), min(len(profile), i + 2)
    w = profile[a:b]
    return float((np.arange(a, b) * w).sum() / w.sum()) if w.sum() > 0 else float(i)


def _refine(prob: np.ndarray, xr: float, xf: float, yt: float, yf: float, p: PulseParams) -> tuple | None:
    """Edges and levels of one pulse measured on the ink map, or None when it is not drawn there."""
    h, w = prob.shape
    hgt, wid = yf - yt, xf - xr
    dx, dy = max(2, int(round(0.25 * wid))), max(2, int(round(0.15 * hgt)))  # a template size off by a step
    rows = slice(int(yt + 0.2 * hgt), int(yf - 0.2 * hgt) + 1)
    cols = slice(int(xr + 0.2 * wid), int(xf - 0.2 * wid) + 1)
    across = prob[rows].sum(axis=0)
    xr = _peak(across, int(xr) - dx, int(xr) + dx + 1)
    xf = _peak(across, int(xf) - dx, int(xf) + dx + 1)
    # (the profiles are summed only over the rows that are read: the window around the template's top, and
    # below it the pulse's height and a half; the others stay 0)
    lo, hi = max(0, int(yt) - dy - 1), min(h, int(yt) + dy + 2)
    down = np.zeros(h, prob.dtype)
    down[lo:hi] = prob[lo:hi, cols].sum(axis=1)
    yt = _peak(down, int(yt) - dy, int(yt) + dy + 1)
    # each edge's ink down the picture (a photo's stroke is not quite vertical: 2 px either side)
    lo, hi = max(0, int(round(yt)) - 1), min(h, int(yt + 1.5 * hgt) + 2)
    edges = []
    for c in (int(round(xr)), int(round(xf))):
        edge = np.zeros(h, prob.dtype)
        edge[lo:hi] = prob[lo:hi, max(0, c - 2):min(w, c + 3)].max(axis=1)
        edges.append(edge)
    # the foot: where the edges' ink ends below the top (the shorter of the two: the falling edge may run on
    # into the trace); small gaps, as a photo's thin stroke has, are crossed
    ends = []
    for edge in edges:
        ys = int(round(yt)) + np.flatnonzero(edge[int(round(yt)):min(h, int(yt + 1.5 * hgt))] >= p.edge_ink)
        if not ys.size:
            return None
        gaps = np.flatnonzero(np.diff(ys) > max(2, 0.2 * hgt))
        ends.append(float(ys[gaps[0]] if gaps.size else ys[-1]))
    yf = min(ends)
    if not (0.6 * hgt <= yf - yt <= 1.5 * hgt):
        yf = float("nan")  # the foot is not clear: the other pulses' height will be used
    elif (xf - xr) < p.min_width_ratio * (yf - yt):
        return None
    # each edge and the top hold ink along most of their length
    span = (yf - yt) if np.isfinite(yf) else hgt
    mid = slice(int(yt + 0.15 * span), int(yt + 0.85 * span) + 1)
    for edge in edges:
        if (edge[mid] >= p.stroke_ink).mean() < p.min_stroke:
            return None
    r = int(round(yt))
    top = prob[max(0, r - 2):r + 3, int(round(xr)):int(round(xf)) + 1].max(axis=0)
    if (top >= p.stroke_ink).mean() < p.min_stroke:
        return None
    return xr, xf, yt, yf


def find_pulses(image_bgr: np.ndarray, params: PulseParams | None = None) -> np.ndarray:
    """(k, 4) calibration pulses of a picture, top to bottom: x_rise, x_fall, y_top, y_foot (px).

    The ink map of the picture's left part is matched against a drawn "⊓" over a range of sizes;
    at the size whose best few matches agree most, each match is measured on the ink (edges,
    top, foot) and kept when all three strokes are there.
    """
    p = params or PulseParams()
    hit = _LAST.get(image_bgr, p)
    if hit is not None:
        return hit
    with step("pulse search"):
        found = _find_pulses(image_bgr, p)
    _LAST.put(image_bgr, found, p)
    return found


#: The pipeline asks for the pulses of a page passed through unrectified, then (to register it) of the
#: picture: the same pixels where stage 0 left the picture as it was.
_LAST: PageMemo[np.ndarray] = PageMemo(2)


def _find_pulses(image_bgr: np.ndarray, p: PulseParams) -> np.ndarray:
    h, w = image_bgr.shape[:2]
    left = image_bgr[:, :max(16, int(w * p.left_fraction))]
    prob = trace_probability(left).astype(np.float32)
    scale = float(np.percentile(prob, 99.8))
    if scale <= 0:
        return np.zeros((0, 4))
    prob = np.clip(prob / scale, 0.0, 1.0)
    soft = cv2.GaussianBlur(prob, (0, 0), 1.5)
    # the search runs on a coarser map where even the smallest pulse is still tall (a quarter of the pixels
    # on a 1700 px tall page: half the time of the whole search); each match is then measured on the
    # full-resolution ink (_refine)
    f = max(1, int(p.min_height * h // p.min_match_height_px))
    if f > 1:
        soft = cv2.resize(soft, (soft.shape[1] // f, soft.shape[0] // f), interpolation=cv2.INTER_AREA)
    sizes = [(int(hgt), ratio)
             for hgt in np.unique(np.round(np.geomspace(p.min_height * h / f, p.max_height * h / f, 20)))
             for ratio in p.width_ratios]

    def matches(size: tuple[int, float]) -> list[tuple[float, float, float, float, float]]:
        hgt, ratio = size
        tpl, (txr, txf, tyt, tyf) = _template(hgt, max(3, int(round(ratio * hgt))), max(2, int(round(hgt / 25))))
        if tpl.shape[0] >= soft.shape[0] or tpl.shape[1] >= soft.shape[1]:
            return []
        score = np.nan_to_num(cv2.matchTemplate(soft, tpl, cv2.TM_CCORR_NORMED), nan=0.0)
        found = []
        for _ in range(N_ROWS + 2):  # the best matches, one per band of the pulse's height
            y, x = np.unravel_index(int(np.argmax(score)), score.shape)
            if score[y, x] < p.min_match:
                break
            # (in full-resolution px: coarse pixel c covers [c f, (c + 1) f))
            found.append((float(score[y, x]), *((v + 0.5) * f - 0.5 for v in (x + txr, x + txf, y + tyt, y + tyf))))
            score[max(0, y - hgt):y + hgt, :] = 0.0
        return found

    # OpenCV's template match runs on one core: the sizes share the threads OpenCV may use (the same
    # matches in the same order, twice as fast on two cores)
    with ThreadPoolExecutor(max(1, cv2.getNumThreads())) as pool:
        per_size = list(pool.map(matches, sizes))
    sets = [(float(np.mean(sorted(q[0] for q in found)[-N_ROWS:])), found) for found in per_size
            if len(found) >= N_ROWS]
    best, best_key = np.zeros((0, 4)), None
    for quality, found in sets:  # every size that matched, measured on the ink
        pulses: list[tuple[float, float, float, float]] = []
        for q in sorted(found, key=lambda t: -t[0]):  # strongest match first; one pulse per place
            r = _refine(prob, *q[1:], p)
            if r is not None and all(abs(r[2] - k[2]) > 0.5 * (q[4] - q[3]) for k in pulses):
                pulses.append(r)
        arr = np.array(sorted(pulses, key=lambda t: t[2]), dtype=np.float64).reshape(-1, 4)
        heights = arr[:, 3] - arr[:, 2]
        if len(arr) < MIN_PULSES or np.isfinite(heights).sum() < 2:
            continue
        # one cart draws every pulse alike: an unclear foot is the measured pulses' height below the top
        arr[:, 3] = np.where(np.isfinite(heights), arr[:, 3], arr[:, 2] + np.nanmedian(heights))
        heights = arr[:, 3] - arr[:, 2]
        # pulses are stacked (their falling edges line up, a picture's tilt moves them a little) and alike
        alike = float(np.ptp(arr[:, 1])) <= 0.04 * w and heights.max() <= p.max_height_ratio * heights.min()
        key = (alike, min(len(arr), N_ROWS), quality)
        if best_key is None or key > best_key:
            best, best_key = arr, key
    return best


def _row_choices(n: int) -> list[tuple[int, ...]]:
    """Ways to put ``n`` pulses (top to bottom) on the page's rows in order: all rows, or all but one."""
    if n >= N_ROWS:
        return [tuple(range(N_ROWS))]
    return [tuple(r for r in range(N_ROWS) if r != miss) for miss in range(N_ROWS)] if n == N_ROWS - 1 else []


def fit_pulses(pulses: np.ndarray, page: Page, params: PulseParams | None = None) -> PulseFit:
    """The similarity that puts the pulses (top to bottom) on their canonical rows of ``page``.

    One pulse per row, or one row's pulse missing (a smudged or clipped one): then the rows that fit best.
    """
    p = params or PulseParams()
    if len(pulses) < MIN_PULSES:
        return PulseFit(False, f"found {len(pulses)} calibration pulse(s), need {MIN_PULSES} of the {N_ROWS} rows'",
                        pulses)
    heights = pulses[:, 3] - pulses[:, 2]
    x0 = page.time_to_x(0.0)
    best: PulseFit | None = None
    # Any k of the pulses found, in their top-to-bottom order: a QRS that looks like a pulse may sit
    # between two rows' pulses (find_pulses keeps at most N_ROWS + 2, so this stays a few dozen fits).
    k = min(len(pulses), N_ROWS)
    candidates = [(list(idx), rows) for idx in combinations(range(len(pulses)), k) for rows in _row_choices(k)]
    for idx, rows in candidates:  # pulses of one height
        q = pulses[idx]
        hq = heights[idx]
        if hq.max() > p.max_height_ratio * hq.min():
            continue
        src, dst = [], []
        for r, (_, xf, yt, yf) in zip(rows, q):
            base = page.baseline_y(r)
            src += [(xf, yf), (xf, yt)]
            dst += [(x0, base), (x0, base - CAL_PULSE_MV * page.px_per_mv)]
        src_a, dst_a = np.array(src, np.float32), np.array(dst, np.float32)
        m, _ = cv2.estimateAffinePartial2D(src_a, dst_a, method=cv2.LMEDS)
        if m is None:
            continue
        moved = src_a @ m[:, :2].T + m[:, 2]
        err = float(np.mean(np.linalg.norm(moved - dst_a, axis=1))) / page.px_per_mm
        if best is None or err < best.error_mm:
            best = PulseFit(err <= p.max_fit_error_mm, "", q, m.astype(np.float64), err)
    if best is None:
        return PulseFit(False, "no calibration pulses of one height", pulses)
    if not best.ok:
        best.message = (f"the {len(best.pulses)} calibration pulses sit {best.error_mm:.1f} mm from a 3x4 + rhythm page's rows "
                        f"(more than {p.max_fit_error_mm} mm)")
    return best


def _time_scale_from_rhythm_end(rect: np.ndarray, page: Page, p: PulseParams) -> float | None:
    """Factor that moves the rhythm strip's last ink onto 10 s (None when it is not near there)."""
    prob = trace_probability(rect)
    top, bot = page.row_band(N_ROWS - 1)
    band = prob[int(max(0, top)):int(min(prob.shape[0], bot))]
    cols = np.flatnonzero((band >= 0.5).sum(axis=0) >= 1)
    x0, x10 = page.time_to_x(0.0), page.time_to_x(paper.DURATION_S)
    if not cols.size:
        return None
    end = float(cols[-1])
    if end >= prob.shape[1] - 2 or abs(end - x10) > p.end_tolerance * (x10 - x0):
        return None  # cut at the picture's edge, or not a 10 s strip
    return (x10 - x0) / max(end - x0, 1.0)


def _row_slope(rect: np.ndarray, page: Page, max_slope: float = 0.15) -> float:
    """Slope (dy/dx) of the trace rows of a page warped by its pulses: what a camera's tilt left.

    The slope whose shear (about signal time 0) stacks the ink of the trace area into the sharpest
    row profile: the rows' baselines, any grid lines and text all lie level on the paper. A profile
    and not a per-row fit, because a strong tilt carries a row out of its canonical band.
    """
    prob = trace_probability(rect)
    x0, x10 = int(page.time_to_x(0.0)), int(page.time_to_x(paper.DURATION_S))
    top = int(max(0, page.row_band(0, above_mv=3.0)[0]))
    area = cv2.resize(prob[top:, x0:x10].astype(np.float32), None, fx=0.25, fy=0.25, interpolation=cv2.INTER_AREA)
    ys, xs = np.nonzero(area >= 0.25)
    if ys.size < 50:
        return 0.0
    w = area[ys, xs].astype(np.float64)
    n_bins = area.shape[0] + int(max_slope * area.shape[1]) * 2 + 2
    best, best_score = 0.0, -1.0
    for slope in np.linspace(-max_slope, max_slope, 121):
        yy = np.round(ys - slope * xs).astype(np.int64) + n_bins // 2
        score = float(np.sum(np.bincount(yy, weights=w, minlength=n_bins) ** 2))
        if score > best_score:
            best, best_score = float(slope), score
    return best


def pulses_offset_mm(page_bgr: np.ndarray, page: Page = paper.CANONICAL, params: PulseParams | None = None
                     ) -> float | None:
    """How far (page mm, median over the page) the calibration pulses of a page drawn at ``page``'s
    size say it sits from the canonical geometry; None when they are not found or do not fit.

    A pulse may end up to :data:`MAX_PULSE_GAP_S` before the trace starts (carts differ; ECG-Image-Kit
    ends it right there): a shift to the right within that is no evidence against the page as it is.
    """
    fit = fit_pulses(find_pulses(page_bgr, params), page, params)
    if not fit.ok or fit.matrix is None:
        return None
    H, W = page.size
    yy, xx = np.mgrid[0:H:16, 0:W:16]
    pts = np.stack([xx.ravel(), yy.ravel()], axis=1).astype(np.float64)
    d = pts @ fit.matrix[:, :2].T + fit.matrix[:, 2] - pts
    d[:, 0] -= np.clip(np.median(d[:, 0]), 0.0, MAX_PULSE_GAP_S * page.px_per_s)
    return float(np.median(np.linalg.norm(d, axis=1))) / page.px_per_mm


def register_by_pulses(image_bgr: np.ndarray, page: Page = paper.CANONICAL, params: PulseParams | None = None,
                       to_input: np.ndarray | None = None) -> tuple[RectifiedPage | None, PulseFit]:
    """The page warped onto ``page`` by its calibration pulses (unsure, ``method="pulses"``), or None and why.

    ``image_bgr`` should be the picture as taken (square pixels: the fit assumes paper's mm are square);
    ``to_input`` (3x3) maps its px into the px of the image stage 1 was given (stage 0's homography), so
    the result's ``map_xy`` points into that image as a stage-1 result does.
    """
    p = params or PulseParams()
    fit = fit_pulses(find_pulses(image_bgr, p), page, p)
    if not fit.ok or fit.matrix is None:
        return None, fit
    H, W = page.size

    def warp(m: np.ndarray) -> np.ndarray:
        return cv2.warpAffine(image_bgr, m, (W, H), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_CONSTANT,
                              borderValue=(255, 255, 255))

    m = fit.matrix
    rect = warp(m)
    x0 = page.time_to_x(0.0)
    slope = _row_slope(rect, page)
    if abs(slope) > 1e-3:  # a tilted camera: the pulses' column and the rows are not square; level the rows
        m = np.array([[1.0, 0.0, 0.0], [-slope, 1.0, slope * x0]]) @ np.vstack([m, [0.0, 0.0, 1.0]])
        rect = warp(m)
    how = "the time scale assumes 25 mm/s on square paper"
    k = _time_scale_from_rhythm_end(rect, page, p)
    if k is not None:  # stretch x about signal time 0 so the strip ends at 10 s
        stretch = np.array([[k, 0.0, x0 * (1 - k)], [0.0, 1.0, 0.0]])
        m = stretch @ np.vstack([m, [0.0, 0.0, 1.0]])
        rect = warp(m)
        how = f"the time scale set by the rhythm strip's end at 10 s ({100 * (k - 1):+.1f} %)"
    fit.matrix = m
    inv = cv2.invertAffineTransform(m)
    map_xy = (identity_map(H, W) @ inv[:, :2].T.astype(np.float32) + inv[:, 2].astype(np.float32)).astype(np.float32)
    if to_input is not None:
        map_xy = cv2.perspectiveTransform(map_xy.reshape(-1, 1, 2), np.asarray(to_input, np.float64)).reshape(H, W, 2)
    msg = (f"registered by {len(fit.pulses)} calibration pulses, with no grid or lead labels to go by "
           f"(fit {fit.error_mm:.1f} mm); {how}")
    return RectifiedPage(image=rect, map_xy=map_xy, confidence=0.0, method="pulses", ok=False, message=msg), fit
