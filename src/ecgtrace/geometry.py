"""One geometric vocabulary for every stage: points through 3x3 matrices, resize maps, dense maps.

Points are float64 arrays of shape (..., 2) holding (x, y) in OpenCV pixel
coordinates (pixel centres at integers). A 3x3 matrix maps homogeneous points
``(x, y, 1)``; a dense map ``map_xy`` (H, W, 2) holds, for every output pixel,
the input position it samples (what ``cv2.remap`` takes).
"""

from __future__ import annotations

import cv2
import numpy as np

#: Homogeneous ``w`` smaller than this in magnitude is treated as this (a point at infinity
#: maps far away instead of raising a division warning or producing inf/NaN).
_W_EPS = 1e-12


def apply_homography(matrix: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Map points of any leading shape (..., 2) through a 3x3 matrix; returns the same shape, float64.

    The homogeneous divide is guarded: ``|w| < 1e-12`` is replaced by ``±1e-12``.
    """
    p = np.asarray(pts, dtype=np.float64)
    flat = p.reshape(-1, 2)
    if flat.shape[0] == 0:
        return flat.reshape(p.shape)
    q = np.c_[flat, np.ones(len(flat))] @ np.asarray(matrix, dtype=np.float64).T
    w = q[:, 2:3]
    w = np.where(np.abs(w) < _W_EPS, np.where(w < 0, -_W_EPS, _W_EPS), w)
    return (q[:, :2] / w).reshape(p.shape)


def resize_matrix(src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> np.ndarray:
    """3x3 map of pixel centres when an image of (h, w) ``src_hw`` is resized to ``dst_hw`` by ``cv2.resize``.

    ``cv2.resize`` aligns pixel *areas*: ``x' = (x + 0.5) * s - 0.5``.
    """
    sy, sx = dst_hw[0] / src_hw[0], dst_hw[1] / src_hw[1]
    return np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])


#: Points per row of the sampling grid :func:`_bilinear` hands ``cv2.remap`` (which takes fewer than 32767 rows).
_SAMPLE_ROW = 1024


def _bilinear(map_xy: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``map_xy`` (H, W, 2) sampled bilinearly at the points ``q`` (N, 2), any N: one ``cv2.remap`` a channel
    of the part of the map the points read (each channel is copied out of the map for it)."""
    p = np.asarray(q, dtype=np.float32).reshape(-1, 2)
    n = len(p)
    if n == 0:
        return np.zeros((0, 2))
    # the part the points read (with the pixels beyond, up to the map's edge, that its border repeats): an
    # integer shift keeps each float32 coordinate's fraction, so the samples are those of the whole map
    h, w = map_xy.shape[:2]
    x0 = y0 = 0
    if np.isfinite(p).all():  # (where a point is not, OpenCV reads a corner of what it is given)
        x0, y0 = (int(np.clip(np.floor(v.min()), 0, m - 1)) for v, m in ((p[:, 0], w), (p[:, 1], h)))
        x1, y1 = (int(np.clip(np.floor(v.max()) + 2, 1, m)) for v, m in ((p[:, 0], w), (p[:, 1], h)))
        map_xy = map_xy[y0:y1, x0:x1]
    grid = np.zeros((-(-n // _SAMPLE_ROW) * _SAMPLE_ROW, 2), np.float32)
    grid[:n] = p - np.array([x0, y0], np.float32)
    gx, gy = grid[:, 0].reshape(-1, _SAMPLE_ROW), grid[:, 1].reshape(-1, _SAMPLE_ROW)
    mx = cv2.remap(map_xy[..., 0], gx, gy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    my = cv2.remap(map_xy[..., 1], gx, gy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return np.stack([mx.ravel()[:n], my.ravel()[:n]], axis=1).astype(np.float64)


def sample_map(map_xy: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Bilinear sample of a dense (H, W, 2) map at points (N, 2): the input (x, y) each one samples.

    Points outside the map are extended linearly with the map's slope at the nearest edge.
    """
    q = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
    out = _bilinear(map_xy, q)
    h, w = map_xy.shape[:2]
    cx = np.clip(q[:, 0], 0, w - 1)
    cy = np.clip(q[:, 1], 0, h - 1)
    outside = (cx != q[:, 0]) | (cy != q[:, 1])
    if outside.any():
        c = np.stack([cx, cy], axis=1)[outside]
        x0, x1 = np.clip(c[:, 0] - 1, 0, w - 1), np.clip(c[:, 0] + 1, 0, w - 1)
        y0, y1 = np.clip(c[:, 1] - 1, 0, h - 1), np.clip(c[:, 1] + 1, 0, h - 1)
        # the edge point and its four neighbours in one sampling (each call copies the map's two channels)
        at, right, left, down, up = np.split(
            _bilinear(map_xy, np.concatenate([c, np.c_[x1, c[:, 1]], np.c_[x0, c[:, 1]], np.c_[c[:, 0], y1],
                                              np.c_[c[:, 0], y0]])), 5)
        jx = (right - left) / (x1 - x0)[:, None]
        jy = (down - up) / (y1 - y0)[:, None]
        d = q[outside] - c
        out[outside] = at + jx * d[:, :1] + jy * d[:, 1:]
    return out


def invert_points(map_xy: np.ndarray, pts_input: np.ndarray, init: np.ndarray | None = None,
                  iters: int = 20) -> np.ndarray:
    """Where do input points (N, 2) land in the output of ``map_xy``? Newton iterations on the map.

    ``init`` is a starting guess in output px (default: the input positions, right for
    near-identity maps). Returns (N, 2) output (x, y).
    """
    q = np.asarray(pts_input, dtype=np.float64).reshape(-1, 2)
    r = q.copy() if init is None else np.asarray(init, dtype=np.float64).reshape(-1, 2).copy()
    e = 1.0
    for _ in range(iters):
        f = sample_map(map_xy, r) - q
        jx = (sample_map(map_xy, r + [e, 0]) - sample_map(map_xy, r - [e, 0])) / (2 * e)
        jy = (sample_map(map_xy, r + [0, e]) - sample_map(map_xy, r - [0, e])) / (2 * e)
        det = jx[:, 0] * jy[:, 1] - jy[:, 0] * jx[:, 1]
        det = np.where(np.abs(det) < 1e-6, 1e-6, det)
        # solve [jx jy] d = f
        dx = (f[:, 0] * jy[:, 1] - jy[:, 0] * f[:, 1]) / det
        dy = (jx[:, 0] * f[:, 1] - f[:, 0] * jx[:, 1]) / det
        step = np.clip(np.stack([dx, dy], axis=1), -50, 50)
        r -= step
        if np.abs(step).max(initial=0) < 1e-3:
            break
    return r


def remap(image: np.ndarray, map_xy: np.ndarray, border_value: int | tuple = 255) -> np.ndarray:
    """Sample ``image`` at ``map_xy`` (bicubic; outside the input -> ``border_value``, white paper)."""
    bv = border_value if isinstance(border_value, tuple) else (border_value,) * 4
    # the (H, W, 2) map as one two-channel map: OpenCV reads it in place, where the two strided channel views
    # were first copied (the same pixels; 48 -> 40 ms for a 200 dpi page)
    return cv2.remap(image, np.ascontiguousarray(map_xy, dtype=np.float32), None, cv2.INTER_CUBIC,
                     borderMode=cv2.BORDER_CONSTANT, borderValue=bv)


def identity_map(h: int, w: int) -> np.ndarray:
    """The (h, w, 2) float32 map that samples every pixel at itself."""
    xx, yy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return np.stack([xx, yy], axis=-1)


def rectified_to_original(pts: np.ndarray, map_xy: np.ndarray | None, homography: np.ndarray | None) -> np.ndarray:
    """Rectified-page px -> original-photo px.

    The stage-1 ``map_xy`` takes a rectified point to the normalized page; the inverse of
    the stage-0 ``homography`` (original -> normalized) takes it on to the photo. Either
    may be ``None`` (that step was the identity).
    """
    p = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
    if map_xy is not None:
        p = sample_map(map_xy, p)
    if homography is not None:
        p = apply_homography(np.linalg.inv(np.asarray(homography, dtype=np.float64)), p)
    return p


def rectified_px_size(map_xy: np.ndarray | None, homography: np.ndarray | None, at: tuple[float, float]) -> float:
    """Original-photo px per rectified px near the rectified point ``at`` (the mean of the x and y
    stretch of :func:`rectified_to_original` over one pixel)."""
    x, y = float(at[0]), float(at[1])
    p = rectified_to_original(np.array([[x - 0.5, y], [x + 0.5, y], [x, y - 0.5], [x, y + 0.5]]), map_xy, homography)
    return float(0.5 * (np.linalg.norm(p[1] - p[0]) + np.linalg.norm(p[3] - p[2])))
