"""Draw a 12-lead ECG on a page image, the way ECG-Image-Kit draws the competition pages.

Everything is placed through :class:`ecgtrace.paper.Page` (grid lines, row
baselines, calibration pulses, label centres, separator ticks), so the image
and its :class:`~ecgtrace.data.groundtruth.GroundTruth` agree exactly. Traces
are drawn with OpenCV fixed-point coordinates (1/16 px, anti-aliased); the
ground-truth polyline of a trace holds one fixed-point vertex per sample, and the
drawn curve (simplified for speed) stays within ``DRAW_TOL_PX`` = 0.1 px of it.

The grid background depends only on the page and a few style fields, so it is
drawn once per (page, grid style) and copied for every later page.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from ecgtrace.data.groundtruth import GroundTruth
from ecgtrace.errors import EcgTraceError
from ecgtrace.paper import (
    CANONICAL,
    LABEL_HEIGHT_MV,
    LAYOUT_3X4,
    LEADS,
    MARKERS,
    N_ROWS,
    RHYTHM_KEY,
    RHYTHM_LEAD,
    Page,
    window_indices,
)

BGR = tuple[int, int, int]


def _rgb(r: int, g: int, b: int) -> BGR:
    return (b, g, r)


#: Grid colour schemes: name -> (major, minor) in BGR. Red is the ECG-Image-Kit default.
GRID_SCHEMES: dict[str, tuple[BGR, BGR] | None] = {
    "red": (_rgb(255, 0, 0), _rgb(254, 223, 219)),
    "pink": (_rgb(243, 150, 170), _rgb(252, 224, 231)),
    "brown": (_rgb(160, 95, 60), _rgb(230, 205, 190)),
    "blue": (_rgb(50, 105, 215), _rgb(205, 218, 245)),
    "green": (_rgb(40, 150, 80), _rgb(205, 235, 210)),
    "grey": (_rgb(110, 110, 110), _rgb(215, 215, 215)),
    "bw": (_rgb(0, 0, 0), _rgb(165, 165, 165)),
    "none": None,
}
_SCHEME_P = {"red": 0.36, "pink": 0.14, "brown": 0.08, "blue": 0.08, "green": 0.07, "grey": 0.08, "bw": 0.12,
             "none": 0.07}
TRACE_PT_DEFAULT = 0.75  # line width of the trace, points (1/72 in)
#: Largest distance (px) between the drawn trace curve and its ground-truth polyline.
DRAW_TOL_PX = 0.1

_FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX, cv2.FONT_HERSHEY_PLAIN)


@dataclass(frozen=True)
class RenderStyle:
    """How a page looks; the geometry itself always comes from :class:`Page`.

    Widths are in pixels at 200 dpi and scale with the page dpi.
    """

    grid: str = "red"
    grid_major: BGR | None = None  # None: the scheme's colour
    grid_minor: BGR | None = None
    paper: BGR = (255, 255, 255)
    major_width: float = 1.4
    minor_width: float = 0.7
    show_minor: bool = True
    trace_color: BGR = (0, 0, 0)
    trace_width_pt: float = TRACE_PT_DEFAULT
    label_scale: float = 1.0
    label_font: int = cv2.FONT_HERSHEY_SIMPLEX
    header: bool = False
    separators: bool = True
    calibration: bool = True

    def __post_init__(self) -> None:
        if self.grid not in GRID_SCHEMES:
            raise EcgTraceError(f"unknown grid scheme {self.grid!r}; use one of {', '.join(GRID_SCHEMES)}")

    @property
    def colors(self) -> tuple[BGR, BGR] | None:
        """(major, minor) BGR grid colours, or None for no grid."""
        base = GRID_SCHEMES[self.grid]
        if base is None:
            return None
        return (self.grid_major or base[0], self.grid_minor or base[1])

    def trace_thickness(self, page: Page) -> int:
        """Integer OpenCV thickness for the trace at this page's dpi (0.75 pt = 2 px at 200 dpi)."""
        return max(1, int(round(self.trace_width_pt / 72.0 * page.dpi)))


