"""Ink map: a per-pixel "this is trace ink" score of a rectified page, and page furniture masked out.

The trace is dark and unsaturated; printed grids are coloured (red/pink/blue/green/brown: a high
channel maximum) or, on black-and-white scans, lighter and thinner than the trace. The page is
flat-fielded first so phone-photo shading does not read as ink; grey grid lines, long straight
strokes (page edges, folds) and the known positions of separator ticks and lead labels are removed
or weakened.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import cv2
import numpy as np
import scipy.fft

from ecgtrace import paper
from ecgtrace.paper import CANONICAL, Page
from ecgtrace.stages.memo import PageMemo
from ecgtrace.stages.steps import step
from ecgtrace.stages.trace.params import ClassicalParams

#: Median ink of a pixel column (row) above which it holds a grid line too dark to subtract.
LINE_VISIBLE = 0.2
#: Ink this much darker than such a line is kept in its column (a black trace on a grey line); a line
#: darker than 1 - this margin hides the trace entirely. Transfer bench, classical: bw 20.8 -> 22.5.
LINE_RESIDUAL_MARGIN = 0.2


#: Kernels at least this many taps long are applied by FFT in :func:`blur_wide` (shorter: direct is faster).
FFT_MIN_TAPS = 151


def _gaussian_taps(sigma: float) -> int:
    """The length of OpenCV's Gaussian kernel for a float image (``GaussianBlur`` with ksize (0, 0)): 8 sigma + 1, odd."""
    return int(round(sigma * 8 + 1)) | 1


def blur_wide(a: np.ndarray, sigma: float) -> np.ndarray:
    """``cv2.GaussianBlur(a, (0, 0), sigma)`` of a float32 image, by FFT when the kernel is long.

    The same kernel (OpenCV's size for float images, 8 sigma + 1 taps, normalised) and the same
    border (reflect-101), applied row-wise and column-wise as a product of spectra: the result
    agrees with the direct blur to its own float32 rounding (3e-4 of a 0..255 range), 10 times
    faster at sigma 80. (Averaging the page down and blurring there was faster still, but off by
    0.1, and that was enough to move a grid node on some pages.)
    """
    ks = _gaussian_taps(sigma)
    h, w = a.shape[:2]
    if ks < FFT_MIN_TAPS or min(h, w) <= ks:
        return gaussian_blur(a, sigma)
    c = a.shape[2] if a.ndim == 3 else 1
    g = cv2.getGaussianKernel(ks, sigma, cv2.CV_64F).ravel().astype(np.float32)
    r = ks // 2
    # channel planes stacked as rows: (c h, w), then transposed (c w, h); FFTs run along contiguous rows
    out = np.ascontiguousarray(np.asarray(a, dtype=np.float32).reshape(h, w, c).transpose(2, 0, 1)).reshape(c * h, w)
    for rows, n in ((h, w), (w, h)):
        padded = np.pad(out, ((0, 0), (r, r)), mode="reflect")  # numpy's "reflect" is OpenCV's BORDER_REFLECT_101
        # circular convolution: the wrapped-around samples are the first 2r ones, which are cut off
        size = scipy.fft.next_fast_len(n + 2 * r, real=True)
        spec = scipy.fft.rfft(padded, size, axis=1)
        spec *= scipy.fft.rfft(g, size)[None, :]
        out = scipy.fft.irfft(spec, size, axis=1)[:, 2 * r:2 * r + n]
        out = np.ascontiguousarray(out.reshape(c, rows, n).transpose(0, 2, 1)).reshape(c * n, rows)
    out = out.reshape(c, h, w)  # back in (c, h, w) after the two transposes
    return np.ascontiguousarray(out.transpose(1, 2, 0)) if a.ndim == 3 else out[0]


