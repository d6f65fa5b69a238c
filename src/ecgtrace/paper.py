"""The one source of truth for ECG page geometry and lead layout.

Every stage, the renderer and the targets read positions from here and nowhere
else. Coordinates follow OpenCV: ``x`` to the right, ``y`` down, pixel centres
at integer coordinates. "Page units" are seconds (x, from the left edge) and
millivolts (y, from the *bottom* edge, up), as in ECG-Image-Kit, which drew the
competition images.

The standard page is US letter landscape (11 x 8.5 in) at 200 dpi, 2200 x 1700
px: 1 mm = 7.874 px, 1 mV = 78.74 px, 1 s = 196.85 px.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

# --- paper standard --------------------------------------------------------
PAPER_SPEED_MM_S = 25.0  # mm per second
GAIN_MM_MV = 10.0  # mm per millivolt
SMALL_BOX_MM = 1.0
BIG_BOX_MM = 5.0  # = 0.2 s x 0.5 mV
MM_PER_INCH = 25.4

# --- leads -----------------------------------------------------------------
#: Column order of the competition CSVs and of every signal table we write.
LEADS: tuple[str, ...] = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
#: 3 x 4 layout, row by row; column k shows the time window [2.5k, 2.5k + 2.5) s.
LAYOUT_3X4: tuple[tuple[str, ...], ...] = (
    ("I", "aVR", "V1", "V4"),
    ("II", "aVL", "V2", "V5"),
    ("III", "aVF", "V3", "V6"),
)
RHYTHM_LEAD = "II"
RHYTHM_KEY = "II_rhythm"  # name of the rhythm strip wherever a per-row key is needed
N_ROWS = 4  # three lead rows + the rhythm strip
#: Row key -> the leads it shows (rows 0-2: four leads; row 3: the rhythm strip).
ROW_KEYS: tuple[str, ...] = ("row0", "row1", "row2", RHYTHM_KEY)
#: Lead-label markers, in class order: class id = index + 1 (0 is background).
MARKERS: tuple[str, ...] = LEADS + (RHYTHM_KEY,)
N_MARKER_CLASSES = len(MARKERS) + 1  # 14 with background
#: Markers used for the stage-0 homography: labels not in the first column
#: (their text never touches the calibration pulse, so they are found reliably).
HOMOGRAPHY_MARKERS: tuple[str, ...] = ("aVR", "V1", "V4", "aVL", "V2", "V5", "aVF", "V3", "V6")

DURATION_S = 10.0
COLUMN_S = 2.5
N_COLUMNS = 4

# --- row and margin placement, in page units ----------------------------------
PAGE_W_IN = 11.0
PAGE_H_IN = 8.5
DEFAULT_DPI = 200.0
#: Zero-mV baselines of the three lead rows and the rhythm strip, mV above the page bottom.
ROW_BASELINES_MV: tuple[float, ...] = (12.59, 9.0, 5.4, 2.1)
LEFT_MARGIN_S = 0.4  # where the calibration pulse starts
CAL_PULSE_S = 0.2
CAL_PULSE_MV = 1.0
SIGNAL_X0_S = LEFT_MARGIN_S + CAL_PULSE_S  # page x of signal time 0 (0.6 s = 118 px at 200 dpi)
#: Where a raster renderer puts a pen line, in pixels of the picture it draws, relative to the
#: true position: matplotlib (which draws ECG-Image-Kit's pages, and so the competition's) puts a
#: point at display coordinate x, whose pixel centre is index x - 0.5, while its grid lines are
#: snapped to whole pixels. Measured on ECG-Image-Kit pages: the trace ink sits 0.53 px left of
#: its ``plotted_pixels`` on steep strokes. Left uncorrected, every lead reads 0.5 drawing px
#: (2.5 ms at 200 dpi, 10 ms at 50 dpi) early. ecgtrace's renderer draws the same way.
PEN_OFFSET_PX = -0.5
#: Lead label centre relative to (column start, row baseline): a little right of
#: the column start, below the baseline (page units: s, mV).
LABEL_OFFSET_S = 0.12
LABEL_OFFSET_MV = -0.7
#: Height of the label text in mV (10 mm text would be 1 mV); used by the renderer and the marker targets.
LABEL_HEIGHT_MV = 0.35
#: Half-height of a column separator tick drawn at each lead switch (mV).
SEPARATOR_HALF_MV = 0.4
#: The band around a row's baseline in which stage 2 looks for its trace (mV above / below): taller
#: excursions are clipped at the band edge. The network's strips and the classical search share it.
BAND_ABOVE_MV = 3.2
BAND_BELOW_MV = 2.6


def lead_row_col(lead: str) -> tuple[int, int]:
    """Row (0..2) and column (0..3) of a lead in the 3x4 layout; the rhythm strip is row 3, column 0."""
    if lead == RHYTHM_KEY:
        return N_ROWS - 1, 0
    for r, row in enumerate(LAYOUT_3X4):
        if lead in row:
            return r, row.index(lead)
    raise KeyError(f"unknown lead {lead!r}; expected one of {', '.join(MARKERS)}")


def lead_window(lead: str) -> tuple[float, float]:
    """Time window [t0, t1) in seconds that the 3x4 layout shows for ``lead`` (10 s for the rhythm strip)."""
    if lead == RHYTHM_KEY:
        return 0.0, DURATION_S
    _, c = lead_row_col(lead)
    return c * COLUMN_S, (c + 1) * COLUMN_S


def window_indices(key: str, fs: float, sig_len: int) -> tuple[int, int]:
    """Sample range [i0, i1) that the 3x4 page shows for ``key`` (a lead, or ``RHYTHM_KEY`` for the strip).

    Sample ``n`` (time ``n / fs``) is shown when t0 <= n/fs < t1 for the window [t0, t1) of
    :func:`lead_window`; lead II's own 3x4 cell is its first 2.5 s and the rhythm strip is the
    whole record.
    """
    t0, t1 = lead_window(key)
    i0 = int(math.ceil(t0 * fs - 1e-9))
    i1 = int(math.ceil(t1 * fs - 1e-9))
    return min(i0, sig_len), min(i1, sig_len)


def csv_rows(lead: str, fs: float, sig_len: int) -> tuple[int, int]:
    """Rows [i0, i1) a competition signal CSV fills for ``lead``: lead II is full, others their 3x4 window.

    The same rule gives ``number_of_rows`` of test.csv and the ``row`` index of the solution file.
    """
    return window_indices(RHYTHM_KEY if lead == RHYTHM_LEAD else lead, fs, sig_len)


@dataclass(frozen=True)
class Page:
    """Geometry of one page at a given resolution.

    All mappings are exact affine maps; ``Page()`` is the canonical 2200 x 1700
    competition page. Nothing here rounds except ``width_px``/``height_px``.
    """

    dpi: float = DEFAULT_DPI
    width_in: float = PAGE_W_IN
    height_in: float = PAGE_H_IN

    # -- scale ------------------------------------------------------------
    @property
    def px_per_mm(self) -> float:
        return self.dpi / MM_PER_INCH

    @property
    def px_per_s(self) -> float:
        return self.px_per_mm * PAPER_SPEED_MM_S

    @property
    def px_per_mv(self) -> float:
        return self.px_per_mm * GAIN_MM_MV

    @property
    def width_px(self) -> int:
        return int(round(self.width_in * self.dpi))

    @property
    def height_px(self) -> int:
        return int(round(self.height_in * self.dpi))

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) in pixels, NumPy order."""
        return self.height_px, self.width_px

    @property
    def width_s(self) -> float:
        return self.width_in * MM_PER_INCH / PAPER_SPEED_MM_S  # 11.176 s

    @property
    def height_mv(self) -> float:
        return self.height_in * MM_PER_INCH / GAIN_MM_MV  # 21.59 mV

    def scaled_to(self, width_px: int) -> "Page":
        """The same page drawn ``width_px`` wide (keeps the aspect ratio)."""
        return Page(dpi=width_px / self.width_in, width_in=self.width_in, height_in=self.height_in)

    # -- page units <-> pixels ----------------------------------------------
    def to_px(self, x_s: np.ndarray | float, y_mv: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Page units (s from left, mV from bottom) -> pixels (x right, y down)."""
        x = np.asarray(x_s, dtype=np.float64) * self.px_per_s
        y = (self.height_mv - np.asarray(y_mv, dtype=np.float64)) * self.px_per_mv
        return x, y

    def from_px(self, x_px: np.ndarray | float, y_px: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Pixels -> page units (s from left, mV from bottom)."""
        x = np.asarray(x_px, dtype=np.float64) / self.px_per_s
        y = self.height_mv - np.asarray(y_px, dtype=np.float64) / self.px_per_mv
        return x, y

    # -- rows and leads -----------------------------------------------------
    def baseline_y(self, row: int) -> float:
        """Pixel y of the 0 mV line of row 0..3 (row 3 is the rhythm strip)."""
        return float(self.to_px(0.0, ROW_BASELINES_MV[row])[1])

    @property
    def signal_x0(self) -> float:
        """Pixel x where signal time 0 sits (after the calibration pulse)."""
        return SIGNAL_X0_S * self.px_per_s

    def signal_columns(self, width_px: int | None = None) -> tuple[int, int]:
        """First and last whole pixel column inside the 10 s of signal (clipped to an image ``width_px``)."""
        w = self.width_px if width_px is None else int(width_px)
        x0 = int(np.ceil(float(self.time_to_x(0.0))))
        x1 = int(min(w - 1, np.floor(float(self.time_to_x(DURATION_S)))))
        return x0, x1

    def time_to_x(self, t_s: np.ndarray | float) -> np.ndarray:
        """Signal time (s since record start) -> pixel x; the same for every row."""
        return self.signal_x0 + np.asarray(t_s, dtype=np.float64) * self.px_per_s

    def x_to_time(self, x_px: np.ndarray | float) -> np.ndarray:
        return (np.asarray(x_px, dtype=np.float64) - self.signal_x0) / self.px_per_s

    def mv_to_y(self, row: int, mv: np.ndarray | float) -> np.ndarray:
        return self.baseline_y(row) - np.asarray(mv, dtype=np.float64) * self.px_per_mv

    def y_to_mv(self, row: int, y_px: np.ndarray | float) -> np.ndarray:
        return (self.baseline_y(row) - np.asarray(y_px, dtype=np.float64)) / self.px_per_mv

    def lead_to_px(self, lead: str, t_s: np.ndarray | float, mv: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Sample of ``lead`` at signal time ``t_s`` with value ``mv`` -> pixel (x, y).

        ``lead`` is a lead name (drawn in its 3x4 row) or ``RHYTHM_KEY``.
        """
        row, _ = lead_row_col(lead)
        return self.time_to_x(t_s), self.mv_to_y(row, mv)

    def px_to_lead(self, lead: str, x_px: np.ndarray | float, y_px: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Inverse of :meth:`lead_to_px`: pixel -> (time s, mV)."""
        row, _ = lead_row_col(lead)
        return self.x_to_time(x_px), self.y_to_mv(row, y_px)

    def column_x(self, col: int) -> float:
        """Pixel x where column ``col`` (0..4) begins; ``col=4`` is the end of the 10 s."""
        return float(self.time_to_x(col * COLUMN_S))

    def row_band(self, row: int, above_mv: float = 1.8, below_mv: float = 1.8) -> tuple[float, float]:
        """Pixel y range (top, bottom) a trace of ``row`` normally stays within."""
        b = self.baseline_y(row)
        return b - above_mv * self.px_per_mv, b + below_mv * self.px_per_mv

    # -- calibration pulse, labels, separators ------------------------------
    def calibration_pulse(self, row: int) -> np.ndarray:
        """Polyline (N, 2) px of the 1 mV x 0.2 s calibration pulse at the start of ``row``."""
        t = np.array([LEFT_MARGIN_S, LEFT_MARGIN_S + 0.05, LEFT_MARGIN_S + 0.05, LEFT_MARGIN_S + 0.15,
                      LEFT_MARGIN_S + 0.15, SIGNAL_X0_S])
        v = np.array([0.0, 0.0, CAL_PULSE_MV, CAL_PULSE_MV, 0.0, 0.0]) + ROW_BASELINES_MV[row]
        x, y = self.to_px(t, v)
        return np.stack([x, y], axis=1)

    def label_center(self, marker: str) -> np.ndarray:
        """Canonical pixel centre (x, y) of the printed label of ``marker`` (a lead or ``RHYTHM_KEY``)."""
        row, col = lead_row_col(marker)
        t = SIGNAL_X0_S + col * COLUMN_S + LABEL_OFFSET_S
        v = ROW_BASELINES_MV[row] + LABEL_OFFSET_MV
        x, y = self.to_px(t, v)
        return np.array([float(x), float(y)])

    @cached_property
    def label_centers(self) -> np.ndarray:
        """(13, 2) canonical label centres in :data:`MARKERS` order."""
        return np.stack([self.label_center(m) for m in MARKERS])

    def separator_ticks(self) -> list[np.ndarray]:
        """Short vertical segments (2, 2) px drawn at the lead switches of the three lead rows."""
        ticks = []
        for row in range(N_ROWS - 1):
            b = ROW_BASELINES_MV[row]
            for col in range(1, N_COLUMNS):
                t = SIGNAL_X0_S + col * COLUMN_S
                x, y = self.to_px([t, t], [b - SEPARATOR_HALF_MV, b + SEPARATOR_HALF_MV])
                ticks.append(np.stack([x, y], axis=1))
        return ticks

    # -- the 5 mm grid --------------------------------------------------------
    # The grid is anchored at the bottom-left page corner (the plot origin), so
    # horizontal lines sit at whole multiples of 5 mm above the bottom edge.
    @property
    def n_vlines(self) -> int:
        """Vertical 5 mm lines, counted from the left edge (56 on letter)."""
        return int(np.floor(self.width_in * MM_PER_INCH / BIG_BOX_MM + 1e-9)) + 1

    @property
    def n_hlines(self) -> int:
        """Horizontal 5 mm lines, counted from the top (44 on letter)."""
        return int(np.floor(self.height_in * MM_PER_INCH / BIG_BOX_MM + 1e-9)) + 1

    def vline_x(self, j: np.ndarray | int) -> np.ndarray:
        """Pixel x of vertical 5 mm line ``j`` (0 = left edge)."""
        return np.asarray(j, dtype=np.float64) * BIG_BOX_MM * self.px_per_mm

    def hline_y(self, i: np.ndarray | int) -> np.ndarray:
        """Pixel y of horizontal 5 mm line ``i`` counted from the top (the last one is the bottom edge)."""
        j_from_bottom = (self.n_hlines - 1) - np.asarray(i, dtype=np.float64)
        return (self.height_in * MM_PER_INCH - j_from_bottom * BIG_BOX_MM) * self.px_per_mm

    def grid_points(self) -> tuple[np.ndarray, np.ndarray]:
        """All 5 mm intersections: points (M, 2) px (x, y) and indices (M, 2) (hline i from top, vline j from left)."""
        ii, jj = np.meshgrid(np.arange(self.n_hlines), np.arange(self.n_vlines), indexing="ij")
        idx = np.stack([ii.ravel(), jj.ravel()], axis=1)
        pts = np.stack([self.vline_x(idx[:, 1]), self.hline_y(idx[:, 0])], axis=1)
        return pts, idx

    def minor_lines(self) -> tuple[np.ndarray, np.ndarray]:
        """Pixel x of all 1 mm vertical lines and y of all 1 mm horizontal lines (bottom-anchored)."""
        w_mm, h_mm = self.width_in * MM_PER_INCH, self.height_in * MM_PER_INCH
        xs = np.arange(0, int(np.floor(w_mm)) + 1) * self.px_per_mm
        ys = (h_mm - np.arange(0, int(np.floor(h_mm)) + 1)) * self.px_per_mm
        return xs, ys


CANONICAL = Page()


def page_for(image_or_shape: np.ndarray | tuple[int, ...]) -> Page:
    """The :class:`Page` geometry of a rectified image (the canonical page scaled to its width).

    Raises ``ValueError`` when the image does not have the canonical aspect (not rectified).
    """
    shape = image_or_shape.shape if isinstance(image_or_shape, np.ndarray) else tuple(image_or_shape)
    h, w = int(shape[0]), int(shape[1])
    page = CANONICAL if w == CANONICAL.width_px else CANONICAL.scaled_to(w)
    if abs(page.height_px - h) > 2:
        raise ValueError(f"rectified page is {w}x{h} px; expected the canonical aspect ({page.width_px}x{page.height_px})")
    return page
