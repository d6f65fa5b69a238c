"""Draw a 12-lead ECG on a page image, the way ECG-Image-Kit draws the competition pages.

Everything is placed through :class:`ecgtrace.paper.Page` (grid lines, row
baselines, calibration pulses, label centres, lead switches), so the image
and its :class:`~ecgtrace.data.groundtruth.GroundTruth` agree exactly. Traces
are drawn with OpenCV fixed-point coordinates (1/16 px); the ground-truth
polyline of a trace holds one fixed-point vertex per sample, and the drawn
curve (simplified for speed) stays within ``DRAW_TOL_PX`` = 0.1 px of it.

Every drawing convention is a field of :class:`RenderStyle`. ``RenderStyle()`` is
the one fixed look (tests, demo, benchmarks); :func:`random_style` draws each field
per page from a wide distribution, so that a model trained on these pages cannot
learn one renderer's habits (a stage-2 model trained on a fixed look read
ECG-Image-Kit's thick lead-switch bars as trace): lead-switch marks, calibration
pulse, labels, pen, grid, paper, source resolution, text blocks, and
ECG-Image-Kit's own augmentation (:class:`ecgtrace.data.distort.EikAugment`,
applied by ``apply_variant`` so that the clean page keeps the canonical geometry).

A page drawn from a lower (or higher) resolution source is drawn on
``Page(dpi=source_dpi)`` and scaled to the requested page by an exact affine map:
page coordinates are proportional to the dpi, so the ground truth is the drawn
positions times ``page.dpi / source_dpi``.

The grid background depends only on the page and a few style fields, so it is
drawn once per (page, grid style) and copied for every later page.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from ecgtrace.data.distort import EIK_AUGMENT_KEY, EikAugment
from ecgtrace.data.groundtruth import GroundTruth
from ecgtrace.errors import EcgTraceError
from ecgtrace.paper import (
    CAL_PULSE_MV,
    CAL_PULSE_S,
    CANONICAL,
    LABEL_HEIGHT_MV,
    LAYOUT_3X4,
    LEADS,
    LEFT_MARGIN_S,
    MARKERS,
    N_COLUMNS,
    N_ROWS,
    PEN_OFFSET_PX,
    RHYTHM_KEY,
    RHYTHM_LEAD,
    ROW_BASELINES_MV,
    SEPARATOR_HALF_MV,
    SIGNAL_X0_S,
    Page,
    lead_row_col,
    window_indices,
)

BGR = tuple[int, int, int]


def _rgb(r: int, g: int, b: int) -> BGR:
    return (b, g, r)


#: Grid colour schemes: name -> (major, minor) in BGR. Red is the ECG-Image-Kit default, ``eik_bw``
#: its ``--random_bw`` page; ``random`` stands for per-page random colours (``grid_major`` / ``grid_minor``,
#: as ECG-Image-Kit's ``--random_grid_color``; the colours here are only its fallback).
GRID_SCHEMES: dict[str, tuple[BGR, BGR] | None] = {
    "red": (_rgb(255, 0, 0), _rgb(254, 223, 219)),
    "pink": (_rgb(243, 150, 170), _rgb(252, 224, 231)),
    "brown": (_rgb(160, 95, 60), _rgb(230, 205, 190)),
    "blue": (_rgb(50, 105, 215), _rgb(205, 218, 245)),
    "green": (_rgb(40, 150, 80), _rgb(205, 235, 210)),
    "grey": (_rgb(110, 110, 110), _rgb(215, 215, 215)),
    "bw": (_rgb(0, 0, 0), _rgb(165, 165, 165)),
    "eik_bw": (_rgb(102, 102, 102), _rgb(191, 191, 191)),
    "random": (_rgb(120, 60, 60), _rgb(200, 170, 170)),
    "none": None,
}
_SCHEME_P = {"red": 0.22, "pink": 0.07, "brown": 0.05, "blue": 0.05, "green": 0.05, "grey": 0.05, "bw": 0.07,
             "eik_bw": 0.08, "random": 0.26, "none": 0.10}
TRACE_PT_DEFAULT = 0.75  # line width of the trace, points (1/72 in)
#: Largest distance (px) between the drawn trace curve and its ground-truth polyline.
DRAW_TOL_PX = 0.1

#: Lead-switch marks: ``tick`` a thin line in the trace pen (ecgtrace's old look), ``bar`` a short thick
#: filled bar (ECG-Image-Kit), ``gap`` the trace interrupted (paper shows through), ``none``.
SWITCH_MARKS: tuple[str, ...] = ("tick", "bar", "gap", "none")
#: Calibration pulse shapes over [t0, t0 + width]: ``tails`` baseline-up-top-down-baseline (a quarter
#: of the width each side), ``box`` up at t0 and down at t0 + width (ECG-Image-Kit's dc pulse),
#: ``step`` up at t0, down at t0 + width, then the baseline on to the signal start.
CAL_SHAPES: tuple[str, ...] = ("tails", "box", "step")

_HERSHEY = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX, cv2.FONT_HERSHEY_TRIPLEX,
            cv2.FONT_HERSHEY_PLAIN, cv2.FONT_HERSHEY_SIMPLEX | cv2.FONT_ITALIC)
_FONTS = _HERSHEY  # kept for callers of the old name
#: TrueType fonts shipped with matplotlib (a dependency); DejaVu Sans is what ECG-Image-Kit prints with.
TTF_FONTS: tuple[str, ...] = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf",
                              "DejaVuSans-Oblique.ttf")
Font = int | str  # an OpenCV Hershey font id, or the file name of one of TTF_FONTS


@dataclass(frozen=True)
class RenderStyle:
    """How a page looks; the geometry itself always comes from :class:`Page`.

    Widths are in pixels at 200 dpi and scale with the page dpi; pen widths are in points.
    The defaults are ecgtrace's classic look (what tests, the demo and benchmarks draw).

    Attributes:
        grid, grid_major, grid_minor: colour scheme of :data:`GRID_SCHEMES` and optional BGR overrides.
        paper: BGR paper colour.
        major_width, minor_width, show_minor: grid line widths (px at 200 dpi); minor grid on/off.
        grid_inset_mm: blank paper margin (mm) at each page edge where no grid is printed.
        trace_color, trace_width_pt, antialias: the pen (antialias False: hard 8-connected lines).
        switch_mark, switch_height_mv, switch_width_pt, switch_offset_mv: the lead-switch mark
            (:data:`SWITCH_MARKS`): its height, width (None: the trace pen) and centre relative to the
            baseline. For ``gap`` the width is that of the gap.
        calibration, cal_shape, cal_t0_s, cal_width_s: calibration pulse present, shape
            (:data:`CAL_SHAPES`), start and width (page seconds; it always ends by the signal start).
        labels, label_scale, label_font, label_dx_s, label_dy_mv, label_anchor: lead labels drawn or
            not, size, font (:data:`Font`), offset from the canonical centre, and ``center`` (centred
            there) or ``left`` (text starts at the column start plus the offset, ECG-Image-Kit's
            below-left labels). The ground-truth markers stay the canonical anchors either way.
        header, header_kind: text block above the first row (``cart``: patient / intervals /
            interpretation columns; ``eik``: ECG-Image-Kit's ID / Name / Date fields).
        footer: "25mm/s 10mm/mV" line below the rhythm strip (ECG-Image-Kit prints it on every page).
        text_font: font of header and footer (None: the label font).
        source_dpi: resolution the page is drawn at before it is scaled to the requested page
            (None: drawn at the page's own dpi).
        augment: ECG-Image-Kit's augmentation for ``apply_variant`` (None: none).
        separators: legacy switch; False draws no lead-switch mark whatever ``switch_mark`` says.
    """

    grid: str = "red"
    grid_major: BGR | None = None  # None: the scheme's colour
    grid_minor: BGR | None = None
    paper: BGR = (255, 255, 255)
    major_width: float = 1.4
    minor_width: float = 0.7
    show_minor: bool = True
    grid_inset_mm: float = 0.0
    trace_color: BGR = (0, 0, 0)
    trace_width_pt: float = TRACE_PT_DEFAULT
    antialias: bool = True
    switch_mark: str = "tick"
    switch_height_mv: float = 2 * SEPARATOR_HALF_MV
    switch_width_pt: float | None = None
    switch_offset_mv: float = 0.0
    calibration: bool = True
    cal_shape: str = "tails"
    cal_t0_s: float = LEFT_MARGIN_S
    cal_width_s: float = CAL_PULSE_S
    labels: bool = True
    label_scale: float = 1.0
    label_font: Font = cv2.FONT_HERSHEY_SIMPLEX
    label_dx_s: float = 0.0
    label_dy_mv: float = 0.0
    label_anchor: str = "center"
    header: bool = False
    header_kind: str = "cart"
    footer: bool = False
    text_font: Font | None = None
    source_dpi: float | None = None
    augment: EikAugment | None = field(default=None)
    separators: bool = True

    def __post_init__(self) -> None:
        if self.grid not in GRID_SCHEMES:
            raise EcgTraceError(f"unknown grid scheme {self.grid!r}; use one of {', '.join(GRID_SCHEMES)}")
        if self.switch_mark not in SWITCH_MARKS:
            raise EcgTraceError(f"unknown lead-switch mark {self.switch_mark!r}; use one of {', '.join(SWITCH_MARKS)}")
        if self.cal_shape not in CAL_SHAPES:
            raise EcgTraceError(f"unknown calibration shape {self.cal_shape!r}; use one of {', '.join(CAL_SHAPES)}")
        if self.cal_t0_s < 0 or self.cal_width_s <= 0 or self.cal_t0_s + self.cal_width_s > SIGNAL_X0_S + 1e-9:
            raise EcgTraceError(f"calibration pulse [{self.cal_t0_s}, {self.cal_t0_s + self.cal_width_s}] s must lie "
                                f"in [0, {SIGNAL_X0_S}] s, before the signal starts")
        if self.label_anchor not in ("center", "left"):
            raise EcgTraceError(f"label_anchor must be 'center' or 'left', got {self.label_anchor!r}")
        if self.header_kind not in ("cart", "eik"):
            raise EcgTraceError(f"header_kind must be 'cart' or 'eik', got {self.header_kind!r}")
        if isinstance(self.label_font, str) and self.label_font not in TTF_FONTS:
            raise EcgTraceError(f"unknown font {self.label_font!r}; use a Hershey id or one of {', '.join(TTF_FONTS)}")
        if self.source_dpi is not None and not 10 <= self.source_dpi <= 1200:
            raise EcgTraceError(f"source_dpi must be within 10..1200, got {self.source_dpi}")

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


def _pick(rng: np.random.Generator, values, p=None):
    """One element of ``values`` (any type), optionally with probabilities ``p``."""
    return values[int(rng.choice(len(values), p=None if p is None else np.asarray(p, float) / np.sum(p)))]


@dataclass(frozen=True)
class StyleMix:
    """How often :func:`random_style` draws the rarer looks (training may ask for more of one).

    Attributes:
        augment_p: share of pages that get ECG-Image-Kit's own augmentation (:class:`EikAugment`).
        wrinkle_p: share of those augmented pages that also get its ``--wrinkles`` texture.
    """

    augment_p: float = 0.35
    wrinkle_p: float = 0.35

    def __post_init__(self) -> None:
        for name in ("augment_p", "wrinkle_p"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise EcgTraceError(f"StyleMix.{name} is a share of pages, 0..1; got {v}")


def random_eik_augment(rng: np.random.Generator, wrinkle_p: float = StyleMix.wrinkle_p) -> EikAugment:
    """ECG-Image-Kit's ``--augment -rot 5 -noise 50 -c 0.02``, ``--random_padding`` and ``--wrinkles``, as it draws them.

    ``wrinkle_p`` changes only which pages are wrinkled: the draws before it are the same.
    """
    temp = None
    if rng.random() < 0.8:  # its two bands: warm (orange paper) or cold (bluish)
        temp = float(rng.uniform(2000, 4000) if rng.random() < 0.5 else rng.uniform(10000, 20000))
    return EikAugment(
        noise_sigma=float(rng.uniform(0, 50)) if rng.random() < 0.85 else 0.0,
        temperature_k=temp,
        rotate_deg=float(rng.uniform(-5, 5)) if rng.random() < 0.8 else 0.0,
        crop=float(rng.uniform(0, 0.02)) if rng.random() < 0.6 else 0.0,
        pad=float(rng.uniform(0.02, 0.1)) if rng.random() < 0.25 else 0.0,
        corner_fill=(0, 0, 0) if rng.random() < 0.7 else (255, 255, 255),
        wrinkles=float(rng.uniform(0.25, 0.7)) if rng.random() < wrinkle_p else 0.0,  # its --wrinkles
    )


def _random_grid_colors(rng: np.random.Generator, paper: BGR) -> tuple[BGR, BGR]:
    """ECG-Image-Kit's random grid: major anywhere up to mid-bright, minor independent or a lighter major."""
    major = rng.uniform(0, 200, 3)
    if rng.random() < 0.55:  # independent colours, as --random_grid_color draws them (minor often not lighter)
        minor = rng.uniform(0, 235, 3)
    else:  # a paper-like minor grid: the major colour faded toward the paper
        minor = major + rng.uniform(0.45, 0.85) * (np.asarray(paper, float) - major)
    return tuple(int(v) for v in major), tuple(int(v) for v in minor)


def random_style(rng: np.random.Generator, mix: StyleMix = StyleMix()) -> RenderStyle:
    """A random page look: every drawing convention drawn per page (see the module docstring).

    ``mix`` sets the share of augmented and wrinkled pages; the default mix draws the pages it always did.

    Grid widths and source resolutions come from small discrete sets so the grid-coverage cache
    (keyed by page and widths) hits; colours are free (a colour change costs one table lookup).
    """
    grid = _pick(rng, list(_SCHEME_P), list(_SCHEME_P.values()))
    paper = _pick(rng, [(255, 255, 255), (250, 252, 253), (242, 248, 250), (246, 246, 246), (235, 245, 252),
                        (248, 240, 250), (252, 246, 238), (230, 238, 240)],
                  [0.45, 0.1, 0.1, 0.1, 0.07, 0.06, 0.06, 0.06])
    major = minor = None
    if grid == "random":
        major, minor = _random_grid_colors(rng, paper)
    if rng.random() < 0.75:  # grey to black pen (ECG-Image-Kit: grey 0..50)
        g = int(rng.uniform(0, 70))
        trace_color = (g, g, g)
    else:  # coloured pens and carts: dark blue, green, red, brown, violet
        trace_color = _pick(rng, [(110, 30, 10), (40, 90, 20), (20, 20, 130), (20, 50, 90), (90, 20, 70)])
    trace_pt = float(np.exp(rng.uniform(np.log(0.3), np.log(2.0))))  # 0.3-2 pt, log-uniform
    mark = _pick(rng, SWITCH_MARKS, [0.25, 0.4, 0.15, 0.2])
    if mark == "bar":  # ECG-Image-Kit: ~0.7 mV high, ~1.5-2 pt wide, hanging below the baseline
        sw_h, sw_w, sw_off = rng.uniform(0.4, 1.2), float(rng.uniform(1.0, 4.0)), rng.uniform(-0.5, 0.1)
    elif mark == "gap":
        sw_h, sw_w, sw_off = rng.uniform(1.0, 3.0), float(rng.uniform(1.0, 6.0)), 0.0
    else:
        sw_h, sw_w, sw_off = rng.uniform(0.3, 1.5), None if rng.random() < 0.6 else float(rng.uniform(0.3, 2)), \
            rng.uniform(-0.4, 0.4)
    cal_w = float(_pick(rng, [0.1, 0.15, 0.2, 0.2, 0.2]))
    cal_t0 = float(rng.uniform(0.2, SIGNAL_X0_S - cal_w))
    label_font = _pick(rng, [*_HERSHEY, *TTF_FONTS], [0.1, 0.08, 0.06, 0.04, 0.04, 0.03, 0.35, 0.1, 0.08, 0.06, 0.06])
    return RenderStyle(
        grid=grid,
        grid_major=major,
        grid_minor=minor,
        paper=paper,
        major_width=float(_pick(rng, [0.8, 1.0, 1.4, 1.8, 2.4])),
        minor_width=float(_pick(rng, [0.3, 0.5, 0.7, 1.0])),
        show_minor=bool(rng.random() < 0.85),
        grid_inset_mm=float(_pick(rng, [0.0, 2.0, 5.0, 10.0], [0.8, 0.07, 0.08, 0.05])),
        trace_color=trace_color,
        trace_width_pt=trace_pt,
        antialias=bool(rng.random() < 0.85),
        switch_mark=mark,
        switch_height_mv=float(sw_h),
        switch_width_pt=sw_w,
        switch_offset_mv=float(sw_off),
        calibration=bool(rng.random() < 0.9),
        cal_shape=_pick(rng, CAL_SHAPES, [0.35, 0.4, 0.25]),
        cal_t0_s=cal_t0,
        cal_width_s=cal_w,
        labels=bool(rng.random() < 0.93),
        label_scale=float(rng.uniform(0.6, 1.6)),
        label_font=label_font,
        label_dx_s=float(rng.uniform(-0.12, 0.1)),
        label_dy_mv=float(rng.uniform(-0.4, 0.35)),
        label_anchor="left" if rng.random() < 0.5 else "center",
        header=bool(rng.random() < 0.6),
        header_kind="eik" if rng.random() < 0.5 else "cart",
        footer=bool(rng.random() < 0.6),
        text_font=None if rng.random() < 0.5 else _pick(rng, [*_HERSHEY[:3], *TTF_FONTS[:3]]),
        source_dpi=float(_pick(rng, [50, 75, 100, 125, 150, 200, 250, 300],
                               [0.07, 0.07, 0.1, 0.07, 0.1, 0.45, 0.07, 0.07])),
        augment=random_eik_augment(rng, mix.wrinkle_p) if rng.random() < mix.augment_p else None,
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
                show_minor: bool, inset_mm: float = 0.0) -> np.ndarray:
    """Paper with its grid, read-only; cached per page and grid look (colours via a 256-entry table).

    ``inset_mm`` > 0 leaves that much blank paper at every edge (grid printed only inside).
    """
    h, w = page.size
    if colors is not None and inset_mm > 0:
        out = _background(page, paper, colors, major_w, minor_w, show_minor).copy()
        m = int(round(inset_mm * page.px_per_mm))
        blank = np.ones((h, w), bool)
        blank[m:h - m, m:w - m] = False
        out[blank] = np.asarray(paper, dtype=np.uint8)
        out.setflags(write=False)
        return out
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
                       style.show_minor, float(style.grid_inset_mm)).copy()


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


def _eik_header_lines(rng: np.random.Generator) -> list[list[str]]:
    """ECG-Image-Kit's ``--print_header`` fields: ID and name, then date and patient data."""
    name = f"{_FIRST[int(rng.integers(len(_FIRST)))]} {_LAST[int(rng.integers(len(_LAST)))]}"
    col1 = [f"ID: {int(rng.integers(0, 10**5)):05d}", f"Date: {int(rng.integers(1, 29)):02d}/"
            f"{int(rng.integers(1, 13)):02d}/{int(rng.integers(1990, 2025))}",
            f"Height: {int(rng.integers(150, 200))} cm"]
    col2 = [f"Name: {name if rng.random() < 0.6 else ''}", f"Age: {int(rng.integers(18, 95))}",
            f"Weight: {int(rng.integers(45, 130))} kg"]
    col3 = [f"Sex: {'MF'[int(rng.integers(2))]}", f"Time: {int(rng.integers(0, 24)):02d}:{int(rng.integers(0, 60)):02d}"]
    return [col1, col2, col3]


@lru_cache(maxsize=1)
def _ttf_dir() -> Path | None:
    """matplotlib's font folder, found without importing matplotlib (slow to import)."""
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(list(spec.submodule_search_locations)[0]) / "mpl-data" / "fonts" / "ttf"
    return d if d.is_dir() else None


@lru_cache(maxsize=64)
def _ttf(name: str, size: int):
    """A PIL FreeType font of ``name`` at pixel ``size``, or None when it cannot be loaded."""
    d = _ttf_dir()
    if d is None or not (d / name).is_file():
        return None
    try:
        from PIL import ImageFont

        return ImageFont.truetype(str(d / name), int(size))
    except (ImportError, OSError):
        return None


def _ttf_for_cap(name: str, cap_px: float):
    """The TrueType font whose capital I is ``cap_px`` tall (None: not available)."""
    ref = _ttf(name, 100)
    if ref is None:
        return None
    cap100 = -ref.getbbox("I", anchor="ls")[1]
    return _ttf(name, max(4, int(round(cap_px * 100.0 / max(cap100, 1)))))


def _text_size(text: str, font: Font, cap_px: float, thickness: int) -> tuple[int, int]:
    """(width, height above the baseline) in px of ``text`` drawn with capitals ``cap_px`` tall."""
    if isinstance(font, str):
        f = _ttf_for_cap(font, cap_px)
        if f is not None:
            left, top, right, _ = f.getbbox(text, anchor="ls")
            return int(right - left), int(-top)
        font = cv2.FONT_HERSHEY_SIMPLEX  # no matplotlib fonts here: an OpenCV font instead
    (w, h), _ = cv2.getTextSize(text, font, _font_scale(font, cap_px), thickness)
    return w, h


def _put_text(img: np.ndarray, text: str, org: tuple[int, int], font: Font, cap_px: float, color: BGR,
              thickness: int, antialias: bool = True) -> None:
    """Draw ``text`` with its baseline-left corner at integer ``org`` (OpenCV Hershey or TrueType)."""
    if isinstance(font, str):
        f = _ttf_for_cap(font, cap_px)
        if f is not None:
            _put_ttf(img, text, org, f, color, antialias)
            return
        font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(img, text, org, font, _font_scale(font, cap_px), color, thickness,
                cv2.LINE_AA if antialias else cv2.LINE_8)


def _put_ttf(img: np.ndarray, text: str, org: tuple[int, int], f, color: BGR, antialias: bool) -> None:
    """Blend PIL-rendered text (a small coverage mask) into ``img`` in place; clipped to the image."""
    from PIL import Image, ImageDraw

    left, top, right, bottom = f.getbbox(text, anchor="ls")
    W, H = int(right - left) + 2, int(bottom - top) + 2
    mask = Image.new("L", (W, H), 0)
    ImageDraw.Draw(mask).text((1 - left, 1 - top), text, fill=255, font=f, anchor="ls")
    a = np.asarray(mask, dtype=np.float32) / 255.0
    if not antialias:
        a = (a >= 0.5).astype(np.float32)
    x0, y0 = int(org[0] + left - 1), int(org[1] + top - 1)
    h, w = img.shape[:2]
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x0 + W, w), min(y0 + H, h)
    if cx1 <= cx0 or cy1 <= cy0:
        return
    a = a[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0, None]
    roi = img[cy0:cy1, cx0:cx1]
    roi[:] = (roi * (1 - a) + np.asarray(color, np.float32) * a + 0.5).astype(np.uint8)


