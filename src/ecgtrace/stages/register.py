"""Which 5 mm box is which: the whole-box offset of a rectified page, read from its calibration pulses.

A grid is periodic, so the lattice stage 1 fits is exact up to a whole number of
boxes: when stage 0 could not normalize the page (no model, a sheet that runs off
the photo), the lattice is numbered from the nearest canonical box and may sit one
or more boxes off in either direction. The calibration pulses are not periodic: each
row starts with a 1 mV x 0.2 s step at a known place (0.4 s from the left edge, on
the row's baseline). The pulses' ink, matched against the layout over the candidate
offsets, picks the numbering. (The trace rows themselves are a weaker cue: a lead's
signal need not sit on its nominal baseline.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ecgtrace.paper import N_ROWS, Page
from ecgtrace.stages.grid_classical import shift_lattice
from ecgtrace.stages.trace_classical import page_for, trace_probability

#: Offsets searched, in boxes, each direction.
REACH = 3
#: The best offset must beat the runner-up by this fraction of its own score to be applied ...
MIN_MARGIN = 0.25
#: ... and find this much ink on the pulses (a page printed without them tells nothing).
MIN_PULSE_INK = 0.3


@dataclass
class Registration:
    """``shift`` = (di, dj): the page's content sits ``di`` boxes lower and ``dj`` boxes further right
    than the canonical layout; ``(0, 0)`` when the page is where it should be."""

    shift: tuple[int, int]
    score: float  # mean trace ink on the pulses at the best shift (0..1)
    margin: float  # (best - runner-up) / best
    confident: bool


def _pulse_pixels(page: Page) -> tuple[np.ndarray, np.ndarray]:
    """(ys, xs) of the calibration pulses' two edges and top (their feet run along the baseline, as the trace does)."""
    import cv2

    mask = np.zeros(page.size, np.uint8)
    for r in range(N_ROWS):
        pts = page.calibration_pulse(r)[1:5]
        cv2.polylines(mask, [np.round(pts * 16).astype(np.int32).reshape(-1, 1, 2)], False, 1,
                      thickness=max(1, int(round(0.25 * page.px_per_mm))), shift=4)
    return np.nonzero(mask)


def shift_scores(prob: np.ndarray, page: Page, reach: int = REACH) -> np.ndarray:
    """(2 reach + 1)^2 mean trace ink on the calibration pulses moved by (di, dj) boxes."""
    pitch = 5.0 * page.px_per_mm
    ys, xs = _pulse_pixels(page)
    h, w = prob.shape
    out = np.zeros((2 * reach + 1, 2 * reach + 1))
    for a, di in enumerate(range(-reach, reach + 1)):
        for b, dj in enumerate(range(-reach, reach + 1)):
            y = np.round(ys + di * pitch).astype(np.int64)
            x = np.round(xs + dj * pitch).astype(np.int64)
            ok = (y >= 0) & (y < h) & (x >= 0) & (x < w)
            out[a, b] = float(prob[y[ok], x[ok]].sum()) / len(ys)
    return out


def content_offset(rect_bgr: np.ndarray, page: Page | None = None, reach: int = REACH,
                   prob: np.ndarray | None = None) -> Registration:
    """Whole-box offset of the calibration pulses on a rectified page (see the module docstring)."""
    page = page or page_for(rect_bgr)
    if prob is None:
        prob = trace_probability(rect_bgr)
    sc = shift_scores(prob, page, reach)
    a, b = np.unravel_index(int(np.argmax(sc)), sc.shape)
    best = float(sc[a, b])
    second = float(np.sort(sc.ravel())[-2])
    margin = (best - second) / max(best, 1e-9)
    return Registration(shift=(int(a) - reach, int(b) - reach), score=best, margin=margin,
                        confident=bool(best >= MIN_PULSE_INK and margin >= MIN_MARGIN))


def registered_nodes(nodes: np.ndarray, shift: tuple[int, int]) -> np.ndarray:
    """Lattice nodes renumbered so that content found ``shift`` boxes off lands on the canonical layout."""
    return shift_lattice(nodes, (-int(shift[0]), -int(shift[1])))

