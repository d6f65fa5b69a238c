"""Tunable constants of the stage-2 trace search (shared by the classical and the learned reader)."""

from __future__ import annotations

from dataclasses import dataclass

from ecgtrace import paper


@dataclass
class ClassicalParams:
    """Tunable constants of the classical reader (defaults tuned on synthetic renders)."""

    band_above_mv: float = paper.BAND_ABOVE_MV  # search band above the baseline (taller R waves are clipped)
    band_below_mv: float = paper.BAND_BELOW_MV
    step_ink_cost: float = 1.0  # vertical move cost per px of paper (no ink)
    step_base_cost: float = 0.002  # vertical move cost per px on ink
    #: Ink from which a vertical move costs only :attr:`step_base_cost` (less ink: up to :attr:`step_ink_cost`).
    #: The thin tip of an R wave on a 100-200 dpi page is faint ink: at 0.4 the path cut under it, at 0.2 it
    #: follows it up (ECG-Image-Kit clean pages 25.02 -> 25.30 dB, every sub-folder level or better).
    step_ink_full: float = 0.2
    blind_step_cost: float = 0.02  # vertical move cost per px in a column hidden by a dark grid line
    blind_bridge_slope: float = 20.0  # steepest stroke (px per px; 20 mm per mm) bridged across a blind column
    baseline_pull: float = 0.02  # per column, per mV^2 of distance from the row's baseline
    baseline_pull_cap_mv: float = 4.0
    claimed_penalty: float = 0.5  # cost added on pixels the row above already follows
    claimed_halfwidth_px: float = 2.5  # at 200 dpi; scales with the page
    label_weight: float = 0.35  # ink inside lead-label boxes counts this much
    weak_ink: float = 0.35  # a path column on less ink than this is "off trace"
    max_wander_mv: float = 0.5  # median |mV - median| above this is not an ECG trace
    #: The reader's columns land this much early (mm of paper; 0.025 mm = 1 ms at 25 mm/s) on drawn pages,
    #: after the pen offset: the best fractional time shift per lead was +1.0 ms (median) on ECG-Image-Kit's
    #: clean pages and +1.25 ms on its black-and-white ones, and the same on ecgtrace's own renders, where
    #: shifting the columns by it raised the GT-rectified clean variant 17.2 -> 18.1 dB. On a steep QRS
    #: stroke (~75 mV/s) 1 ms is 0.075 mV, so the whole page loses 1-2 dB to it. (The network learned
    #: its own timing from the renders and reads without such a shift: median 0.0 ms on the noisy pages.)
    column_lag_mm: float = 0.025