def _font_scale(font: int, cap_px: float) -> float:
    (_, h), _ = cv2.getTextSize("I", font, 1.0, 1)
    return cap_px / max(h, 1)


def _draw_header(img: np.ndarray, page: Page, style: RenderStyle, rng: np.random.Generator) -> None:
    """The text block above the first row (cart columns, or ECG-Image-Kit's fields)."""
    top_band = page.row_band(0)[0]  # never write into the first row's trace band
    eik = style.header_kind == "eik"
    cap = (0.16 if eik else 0.22) * page.px_per_mv * rng.uniform(0.8, 1.25)  # ~1.6 / 2.2 mm capitals
    font = style.text_font if style.text_font is not None else style.label_font
    if not eik and style.text_font is None and not isinstance(font, str):  # cart printers: plain sans
        font = cv2.FONT_HERSHEY_SIMPLEX if rng.random() < 0.7 else cv2.FONT_HERSHEY_DUPLEX
    th = max(1, int(round(page.dpi / 200.0)))
    step = cap * rng.uniform(1.7, 2.3)
    x_cols = [0.1, 1.8, 3.6] if eik else [0.35, 2.6, 5.2]  # in seconds of paper (page units)
    y0 = page.px_per_mm * rng.uniform(2.0, 9.0)
    for c, lines in enumerate(_eik_header_lines(rng) if eik else _header_lines(rng)):
        x = page.to_px(x_cols[c] + rng.uniform(0.0, 0.5), 0.0)[0]
        for r, line in enumerate(lines):
            y = y0 + (r + 1) * step
            if y > top_band - cap:
                break
            _put_text(img, line, (int(x), int(y)), font, cap, style.trace_color, th, style.antialias)


