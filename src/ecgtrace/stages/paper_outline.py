"""The outline of the sheet in a photo: four corners, for a perspective correction without a model.

A phone photo shows the ECG sheet on a table, a screen frame or a hand; the sheet's
four edges fix the perspective. The sheet is told from its surroundings by colour:
the background is what the picture's border strip shows, the sheet is the largest
region far from that colour. Each side of the sheet's outline is fitted with a
straight line (robust to the notch of a torn corner or a curled edge) and the
corners are the intersections of neighbouring sides.

Refused (``None``): pictures whose border is mostly sheet (scans, a sheet that
fills or leaves the frame), outlines that are not four-sided, sheets too small
or too large in the frame. The caller then keeps its resize-only fallback.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

#: Work size (longest side, px) for the segmentation.
WORK_SIDE = 640
#: Minimum Lab distance between sheet and background colours (a grey sheet on a grey table fails).
MIN_CONTRAST = 14.0
#: Sheet area as a fraction of the picture.
MIN_AREA, MAX_AREA = 0.20, 0.96
#: Outlines whose sides are not straight to within this fraction of the picture are not used.
MAX_FIT_FRACTION = 0.0025


@dataclass
class PaperOutline:
    """Four sheet corners in picture px, clockwise from the corner nearest the picture's top-left."""

    corners: np.ndarray  # (4, 2)
    area_fraction: float
    contrast: float  # Lab distance between the sheet's and the background's median colours
    fit_px: float  # RMS distance of the outline points to the fitted sides (picture px)


def _largest_blob(mask: np.ndarray) -> np.ndarray:
    n, lab, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=4)
    if n <= 1:
        return np.zeros_like(mask, bool)
    k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    blob = lab == k
    # fill holes: everything not reachable from outside the blob
    inv = (~blob).astype(np.uint8)
    pad = np.pad(inv, 1, constant_values=1)
    ff = pad.copy()
    cv2.floodFill(ff, None, (0, 0), 2)
    return blob | (ff[1:-1, 1:-1] == 1)


def _order(quad: np.ndarray) -> np.ndarray:
    """Clockwise from the corner nearest the top-left."""
    c = quad.mean(axis=0)
    ang = np.arctan2(quad[:, 1] - c[1], quad[:, 0] - c[0])
    q = quad[np.argsort(ang)]  # clockwise in image coordinates (y down)
    start = int(np.argmin(q.sum(axis=1)))
    return np.roll(q, -start, axis=0)


def _fit_side(pts: np.ndarray) -> np.ndarray | None:
    """Line (a, b, c), a^2 + b^2 = 1, through ``pts`` by least squares, trimmed once for outliers."""
    if len(pts) < 5:
        return None
    for _ in range(2):
        vx, vy, x0, y0 = cv2.fitLine(pts.astype(np.float32), cv2.DIST_HUBER, 0, 0.01, 0.01).ravel()
        a, b = -vy, vx
        c = -(a * x0 + b * y0)
        d = np.abs(pts @ np.array([a, b]) + c)
        keep = d <= max(1.5, 2.5 * np.median(d))
        if keep.all() or keep.sum() < 5:
            break
        pts = pts[keep]
    return np.array([a, b, c], np.float64)


def _intersect(l1: np.ndarray, l2: np.ndarray) -> np.ndarray | None:
    p = np.cross(l1, l2)
    if abs(p[2]) < 1e-9:
        return None
    return p[:2] / p[2]


def find_paper_outline(image_bgr: np.ndarray) -> PaperOutline | None:
    """The sheet's four corners in ``image_bgr`` px, or None when no clean four-sided sheet is seen."""
    h0, w0 = image_bgr.shape[:2]
    s = WORK_SIDE / float(max(h0, w0))
    small = cv2.resize(image_bgr, (max(8, round(w0 * s)), max(8, round(h0 * s))), interpolation=cv2.INTER_AREA)
    h, w = small.shape[:2]
    lab = cv2.cvtColor(cv2.GaussianBlur(small, (5, 5), 0), cv2.COLOR_BGR2LAB).astype(np.float32)
    b = max(3, int(0.02 * min(h, w)))
    border = np.concatenate([lab[:b].reshape(-1, 3), lab[-b:].reshape(-1, 3),
                             lab[:, :b].reshape(-1, 3), lab[:, -b:].reshape(-1, 3)])
    bg = np.median(border, axis=0)
    dist = np.linalg.norm(lab - bg, axis=2)
    d8 = np.clip(dist * (255.0 / max(1.0, float(np.percentile(dist, 99.5)))), 0, 255).astype(np.uint8)
    thr, _ = cv2.threshold(d8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    mask = d8 > thr
    k = max(3, int(0.012 * max(h, w))) | 1
    ker = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_CLOSE, ker)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, ker).astype(bool)
    blob = _largest_blob(mask)
    area = float(blob.mean())
    if not (MIN_AREA <= area <= MAX_AREA):
        return None
    # a sheet that runs off the frame has no fourth side to find
    edge = np.concatenate([blob[0], blob[-1], blob[:, 0], blob[:, -1]])
    if edge.mean() > 0.02:
        return None
    contrast = float(np.linalg.norm(np.median(lab[blob], axis=0) - bg))
    if contrast < MIN_CONTRAST:
        return None
    cnts, _ = cv2.findContours(blob.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cnt = max(cnts, key=cv2.contourArea).reshape(-1, 2).astype(np.float64)
    hull = cv2.convexHull(cnt.astype(np.float32))
    peri = cv2.arcLength(hull, True)
    quad = None
    for eps in (0.01, 0.02, 0.03, 0.05, 0.08):
        ap = cv2.approxPolyDP(hull, eps * peri, True).reshape(-1, 2)
        if len(ap) == 4:
            quad = _order(ap.astype(np.float64))
            break
    if quad is None or not cv2.isContourConvex(quad.astype(np.float32).reshape(-1, 1, 2)):
        return None
    # refine: fit each side to the outline points near it (away from the corners)
    lines = []
    for i in range(4):
        p, q = quad[i], quad[(i + 1) % 4]
        v = q - p
        L = float(np.linalg.norm(v))
        u = v / max(L, 1e-9)
        rel = cnt - p
        t = rel @ u
        d = np.abs(rel @ np.array([-u[1], u[0]]))
        near = (t > 0.1 * L) & (t < 0.9 * L) & (d < max(4.0, 0.03 * L))
        line = _fit_side(cnt[near])
        if line is None:
            return None
        lines.append(line)
    corners = []
    for i in range(4):
        c = _intersect(lines[i - 1], lines[i])
        if c is None:
            return None
        corners.append(c)
    corners = np.array(corners)
    if np.abs(corners - quad).max() > 0.05 * max(h, w):
        return None
    res = []
    for i, ln in enumerate(lines):
        p, q = corners[i], corners[(i + 1) % 4]
        L = float(np.linalg.norm(q - p))
        rel = cnt - p
        t = rel @ ((q - p) / max(L, 1e-9))
        d = np.abs(cnt @ ln[:2] + ln[2])
        res.append(d[(t > 0.1 * L) & (t < 0.9 * L) & (d < 0.05 * L)])
    fit = float(np.sqrt(np.mean(np.concatenate(res) ** 2))) if res else float("nan")
    # small-image px (pixel centres) -> picture px
    full = (corners + 0.5) / np.array([w / w0, h / h0]) - 0.5
    return PaperOutline(corners=full, area_fraction=area, contrast=contrast, fit_px=fit / s)
