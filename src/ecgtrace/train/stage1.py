"""Stage 1 training task (grid points + line indices) and the stage-0 simulation it trains on."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from ecgtrace.paper import CANONICAL, HOMOGRAPHY_MARKERS, MARKERS, Page

_H_IDX = np.array([MARKERS.index(m) for m in HOMOGRAPHY_MARKERS])


def simulate_stage0(image: np.ndarray, gt: Any, page: Page = CANONICAL, rng: np.random.Generator | None = None,
                    marker_noise_px: float = 0.0) -> tuple[np.ndarray, Any, np.ndarray]:
    """What stage 0 would hand to stage 1: the page warped by the homography from its lead-label
    markers (the ground-truth ones, plus ``marker_noise_px`` of Gaussian noise) to ``page``'s canonical
    label centres. Returns (normalized image of ``page.size``, moved ground truth, 3x3 homography).
    """
    src = np.asarray(gt.markers, dtype=np.float64)[_H_IDX]
    if rng is not None and marker_noise_px > 0:
        src = src + rng.normal(0.0, marker_noise_px, src.shape)
    dst = page.label_centers[_H_IDX]
    ok = np.isfinite(src).all(axis=1)
    h, _ = cv2.findHomography(src[ok], dst[ok], 0)
    if h is None:
        h = np.eye(3)
    H, W = page.size
    out = cv2.warpPerspective(image, h, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                              borderValue=(255, 255, 255))

    def fwd(p: np.ndarray) -> np.ndarray:
        q = np.c_[p, np.ones(len(p))] @ h.T
        return q[:, :2] / q[:, 2:3]

    return out, gt.transformed(fwd, (H, W)), h