def _draw_footer(img: np.ndarray, page: Page, style: RenderStyle, rng: np.random.Generator) -> None:
    """ECG-Image-Kit's "25mm/s   10mm/mV" in the bottom margin (sometimes with the filter band)."""
    cap = 0.2 * page.px_per_mv * rng.uniform(0.8, 1.3)
    font = style.text_font if style.text_font is not None else style.label_font
    th = max(1, int(round(page.dpi / 200.0)))
    y = page.height_px - rng.uniform(0.25, 0.9) * page.px_per_mv
    x = page.to_px(rng.uniform(0.4, 1.2), 0.0)[0]
    parts = ["25mm/s", "10mm/mV"] + (["0.5-150 Hz"] if rng.random() < 0.3 else [])
    gap = rng.uniform(0.6, 1.4) * page.px_per_s
    for text in parts:
        _put_text(img, text, (int(x), int(y)), font, cap, style.trace_color, th, style.antialias)
        x += _text_size(text, font, cap, th)[0] + gap


# --- traces --------------------------------------------------------------------------
def _fixed(x: np.ndarray, y: np.ndarray, page: Page, offset: float = 0.0) -> np.ndarray:
    """(N, 2) int32 OpenCV fixed-point (1/16 px) vertices of a pen line moved by ``offset`` px, clipped to the page.

    The offset is the pen's (:data:`~ecgtrace.paper.PEN_OFFSET_PX`): lines drawn where matplotlib
    (ECG-Image-Kit) would put them, half a pixel of the finished picture up and left of the true
    position, while the grid stays on its lines.
    """
    h, w = page.size
    x = np.asarray(x, dtype=np.float64) + offset
    y = np.asarray(y, dtype=np.float64) + offset
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