def random_style(rng: np.random.Generator) -> RenderStyle:
    """A random page look: grid scheme, trace colour and width, label size, clutter.

    Continuous choices are drawn from small discrete sets so the grid cache hits.
    """
    names = list(_SCHEME_P)
    grid = str(rng.choice(names, p=np.array([_SCHEME_P[n] for n in names])))
    paper = [(255, 255, 255), (255, 255, 255), (250, 252, 253), (242, 248, 250), (246, 246, 246)][int(rng.integers(5))]
    grey = int(rng.choice([0, 0, 0, 20, 40, 60]))
    return RenderStyle(
        grid=grid,
        paper=paper,
        major_width=float(rng.choice([1.0, 1.4, 1.8])),
        minor_width=float(rng.choice([0.5, 0.7, 1.0])),
        show_minor=bool(rng.random() < 0.9),
        trace_color=(grey, grey, grey),
        trace_width_pt=float(rng.choice([0.4, 0.55, 0.75, 0.75, 0.75, 1.0])),
        label_scale=float(rng.uniform(0.8, 1.3)),
        label_font=int(rng.choice(_FONTS[:3])),
        header=bool(rng.random() < 0.6),
        separators=bool(rng.random() < 0.85),
        calibration=True,
    )


# --- grid background -------------------------------------------------------------
def _coverage(positions: np.ndarray, length: int, width: float) -> np.ndarray:
    """Fraction of each pixel [k - 0.5, k + 0.5] covered by lines of ``width`` centred at ``positions``."""
    cov = np.zeros(length, dtype=np.float32)
    half = max(width, 0.3) / 2.0
    for p in positions:
        k0, k1 = max(0, int(math.floor(p - half - 1))), min(length, int(math.ceil(p + half + 1)) + 1)
        if k1 <= k0:
            continue
        k = np.arange(k0, k1, dtype=np.float64)
        ov = np.clip(np.minimum(k + 0.5, p + half) - np.maximum(k - 0.5, p - half), 0.0, 1.0)
        cov[k0:k1] = np.maximum(cov[k0:k1], ov.astype(np.float32))
    if width < 0.6:  # very thin lines print lighter rather than thinner
        cov *= width / 0.6
    return cov


_ALPHA_LEVELS = 16  # coverage quantization of the grid; 16 x 16 (minor, major) pairs fit one 8-bit LUT


@lru_cache(maxsize=12)
def _grid_levels(page: Page, major_w: float, minor_w: float, show_minor: bool) -> np.ndarray:
    """(h, w) uint8 per-pixel index minor_level * 16 + major_level of the grid coverage (read-only, cached).

    A pixel's coverage is max(row coverage, column coverage), for the minor and
    for the major lines, so the whole grid is two small integers per pixel.
    """
    h, w = page.size
    scale = page.dpi / 200.0
    q = _ALPHA_LEVELS - 1

    def level(xs: np.ndarray, ys: np.ndarray, lw: float) -> np.ndarray:
        cy = np.rint(_coverage(ys, h, lw) * q).astype(np.uint8)
        cx = np.rint(_coverage(xs, w, lw) * q).astype(np.uint8)
        return np.maximum(cy[:, None], cx[None, :])

    idx = level(page.vline_x(np.arange(page.n_vlines)), page.hline_y(np.arange(page.n_hlines)), major_w * scale)
    if show_minor:
        xs, ys = page.minor_lines()
        idx = level(xs, ys, minor_w * scale) * np.uint8(_ALPHA_LEVELS) + idx
    idx = cv2.cvtColor(idx, cv2.COLOR_GRAY2BGR)  # 3 equal channels, as cv2.LUT wants for a colour table
    idx.setflags(write=False)
    return idx


