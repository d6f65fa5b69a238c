"""The 8 page orientations (4 rotations x horizontal flip), for images and points.

Class ``c`` in 0..7 means: starting from the upright page, flip it left-right
if ``c >= 4``, then rotate it ``c % 4`` quarter turns clockwise. Class 0 is an
upright page. Points are (x, y) pixel centres, as everywhere in ecgtrace.
"""

from __future__ import annotations

import cv2
import numpy as np

N_ORIENTATIONS = 8
_CV_ROT = {1: cv2.ROTATE_90_CLOCKWISE, 2: cv2.ROTATE_180, 3: cv2.ROTATE_90_COUNTERCLOCKWISE}


def _split(c: int) -> tuple[int, bool]:
    if not 0 <= int(c) < N_ORIENTATIONS:
        raise ValueError(f"orientation class must be 0..7, got {c}")
    return int(c) % 4, int(c) >= 4


def describe(c: int) -> str:
    """Human-readable name of an orientation class, e.g. ``'flip + rot90cw'``."""
    r, f = _split(c)
    parts = (["flip"] if f else []) + ([f"rot{90 * r}cw"] if r else [])
    return " + ".join(parts) or "upright"


def orient_image(img: np.ndarray, c: int) -> np.ndarray:
    """Apply orientation ``c`` to an upright image."""
    r, f = _split(c)
    out = img[:, ::-1] if f else img
    if r:
        out = cv2.rotate(np.ascontiguousarray(out), _CV_ROT[r])
    return np.ascontiguousarray(out)


def unorient_image(img: np.ndarray, c: int) -> np.ndarray:
    """Undo orientation ``c``: returns the upright image."""
    r, f = _split(c)
    out = cv2.rotate(np.ascontiguousarray(img), _CV_ROT[(4 - r) % 4]) if r else img
    if f:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def orient_points(pts: np.ndarray, c: int, size: tuple[int, int]) -> np.ndarray:
    """Move points (N, 2) of an upright image of ``size`` = (h, w) as :func:`orient_image` moves its pixels."""
    r, f = _split(c)
    h, w = size
    p = np.asarray(pts, dtype=np.float64).reshape(-1, 2).copy()
    if f:
        p[:, 0] = (w - 1) - p[:, 0]
    for _ in range(r):  # one quarter turn clockwise: (x, y) -> (h - 1 - y, x), then size swaps
        p = np.stack([(h - 1) - p[:, 1], p[:, 0]], axis=1)
        h, w = w, h
    return p


def unorient_points(pts: np.ndarray, c: int, size: tuple[int, int]) -> np.ndarray:
    """Inverse of :func:`orient_points`; ``size`` is the (h, w) of the *upright* image."""
    r, f = _split(c)
    h, w = size
    hh, ww = (w, h) if r % 2 else (h, w)  # size of the oriented image
    p = np.asarray(pts, dtype=np.float64).reshape(-1, 2).copy()
    for _ in range(r):  # one quarter turn counter-clockwise: (x, y) -> (y, w - 1 - x)
        p = np.stack([p[:, 1], (ww - 1) - p[:, 0]], axis=1)
        hh, ww = ww, hh
    if f:
        p[:, 0] = (w - 1) - p[:, 0]
    return p


def oriented_size(size: tuple[int, int], c: int) -> tuple[int, int]:
    """(h, w) of an upright image of ``size`` after orientation ``c``."""
    r, _ = _split(c)
    return (size[1], size[0]) if r % 2 else tuple(size)