def calibration_polyline(page: Page, row: int, style: RenderStyle) -> np.ndarray:
    """(N, 2) px polyline of ``style``'s 1 mV calibration pulse at the start of ``row``."""
    t0, w = style.cal_t0_s, style.cal_width_s
    if style.cal_shape == "tails":
        t = [t0, t0 + w / 4, t0 + w / 4, t0 + 3 * w / 4, t0 + 3 * w / 4, t0 + w]
        v = [0.0, 0.0, 1.0, 1.0, 0.0, 0.0]
    elif style.cal_shape == "box":
        t, v = [t0, t0, t0 + w, t0 + w], [0.0, 1.0, 1.0, 0.0]
    else:  # step: the pulse, then the baseline on to where the trace starts
        t, v = [t0, t0, t0 + w, t0 + w, SIGNAL_X0_S], [0.0, 1.0, 1.0, 0.0, 0.0]
    x, y = page.to_px(np.asarray(t), np.asarray(v) * CAL_PULSE_MV + ROW_BASELINES_MV[row])
    return np.stack([x, y], axis=1)


def switch_positions(page: Page, style: RenderStyle) -> list[tuple[float, float, float]]:
    """(x, y_top, y_bottom) px of every lead-switch mark of the three lead rows (none for ``none``)."""
    if not style.separators or style.switch_mark == "none":
        return []
    out = []
    for row in range(N_ROWS - 1):
        c = ROW_BASELINES_MV[row] + style.switch_offset_mv
        for col in range(1, N_COLUMNS):
            # bottom to top, the order the classic ticks were always drawn in (AA lines are not symmetric)
            x, y = page.to_px([SIGNAL_X0_S + col * 2.5] * 2,
                              [c - style.switch_height_mv / 2, c + style.switch_height_mv / 2])
            out.append((float(x[0]), float(y[1]), float(y[0])))
    return out


