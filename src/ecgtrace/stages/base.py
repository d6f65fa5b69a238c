"""Plain objects the stages hand to each other.

Stages never reach into each other's internals: stage 0 returns a
:class:`NormalizedPage`, stage 1 a :class:`RectifiedPage`, stage 2
:class:`LeadSignals`. Each carries the transform that produced it so that the
pipeline can map any point back to the original photo.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from ecgtrace.errors import EcgTraceError


class StageError(EcgTraceError):
    """A stage could not do its job on this image; the message says why and what to try."""


def as_bgr(img: object, what: str = "image") -> np.ndarray:
    """Any picture array (grey, BGR, BGRA; uint8 or float in 0..1 or 0..255) as contiguous BGR uint8.

    Raises :class:`StageError` (one line) for anything that is not such an array.
    """
    if not isinstance(img, np.ndarray):
        raise StageError(f"{what}: expected an image array (cv2.imread), got {type(img).__name__}")
    if img.ndim not in (2, 3) or img.size == 0 or (img.ndim == 3 and img.shape[2] not in (1, 3, 4)):
        raise StageError(f"{what}: expected an image array (H, W) or (H, W, 1|3|4), got shape {img.shape}")
    if img.dtype != np.uint8:
        f = np.nan_to_num(img.astype(np.float64))
        if np.issubdtype(img.dtype, np.floating) and f.max() <= 1.0:
            f = f * 255.0
        img = np.clip(f, 0, 255).astype(np.uint8)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    return np.ascontiguousarray(img)


@dataclass
class NormalizedPage:
    """Stage 0 output: the page upright and warped to the canonical page size.

    ``homography`` maps original-image pixels (x, y, 1) to normalized-page pixels
    (orientation included); ``None`` only when stage 0 was skipped.
    """

    image: np.ndarray
    homography: np.ndarray
    orientation: int = 0
    orientation_confidence: float = 1.0
    markers: dict[str, np.ndarray] = field(default_factory=dict)  # detected label centres, original px
    method: str = "identity"  # "model", "classical" or "identity"
    ok: bool = True
    message: str = ""


@dataclass
class RectifiedPage:
    """Stage 1 output: a page whose 5 mm grid is the perfect lattice of :class:`ecgtrace.paper.Page`.

    ``map_xy`` (H, W, 2) float32 gives, for every rectified pixel, its (x, y) in
    the stage-1 input (the normalized page): ``cv2.remap(input, map_xy[..., 0], map_xy[..., 1])``
    reproduces ``image``.
    """

    image: np.ndarray
    map_xy: np.ndarray
    grid_error_px: float = float("nan")  # residual of the lattice fit, canonical px
    confidence: float = 1.0
    method: str = "identity"
    ok: bool = True
    message: str = ""


@dataclass
class LeadSignals:
    """Stage 2 output: the 12 leads in mV, plus where they were read on the rectified page."""

    signals: dict[str, np.ndarray]  # lead -> (n,) mV; the rhythm strip replaces lead II when present
    fs: float
    traces_px: dict[str, np.ndarray] = field(default_factory=dict)  # row key -> (N, 2) rectified px
    quality: dict[str, str] = field(default_factory=dict)  # lead -> "ok" / short reason
    method: str = "classical"