@lru_cache(maxsize=8)
def _background(page: Page, paper: BGR, colors: tuple[BGR, BGR] | None, major_w: float, minor_w: float,
                show_minor: bool) -> np.ndarray:
    """Paper with its grid, read-only; cached per page and grid look (colours via a 256-entry table)."""
    h, w = page.size
    if colors is None:
        out = np.empty((h, w, 3), dtype=np.uint8)
        out[:] = np.asarray(paper, dtype=np.uint8)
        out.setflags(write=False)
        return out
    q = _ALPHA_LEVELS - 1
    a_min = (np.arange(256) // _ALPHA_LEVELS) / q
    a_maj = (np.arange(256) % _ALPHA_LEVELS) / q
    major, minor = (np.asarray(c, dtype=np.float64) for c in colors)
    base = np.asarray(paper, dtype=np.float64)
    lut = base + a_min[:, None] * (minor - base)
    lut = lut + a_maj[:, None] * (major - lut)
    lut = np.clip(np.rint(lut), 0, 255).astype(np.uint8).reshape(256, 1, 3)
    out = cv2.LUT(_grid_levels(page, major_w, minor_w, show_minor), lut)
    out.setflags(write=False)
    return out


def grid_background(page: Page, style: RenderStyle) -> np.ndarray:
    """The paper and grid of ``style`` on ``page`` (a fresh writable copy)."""
    return _background(page, tuple(style.paper), style.colors, style.major_width, style.minor_width,
                       style.show_minor).copy()


# --- text ----------------------------------------------------------------------------
_FIRST = ["A.", "J.", "M.", "K.", "S.", "R.", "L.", "T.", "E.", "P."]
_LAST = ["Smith", "Garcia", "Novak", "Tanaka", "Okafor", "Muller", "Rossi", "Kowalski", "Silva", "Nguyen", "Berg"]


def _header_lines(rng: np.random.Generator) -> list[list[str]]:
    """Columns of header text like an ECG cart prints: patient, intervals, interpretation."""
    hr = int(rng.integers(45, 131))
    col1 = [f"Name: {_FIRST[int(rng.integers(len(_FIRST)))]} {_LAST[int(rng.integers(len(_LAST)))]}",
            f"ID: {int(rng.integers(10**6, 10**7))}",
            f"{int(rng.integers(2000, 2025))}-{int(rng.integers(1, 13)):02d}-{int(rng.integers(1, 29)):02d}"
            f" {int(rng.integers(0, 24)):02d}:{int(rng.integers(0, 60)):02d}",
            f"Age: {int(rng.integers(18, 95))}  Sex: {'MF'[int(rng.integers(2))]}"]
    col2 = [f"Vent. rate {hr} BPM", f"PR interval {int(rng.integers(110, 220))} ms",
            f"QRS duration {int(rng.integers(70, 150))} ms",
            f"QT/QTc {int(rng.integers(320, 460))}/{int(rng.integers(380, 480))} ms",
            f"P-R-T axes {int(rng.integers(-30, 90))} {int(rng.integers(-30, 100))} {int(rng.integers(-30, 90))}"]
    interp = ["Sinus rhythm", "Normal ECG", "Sinus bradycardia", "Sinus tachycardia", "Borderline ECG",
              "Left axis deviation", "Nonspecific T wave abnormality", "Atrial fibrillation", "Abnormal ECG",
              "Unconfirmed report"]
    k = int(rng.integers(1, 4))
    col3 = [interp[int(i)] for i in rng.choice(len(interp), size=k, replace=False)]
    return [col1, col2, col3]


def _font_scale(font: int, cap_px: float) -> float:
    (_, h), _ = cv2.getTextSize("I", font, 1.0, 1)
    return cap_px / max(h, 1)


def _put_centered(img: np.ndarray, text: str, center: np.ndarray, font: int, scale: float, color: BGR,
                  thickness: int) -> None:
    (w, h), _ = cv2.getTextSize(text, font, scale, thickness)
    org = (int(round(center[0] - w / 2.0)), int(round(center[1] + h / 2.0)))
    cv2.putText(img, text, org, font, scale, color, thickness, cv2.LINE_AA)


def _draw_header(img: np.ndarray, page: Page, style: RenderStyle, rng: np.random.Generator) -> None:
    top_band = page.row_band(0)[0]  # never write into the first row's trace band
    cap = 0.22 * page.px_per_mv * rng.uniform(0.85, 1.15)  # ~2.2 mm capitals
    font = cv2.FONT_HERSHEY_SIMPLEX if rng.random() < 0.7 else cv2.FONT_HERSHEY_DUPLEX
    scale = _font_scale(font, cap)
    th = max(1, int(round(page.dpi / 200.0)))
    step = cap * 2.0
    x_cols = [0.35, 2.6, 5.2]  # in seconds of paper (page units)
    y0 = page.px_per_mm * rng.uniform(4.0, 9.0)
    for c, lines in enumerate(_header_lines(rng)):
        x = page.to_px(x_cols[c] + rng.uniform(0.0, 0.5), 0.0)[0]
        for r, line in enumerate(lines):
            y = y0 + (r + 1) * step
            if y > top_band - cap:
                break
            cv2.putText(img, line, (int(x), int(y)), font, scale, style.trace_color, th, cv2.LINE_AA)
    # speed/gain line in the bottom margin, below the rhythm strip's usual band
    if rng.random() < 0.5:
        y = page.height_px - 0.25 * page.px_per_mv
        x = page.to_px(0.4, 0.0)[0]
        cv2.putText(img, "25mm/s  10mm/mV  0.5-150 Hz", (int(x), int(y)), font, scale * 0.9, style.trace_color, th,
                    cv2.LINE_AA)


# --- traces --------------------------------------------------------------------------
def _fixed(x: np.ndarray, y: np.ndarray, page: Page) -> np.ndarray:
    """(N, 2) int32 OpenCV fixed-point (1/16 px) vertices, clipped to the page."""
    h, w = page.size
    xy = np.stack([np.clip(x, 0.0, w - 1.0), np.clip(y, 0.0, h - 1.0)], axis=1)
    return np.rint(xy * 16.0).astype(np.int32)


def _check_signals(signals: dict[str, np.ndarray], fs: float) -> int:
    if fs <= 0:
        raise EcgTraceError(f"sampling rate must be positive, got {fs}")
    missing = [lead for lead in LEADS if lead not in signals]
    if missing:
        raise EcgTraceError(f"signals lack lead(s) {', '.join(missing)}; pass all 12 of {', '.join(LEADS)}")
    n = len(signals[RHYTHM_LEAD])
    if n < 2:
        raise EcgTraceError("lead II holds fewer than 2 samples; pass 10 s of signal")
    for lead in LEADS:
        if len(signals[lead]) != n:
            raise EcgTraceError(f"lead {lead} has {len(signals[lead])} samples but II has {n}; pass equal lengths")
    return n


def identity_fwd_map(page: Page, stride: int = 20) -> np.ndarray:
    """(gh, gw, 2) float32 identity map sampled every ``stride`` px, covering the whole page."""
    h, w = page.size
    xs = np.arange(int(math.ceil(w / stride)) + 1, dtype=np.float32) * stride
    ys = np.arange(int(math.ceil(h / stride)) + 1, dtype=np.float32) * stride
    gx, gy = np.meshgrid(xs, ys)
    return np.stack([gx, gy], axis=-1)


def render_page(signals: dict[str, np.ndarray], fs: float, page: Page = CANONICAL, style: RenderStyle | None = None,
                rng: np.random.Generator | int | None = None) -> tuple[np.ndarray, GroundTruth]:
    """Draw a 3x4 + lead II rhythm page; returns (BGR uint8 image, ground truth).

    Args:
        signals: lead -> (n,) mV over the full record (all 12 leads, equal length, 10 s).
        fs: sampling rate of ``signals``.
        page: page geometry (``Page(dpi=100)`` for a smaller page).
        style: look of the page; random (from ``rng``) when ``None``.
        rng: generator or seed for the style and the header text.
    """
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    n = _check_signals(signals, fs)
    style = style or random_style(rng)
    img = grid_background(page, style)
    color = tuple(int(c) for c in style.trace_color)
    thick = style.trace_thickness(page)

    traces: dict[str, np.ndarray] = {}
    times: dict[str, np.ndarray] = {}
    mvs: dict[str, np.ndarray] = {}
    polys = []  # what is drawn: each trace simplified to within DRAW_TOL_PX of its GT polyline
    for key in [lead for row in LAYOUT_3X4 for lead in row] + [RHYTHM_KEY]:
        lead = RHYTHM_LEAD if key == RHYTHM_KEY else key
        i0, i1 = window_indices(key, fs, n)
        t = np.arange(i0, i1, dtype=np.float64) / fs
        mv = np.nan_to_num(np.asarray(signals[lead][i0:i1], dtype=np.float64))
        x, y = page.lead_to_px(key, t, mv)
        pts = _fixed(x, y, page)
        # Many samples fall within one pixel; drawing every one is slow (AA thick segments) and
        # invisible. Douglas-Peucker keeps the drawn curve within DRAW_TOL_PX of the GT polyline.
        polys.append(cv2.approxPolyDP(pts.reshape(-1, 1, 2), DRAW_TOL_PX * 16.0, False).reshape(-1, 2))
        traces[key] = pts.astype(np.float64) / 16.0  # exactly what is drawn
        times[key] = t
        mvs[key] = mv
    if style.calibration:
        polys += [_fixed(p[:, 0], p[:, 1], page) for p in (page.calibration_pulse(r) for r in range(N_ROWS))]
    if style.separators:
        polys += [_fixed(p[:, 0], p[:, 1], page) for p in page.separator_ticks()]
    cv2.polylines(img, polys, False, color, thick, cv2.LINE_AA, shift=4)

    # lead labels, centred on the canonical label centres
    cap = LABEL_HEIGHT_MV * page.px_per_mv * style.label_scale
    scale = _font_scale(style.label_font, cap)
    lth = max(1, int(round(cap / 12.0)))
    for m in MARKERS:
        _put_centered(img, RHYTHM_LEAD if m == RHYTHM_KEY else m, page.label_center(m), style.label_font, scale,
                      color, lth)
    if style.header:
        _draw_header(img, page, style, rng)

    gpts, gidx = page.grid_points()
    gt = GroundTruth(
        image_size=page.size,
        traces=traces,
        trace_times=times,
        trace_mv=mvs,
        markers=page.label_centers.copy(),
        grid_points=gpts,
        grid_index=gidx,
        fwd_map=identity_fwd_map(page, 20),
        map_stride=20,
        orientation=0,
        page_dpi=float(page.dpi),
        variant="0001",
        grid_visible=style.colors is not None,
        extra={"fs": np.float64(fs)},
    )
    return img, gt


def trace_pixel_errors(img: np.ndarray, gt: GroundTruth, half: int = 4) -> np.ndarray:
    """How far drawn ink sits from the ground truth: |ink centroid - GT y| (px) per flat trace column.

    Used by the tests and ``bench/bench_render.py`` to check that the polylines are where the ink is.

    Ink = 255 - max(B, G, R): black trace ink counts, a red/pink grid does not. Columns where
    the polyline is steep (a column then holds a vertical run of ink) are skipped.
    """
    ink = 255.0 - img.max(axis=2).astype(np.float64)
    errs = []
    for poly in gt.traces.values():
        x, y = poly[:, 0], poly[:, 1]
        cols = np.arange(int(np.ceil(x[0])) + 3, int(np.floor(x[-1])) - 3, 2)
        gy = np.interp(cols, x, y)
        slope = np.abs(np.gradient(gy, cols))
        for c, yy, sl in zip(cols, gy, slope):
            if sl > 0.25 or not half < yy < img.shape[0] - half - 1:
                continue
            y0 = int(round(yy)) - half
            w = ink[y0:y0 + 2 * half + 1, c]
            w = np.where(w > 20, w, 0.0)
            if w.sum() > 0:
                errs.append(abs(y0 + float((w * np.arange(len(w))).sum() / w.sum()) - yy))
    return np.asarray(errs)