def _pt_px(pt: float, page: Page) -> float:
    return pt / 72.0 * page.dpi


def _draw_labels(img: np.ndarray | None, page: Page, style: RenderStyle, color: BGR) -> np.ndarray:
    """Draw the 13 lead labels on ``img`` (None: only compute) and return their (13, 2) centres on ``page``.

    The centre of a ``center`` label is the requested point (the text is centred there to the
    nearest pixel, as ever); a ``left`` label starts at the column start plus the offset, and its
    centre is that of the drawn text box.
    """
    cap = LABEL_HEIGHT_MV * page.px_per_mv * style.label_scale
    lth = max(1, int(round(cap / 12.0)))
    dx, dy = style.label_dx_s * page.px_per_s, -style.label_dy_mv * page.px_per_mv
    centers = page.label_centers + np.array([dx, dy])
    for k, m in enumerate(MARKERS):
        text = RHYTHM_LEAD if m == RHYTHM_KEY else m
        w, h = _text_size(text, style.label_font, cap, lth)
        cx, cy = centers[k]
        if style.label_anchor == "left":
            _, col = lead_row_col(m)
            x_left = float(page.to_px(SIGNAL_X0_S + col * 2.5, 0.0)[0]) + dx
            org = (int(round(x_left)), int(round(cy + h / 2.0)))
            centers[k] = (org[0] + w / 2.0, org[1] - h / 2.0)
        else:
            org = (int(round(cx - w / 2.0)), int(round(cy + h / 2.0)))
        if img is not None:
            _put_text(img, text, org, style.label_font, cap, color, lth, style.antialias)
    return centers