def blur_coarse(a: np.ndarray, sigma: float) -> np.ndarray:
    """A wide Gaussian blur computed on the image averaged down ``f`` times (``f`` a power of two, at most
    sigma / 6) and interpolated back: 1e-3 of the range off :func:`blur_wide`, another 10 times faster.

    The image is reflected as the direct blur does at its border; the variance of the averaging box
    and of the bilinear interpolation is taken off the small blur's.
    """
    f = 1 << max(0, int(np.floor(np.log2(sigma / 6.0)))) if sigma >= 12.0 else 1
    h, w = a.shape[:2]
    if f == 1 or min(h, w) < 8 * f:
        return blur_wide(a, sigma)
    pad = int(np.ceil(4.0 * sigma / f)) * f  # the direct kernel's reach (OpenCV truncates at 4 sigma)
    ph, pw = pad + (-(h + 2 * pad)) % f, pad + (-(w + 2 * pad)) % f  # whole cells of f px
    big = cv2.copyMakeBorder(np.asarray(a, dtype=np.float32), pad, ph, pad, pw, cv2.BORDER_REFLECT_101)
    bh, bw = big.shape[:2]
    small = cv2.resize(big, (bw // f, bh // f), interpolation=cv2.INTER_AREA)
    var = sigma * sigma - (f * f - 1) / 12.0 - f * f / 6.0  # minus the box and the interpolation
    small = gaussian_blur(small, float(np.sqrt(var)) / f)
    return cv2.resize(small, (bw, bh), interpolation=cv2.INTER_LINEAR)[pad:pad + h, pad:pad + w]


def channel_max_min(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel max and min over the channels of an (H, W, C) image: ``img.max(axis=2)``, ``img.min(axis=2)``,
    element-wise over the split channels (numpy's reduction over a 3-long last axis is ten times slower, and
    its maximum over strided channel views 20 % slower than OpenCV's split and max: 39 -> 32 ms, 200 dpi page)."""
    ch = cv2.split(np.ascontiguousarray(img))
    if len(ch) == 1:
        return ch[0], ch[0].copy()
    mx, mn = cv2.max(ch[0], ch[1]), cv2.min(ch[0], ch[1])
    for c in ch[2:]:
        mx, mn = cv2.max(mx, c), cv2.min(mn, c)
    return mx, mn


def on_two_cores(fn: Callable[..., Any], *args: Any) -> list:
    """``list(map(fn, *args))`` on two threads, or one where OpenCV is told to use one core (a batch worker):
    for the heavy numpy and OpenCV calls that release the GIL and run on a single core themselves."""
    with ThreadPoolExecutor(max(1, min(2, cv2.getNumThreads()))) as pool:
        return list(pool.map(fn, *args))


def column_median(a: np.ndarray) -> np.ndarray:
    """``np.median(a, axis=0)``, its left and right halves on two cores (the same numbers, column by column)."""
    w = a.shape[1] // 2
    return np.concatenate(on_two_cores(lambda cols: np.median(a[:, cols], axis=0), (slice(0, w), slice(w, None))))


def halves_on_two_cores(fn: Callable[[np.ndarray], np.ndarray], img: np.ndarray, reach: int) -> np.ndarray:
    """``fn(img)`` for a filter ``fn`` whose output row depends on the input rows within ``reach`` of it, with
    the top and bottom halves filtered on two cores (for OpenCV filters that run on one): the same pixels,
    since each half is filtered with the ``reach`` rows of the other beside it, so every window it takes is
    the whole picture's, and the picture's own top and bottom borders are where they were."""
    h = img.shape[0]
    if cv2.getNumThreads() < 2 or h < 4 * (2 * reach + 1):
        return fn(img)
    img = np.ascontiguousarray(img)

    def half(y0: int, y1: int) -> np.ndarray:
        a0, a1 = max(0, y0 - reach), min(h, y1 + reach)
        return fn(img[a0:a1])[y0 - a0:y1 - a0]

    return np.concatenate(on_two_cores(half, (0, h // 2), (h // 2, h)))


def median_blur(img: np.ndarray, ksize: int) -> np.ndarray:
    """``cv2.medianBlur(img, ksize)``, its halves on two cores (OpenCV runs it on one; stage 0's 900 px ink
    mask: 35 -> 20 ms)."""
    return halves_on_two_cores(lambda a: cv2.medianBlur(a, ksize), img, ksize // 2)


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """``cv2.GaussianBlur(img, (0, 0), sigma)`` of a float32 image. OpenCV spreads a one-channel blur over the
    cores but runs a three-channel one on one: that one's halves go on two cores (the same pixels; the
    pulse search's 550 x 1700 paper colour 40 -> 22 ms, a 200 dpi ink map's coarse one 9 -> 7 ms)."""
    def blur(a: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(a, (0, 0), sigma)

    if img.ndim == 2 or img.shape[2] == 1:
        return blur(img)
    return halves_on_two_cores(blur, img, _gaussian_taps(sigma) // 2)


def whiten_paper(image_bgr: np.ndarray, kernel_px: int | None = None, coarse: bool = False) -> np.ndarray:
    """The picture divided, channel by channel, by its local paper colour: paper reads (1, 1, 1) (float32).

    A max filter wider than the trace (and than the gap between grid lines) finds the paper in
    each channel, a blur smooths it. On white paper this is plain flat-fielding; on orange, pink
    or blue paper it also removes the paper's tint, so a black trace reads black and unsaturated
    and a red grid stays red, whatever colour the sheet is. ``coarse`` blurs at a lower resolution
    (:func:`blur_coarse`; the paper colour to 5e-4), 7-10 times faster: for the ink map, stage 0's
    skew search and the grid features of tinted paper. (On a page whose grid was barely found, even
    the float rounding of an FFT blur once moved a node across its contrast threshold and the
    lattice with it; since stage 1 lets unsure lattices pass through, the transfer bench's tinted
    pages read the same either way.)
    """
    return _whitened(image_bgr, paper_colour(image_bgr, kernel_px, coarse))


def _whitened(image_bgr: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """``image_bgr`` divided by its paper colour ``bg`` (floored at 40 of 255: a black blot is no paper)."""
    return image_bgr.astype(np.float32) / np.maximum(bg, 40.0)


def paper_colour(image_bgr: np.ndarray, kernel_px: int | None = None, coarse: bool = False) -> np.ndarray:
    """The local paper colour :func:`whiten_paper` divides by (float32, the picture's shape), before its floor."""
    k = kernel_px or max(3, int(round(image_bgr.shape[1] / 2200 * 9)) | 1)
    # the max filter on the 8-bit picture (the same maxima, several times faster than on floats)
    src = image_bgr if image_bgr.dtype == np.uint8 else image_bgr.astype(np.float32)
    bg = cv2.dilate(src, cv2.getStructuringElement(cv2.MORPH_RECT, (k, k))).astype(np.float32)
    return blur_coarse(bg, 3 * k) if coarse else gaussian_blur(bg, 3 * k)


def trace_probability(image_bgr: np.ndarray) -> np.ndarray:
    """Per-pixel trace-ink score in [0, 1] (float32) of a BGR or grey page.

    Darkness is measured on the *largest* channel of the paper-whitened picture
    (:func:`whiten_paper`), so a saturated grid line (red, blue, green) scores ~0
    however dark its hue is, on any colour of paper; remaining saturation is
    penalised, and a robust contrast stretch pushes the (lighter, thinner) grid of
    grey/B&W pages under the floor.
    """
    return ink_map(image_bgr)[0]


#: Stage 1 reads the ink of its rectified page (to register it by the calibration pulses) and stage 2 then
#: reads the same page again (with a model, after the ink of the network's smaller page: so two are kept).
_LAST: PageMemo[tuple[np.ndarray, np.ndarray]] = PageMemo(2)


def ink_map(image_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`trace_probability`, and which pixel columns are *blind*: a dark vertical grid line
    was in-painted there from its neighbours, so the ink a steep stroke left in them is lost.

    (Rows in-painted under dark horizontal lines are not treated alike: crediting them as
    unknown ink lets the path run along a line past a hard QRS; measured worse on black grids.)
    A page read again soon after (stage 1's registration, then stage 2) is computed once
    (:data:`_LAST` keeps the last two).
    """
    hit = _LAST.get(image_bgr)
    if hit is not None:
        return hit
    out = _ink_map(image_bgr)
    _LAST.put(image_bgr, out)
    return out


def _ink_map(image_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    img = image_bgr
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    with step("whiten"):
        bg = paper_colour(img, coarse=True)
    score = _dark_and_unsaturated(img, bg)
    w = score.shape[1]
    page = CANONICAL.scaled_to(w)
    with step("solid areas"):
        score = _erase_solid_areas(score, page)
    # The outer millimetre of a rectified page never holds a trace (the rhythm strip's baseline is 21 mm
    # above the bottom edge) but often a sliver of what lay beyond the sheet: a dark edge the path would follow.
    m = max(1, int(round(page.px_per_mm)))
    score[:m], score[-m:], score[:, :m], score[:, -m:] = 0.0, 0.0, 0.0, 0.0
    # grey/B&W grids survive the colour test; on a rectified page their lines are axis-aligned.
    # Vertical lines: the median down each pixel column (the trace covers a small part of it)
    # is the line's own ink; columns with a visible line are in-painted from the nearest clean
    # columns either side (a black grid is as dark as the trace, no contrast can split them).
    # Horizontal lines: their level is read in the right margin, past 10 s, where no trace runs
    # (a flat trace fills most of its own pixel row), and subtracted.
    with step("grid lines"):
        col_level = column_median(score)
        blind = col_level >= LINE_VISIBLE
        score = _remove_lines(score, col_level)
        xr = int(np.ceil(float(page.time_to_x(paper.DURATION_S)) + 0.5 * page.px_per_mm))
        if w - xr >= 8:
            score = _remove_lines(score.T, np.median(score[:, xr:], axis=1)).T
    if w - xr >= 8:
        with step("long lines"):
            score = _erase_long_lines(score, page, xr)
    score = np.clip(score, 0.0, 1.0)
    # robust stretch: the floor sits above paper and most grid, the top at solid ink
    with step("stretch"):  # two percentile calls (one with both interpolates in float64), one a core
        lo, hi = (float(v) for v in on_two_cores(lambda q: np.percentile(score, q), (80, 99.7)))
    hi = max(hi, lo + 0.15, 0.25)
    floor = lo + 0.25 * (hi - lo)
    return np.clip((score - floor) / (hi - floor), 0.0, 1.0).astype(np.float32), blind


def _dark_and_unsaturated(img: np.ndarray, bg: np.ndarray, bands: int = 8) -> np.ndarray:
    """Per pixel, the darkness of the whitened picture's largest channel times how unsaturated it is:
    the whitening (:func:`whiten_paper`) and the rest computed band by band of rows, on two cores
    (element-wise, so the same numbers; a band's temporaries stay in cache)."""
    h = img.shape[0]
    out = np.empty(img.shape[:2], np.float32)
    rows = max(1, -(-h // bands))

    def band(y0: int) -> None:
        part = slice(y0, min(h, y0 + rows))
        g = _whitened(img[part], bg[part])
        mx, mn = channel_max_min(g)
        dark = np.clip(1.0 - mx, 0.0, 1.0)
        sat = (mx - mn) / np.maximum(mx, 1.0 / 255.0)
        out[part] = dark * np.clip(1.0 - 1.5 * sat, 0.0, 1.0)

    on_two_cores(band, range(0, h, rows))
    return out


#: Dark areas at least this wide (mm) in both directions are not a pen stroke (the thickest pen is ~0.7 mm;
#: 1.5 mm also took the dense QRS blobs of bold traces on black-and-white scans: -2.5 dB on variant 0004).
SOLID_AREA_MM = 3.0


def _erase_solid_areas(score: np.ndarray, page: Page) -> np.ndarray:
    """Zero the ink of solid dark areas: the black fill a rotated or cropped picture has in its corners,
    the background beside the sheet, heavy shadows. A trace is a thin stroke; an area that holds a
    ``SOLID_AREA_MM`` square of ink everywhere is not one (and would pull the path along its edge)."""
    k = max(3, int(round(SOLID_AREA_MM * page.px_per_mm)))
    solid = cv2.morphologyEx((score >= 0.5).astype(np.uint8), cv2.MORPH_OPEN,
                             cv2.getStructuringElement(cv2.MORPH_RECT, (k, k)))
    if not solid.any():
        return score
    solid = cv2.dilate(solid, np.ones((5, 5), np.uint8))
    return np.where(solid > 0, 0.0, score).astype(score.dtype)


def clean_neighbours(bad: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The True positions of ``bad`` (columns holding a line) and, for each, the nearest False one left
    and right of it (the other side's where one side has none). ``bad`` must hold a False."""
    n = bad.size
    idx = np.arange(n)
    left = np.maximum.accumulate(np.where(~bad, idx, -1))
    right = np.minimum.accumulate(np.where(~bad, idx, n)[::-1])[::-1]
    cols = np.flatnonzero(bad)
    lc, rc = left[cols], right[cols]
    return cols, np.where(lc < 0, rc, lc), np.where(rc >= n, lc, rc)


def _remove_lines(score: np.ndarray, level: np.ndarray, visible: float = LINE_VISIBLE) -> np.ndarray:
    """Remove axis-aligned grid lines of known per-column ink ``level`` from ``score`` (H, W).

    Faint levels are subtracted; columns holding a visible line are in-painted from the
    nearest clean columns either side, so a trace crossing the line keeps its ink. Where the
    line is grey rather than black, ink clearly darker than the line itself is kept as well
    (:data:`LINE_RESIDUAL_MARGIN`): a steep stroke that runs down a grey line is then still there
    (ECG-Image-Kit's black-and-white pages: R waves whose down stroke fell on a major line were cut).
    """
    bad = level >= visible
    out = score - np.where(bad, 0.0, level)[None, :]
    if not bad.any() or bad.all():
        return out
    cols, lc, rc = clean_neighbours(bad)
    f = np.where(rc > lc, (cols - lc) / np.maximum(rc - lc, 1), 0.5)[None, :]
    lv = level[cols][None, :]
    above = (score[:, cols] - lv - LINE_RESIDUAL_MARGIN) / np.maximum(1.0 - lv - LINE_RESIDUAL_MARGIN, 0.05)
    out[:, cols] = np.maximum((1 - f) * out[:, lc] + f * out[:, rc], np.clip(above, 0.0, 1.0))
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


#: Columns pooled into one before the Hough transform of :func:`_flat_segments`.
HOUGH_POOL = 4


def pool_columns(m: np.ndarray, f: int) -> np.ndarray:
    """The maximum of every ``f`` whole columns of ``m`` (C order): ``m[:, :w // f * f].reshape(h, -1, f).max(axis=2)``
    as f - 1 element-wise maxima of strided columns (the same values; numpy's reduction over a 4-long last
    axis took 22 ms on a 200 dpi page, these 1.5)."""
    blocks = m[:, :m.shape[1] // f * f]
    pooled = np.ascontiguousarray(blocks[:, 0::f])
    for i in range(1, f):
        np.maximum(pooled, blocks[:, i::f], out=pooled)
    return pooled


def _flat_segments(m: np.ndarray, max_gap: int) -> np.ndarray:
    """(k, 4) x1, y1, x2, y2 of straight segments of ``m`` (uint8, 255 = ink) at least 0.3 of its width long.

    The probabilistic Hough transform runs on the mask with every :data:`HOUGH_POOL` columns pooled
    (their maximum): a near-horizontal line stays a line there, with a quarter of the pixels to vote
    (3 times faster on a page of bold traces); the ends, to a pooled column, are followed to the
    line's real ends afterwards.
    """
    f = HOUGH_POOL
    w = m.shape[1]
    pooled = pool_columns(m, f)
    lines = cv2.HoughLinesP(pooled, 1, np.pi / 720, threshold=int(0.15 * w / f), minLineLength=int(0.3 * w / f),
                            maxLineGap=max(1, max_gap // f))
    if lines is None:
        return np.zeros((0, 4))
    out = np.asarray(lines).reshape(-1, 4).astype(np.float64)
    out[:, [0, 2]] = out[:, [0, 2]] * f + 0.5 * (f - 1)  # the middle of the pooled columns
    return out


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
    views = (mask, mask.T)  # near-horizontal lines, then near-vertical ones (transposed)
    gaps = [max(3, int(0.002 * m.shape[1])) for m in views]
    # OpenCV's Hough transform runs on one core: the two directions take one each (the same segments,
    # its random order is seeded per call; ink map 226 -> 204 ms, ten ECG-Image-Kit pages, two cores)
    found = on_two_cores(_flat_segments, views, gaps)
    for transpose, m, max_gap, segments in zip((False, True), views, gaps, found):
        e = np.zeros(m.shape, np.uint8)  # C order: cv2 cannot draw into a transposed view
        for x1, y1, x2, y2 in segments:
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


def path_ink_radius(page: Page) -> float:
    """The vertical tolerance (px of ``page``) with which :func:`ink_near_path` judges every reader's path:
    2 px at 200 dpi, at least 1 px. One value for all readers, so their inks compare."""
    return max(1.0, 2.0 * page.px_per_mm / CANONICAL.px_per_mm)


def path_spans(shape: tuple[int, int], x: np.ndarray, y: np.ndarray, radius: float
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(column, first row, last row) per path point on a page of ``shape``: the rows within ``radius`` px of the
    point and of the span to the previous point, clipped to the page."""
    h, w = shape
    xi = np.clip(np.round(np.asarray(x, np.float64)).astype(int), 0, w - 1)
    y = np.asarray(y, np.float64)
    yp = np.concatenate([y[:1], y[:-1]])
    lo = np.clip(np.floor(np.minimum(y, yp) - radius), 0, h - 1).astype(int)
    hi = np.clip(np.ceil(np.maximum(y, yp) + radius), 0, h - 1).astype(int)
    return xi, lo, hi


def ink_near_path(prob: np.ndarray, x: np.ndarray, y: np.ndarray, radius: float) -> np.ndarray:
    """Page ink at a path read by another method (a model), per path point, with tolerance.

    The strongest ``prob`` within ``radius`` px of the point vertically, over the span to the
    previous point (a steep stroke covers it), and in the columns either side (a column
    in-painted under a dark grid line lost its ink). A model's own confidence says how sure
    the network is, not whether the picture holds a trace there; this does.
    """
    w = prob.shape[1]
    xi, lo, hi = path_spans(prob.shape, x, y, radius)
    # the max over rows [lo, hi] of the column and its two neighbours (the page's edge has none beyond), for
    # all points a row at a time: most spans are a few px, only a steep stroke's go on
    cols = [np.clip(xi + d, 0, w - 1) for d in (-1, 0, 1)]
    out = np.maximum.reduce([prob[lo, c] for c in cols]).astype(np.float32)
    idx = np.flatnonzero(hi > lo)
    k = 0
    while len(idx):
        k += 1
        r = lo[idx] + k
        out[idx] = np.maximum(out[idx], np.maximum.reduce([prob[r, c[idx]] for c in cols]))
        idx = idx[r < hi[idx]]
    return out