def drawn_label_centers(page: Page, style: RenderStyle) -> np.ndarray:
    """(13, 2) centres of the label text boxes ``style`` prints on ``page`` (:data:`MARKERS` order).

    They differ from the ground-truth markers (the canonical anchors) by the style's label offset
    and anchor; exact to the pixel rounding of the text origin.
    """
    src = _source_page(page, style)
    return _draw_labels(None, src, style, (0, 0, 0)) * (page.dpi / src.dpi)


def _source_page(page: Page, style: RenderStyle) -> Page:
    """The page the drawing is made on: ``page`` itself, or the same paper at ``style.source_dpi``.

    A source finer than twice the page adds nothing that downsampling would keep, so it is capped there.
    """
    if style.source_dpi is None:
        return page
    d = min(float(style.source_dpi), 2.0 * page.dpi)
    if abs(d - page.dpi) < 0.5:
        return page
    return Page(dpi=d, width_in=page.width_in, height_in=page.height_in)


def _rescale(img: np.ndarray, src: Page, page: Page) -> np.ndarray:
    """Scale a drawing on ``src`` to ``page``: x_page = x_src * page.dpi / src.dpi exactly (one affine map)."""
    k = page.dpi / src.dpi
    if k < 1:  # anti-alias before shrinking (bilinear sampling alone would drop thin lines)
        img = cv2.GaussianBlur(img, (0, 0), 0.5 * math.sqrt(1.0 / k ** 2 - 1.0))
    h, w = page.size
    m = np.array([[k, 0.0, 0.0], [0.0, k, 0.0]])
    return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def render_page(signals: dict[str, np.ndarray], fs: float, page: Page = CANONICAL, style: RenderStyle | None = None,
                rng: np.random.Generator | int | None = None) -> tuple[np.ndarray, GroundTruth]:
    """Draw a 3x4 + lead II rhythm page; returns (BGR uint8 image, ground truth).

    Args:
        signals: lead -> (n,) mV over the full record (all 12 leads, equal length, 10 s).
        fs: sampling rate of ``signals``.
        page: page geometry (``Page(dpi=100)`` for a smaller page).
        style: look of the page; random (from ``rng``) when ``None``.
        rng: generator or seed for the style and the header text.

    The ground truth is exact for every style: traces are the drawn fixed-point vertices (scaled
    by ``page.dpi / source_dpi`` when drawn at another resolution), markers the page's canonical
    label anchors (the printed text may sit off them: :func:`drawn_label_centers`), grid points
    the paper's 5 mm lattice.
    ``gt.extra`` holds ``fs``, ``source_dpi``, ``labels_drawn`` and, when the style asks for it,
    the ECG-Image-Kit augmentation that ``apply_variant`` will apply.
    """
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    n = _check_signals(signals, fs)
    style = style or random_style(rng)
    src = _source_page(page, style)
    k = page.dpi / src.dpi
    pen = PEN_OFFSET_PX / k  # half a pixel of the finished picture, in source px
    bg = grid_background(src, style)
    img = bg.copy() if style.switch_mark == "gap" else bg
    color = tuple(int(c) for c in style.trace_color)
    thick = style.trace_thickness(src)
    line = cv2.LINE_AA if style.antialias else cv2.LINE_8

    traces: dict[str, np.ndarray] = {}
    times: dict[str, np.ndarray] = {}
    mvs: dict[str, np.ndarray] = {}
    polys = []  # what is drawn: each trace simplified to within DRAW_TOL_PX of its GT polyline
    for key in [lead for row in LAYOUT_3X4 for lead in row] + [RHYTHM_KEY]:
        lead = RHYTHM_LEAD if key == RHYTHM_KEY else key
        i0, i1 = window_indices(key, fs, n)
        t = np.arange(i0, i1, dtype=np.float64) / fs
        mv = np.nan_to_num(np.asarray(signals[lead][i0:i1], dtype=np.float64))
        x, y = src.lead_to_px(key, t, mv)
        pts = _fixed(x, y, src, pen)
        # Many samples fall within one pixel; drawing every one is slow (AA thick segments) and
        # invisible. Douglas-Peucker keeps the drawn curve within DRAW_TOL_PX of the GT polyline.
        polys.append(cv2.approxPolyDP(pts.reshape(-1, 1, 2), DRAW_TOL_PX * 16.0, False).reshape(-1, 2))
        traces[key] = pts.astype(np.float64) * (k / 16.0)  # exactly what is drawn (pen offset included), on the final page
        times[key] = t
        mvs[key] = mv
    if style.calibration:
        polys += [_fixed(p[:, 0], p[:, 1], src, pen) for p in (calibration_polyline(src, r, style) for r in range(N_ROWS))]
    marks = switch_positions(src, style)
    sw_px = _pt_px(style.switch_width_pt, src) if style.switch_width_pt is not None else None
    ticks = [_fixed(np.array([x, x]), np.array([y1, y0]), src, pen) for x, y0, y1 in marks]
    if style.switch_mark == "tick" and sw_px is None:
        polys += ticks  # same pen as the trace: one call
    cv2.polylines(img, polys, False, color, thick, line, shift=4)
    if style.switch_mark == "tick" and sw_px is not None:
        cv2.polylines(img, ticks, False, color, max(1, int(round(sw_px))), line, shift=4)
    elif style.switch_mark == "bar":
        half = max(sw_px or 0.0, 1.0) / 2.0
        bars = [_fixed(np.array([x - half, x + half, x + half, x - half]), np.array([y0, y0, y1, y1]), src, pen)
                for x, y0, y1 in marks]
        cv2.fillPoly(img, bars, color, line, shift=4)
    elif style.switch_mark == "gap":  # the pen lifted at the switch: the paper shows through
        half = max(sw_px or 0.0, 1.0) / 2.0
        h, w = src.size
        for x, y0, y1 in marks:
            a, b = max(0, int(round(x - half))), min(w, int(round(x + half)) + 1)
            r0, r1 = max(0, int(math.floor(y0))), min(h, int(math.ceil(y1)) + 1)
            img[r0:r1, a:b] = bg[r0:r1, a:b]

    if style.labels:
        _draw_labels(img, src, style, color)
    if style.header:
        _draw_header(img, src, style, rng)
    if style.footer:
        _draw_footer(img, src, style, rng)
    if src is not page:
        img = _rescale(img, src, page)

    gpts, gidx = page.grid_points()
    extra = {"fs": np.float64(fs), "source_dpi": np.float64(src.dpi), "labels_drawn": np.float64(style.labels)}
    if style.augment is not None:
        extra[EIK_AUGMENT_KEY] = style.augment.to_array()
    gt = GroundTruth(
        image_size=page.size,
        traces=traces,
        trace_times=times,
        trace_mv=mvs,
        # the page's label anchors, wherever this style prints the text: stage 0 maps markers onto these
        # canonical centres to find the page, so a marker is the anchor, not the ink (see drawn_label_centers)
        markers=page.label_centers.copy(),
        grid_points=gpts,
        grid_index=gidx,
        fwd_map=identity_fwd_map(page, 20),
        map_stride=20,
        orientation=0,
        page_dpi=float(page.dpi),
        variant="0001",
        grid_visible=style.colors is not None,
        extra=extra,
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
