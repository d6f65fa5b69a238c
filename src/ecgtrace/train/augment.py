"""Training augmentations shared by the stages: geometry that moves points with the pixels, colour and dirt.

Every function takes an explicit ``np.random.Generator`` (so a sample is a pure
function of its seed, which exact resume relies on) and works on BGR uint8
images. Geometric ones return the 3x3 matrix they applied so callers can move
their targets with :func:`ecgtrace.geometry.apply_homography`. The network input
conversion is :func:`ecgtrace.models.preprocess.to_chw`, the one inference uses.
"""

from __future__ import annotations

import math

import cv2
import numpy as np


def random_perspective(image: np.ndarray, rng: np.random.Generator, scale: tuple[float, float] = (0.6, 1.05),
                       max_angle_deg: float = 15.0, max_tilt: float = 0.08,
                       border: tuple[int, int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A random photo-like view of ``image`` on a canvas of the same size.

    The page is scaled by ``scale``, rotated by up to ``max_angle_deg``, its
    corners pushed in/out by up to ``max_tilt`` of the size (keystone), and
    shifted so it stays mostly in view. Returns (warped image, 3x3 matrix).
    """
    h, w = image.shape[:2]
    s = float(rng.uniform(*scale))
    a = math.radians(float(rng.uniform(-max_angle_deg, max_angle_deg)))
    src = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], dtype=np.float64)
    c = np.array([(w - 1) / 2, (h - 1) / 2])
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    dst = (src - c) @ rot.T * s
    dst += rng.uniform(-max_tilt, max_tilt, size=(4, 2)) * np.array([w, h]) * s
    # keep the page's centre in the frame, with room to move when it is small
    lo, hi = dst.min(0), dst.max(0)
    span = hi - lo
    free = np.maximum(np.array([w, h]) - span, 0.0)
    off = np.array([(w - span[0]) / 2, (h - span[1]) / 2]) - lo
    off += rng.uniform(-0.5, 0.5, size=2) * (free + 0.1 * np.array([w, h]))
    dst = dst + off
    m = cv2.getPerspectiveTransform(src.astype(np.float32), dst.astype(np.float32))
    if border is None:
        border = tuple(int(v) for v in rng.integers(40, 230, size=3))
    out = cv2.warpPerspective(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                              borderValue=border)
    return out, m.astype(np.float64)


def color_jitter(image: np.ndarray, rng: np.random.Generator, p_gray: float = 0.2) -> np.ndarray:
    """Brightness, contrast, gamma, channel gains, sometimes grey ("decolour"), blur and noise."""
    img = image.astype(np.float32) / 255.0
    if rng.random() < p_gray:
        g = cv2.cvtColor(np.clip(img, 0, 1), cv2.COLOR_BGR2GRAY)
        img = np.repeat(g[..., None], 3, axis=2)
    img = img * rng.uniform(0.85, 1.15, size=3).astype(np.float32)  # white balance
    img = (img - 0.5) * rng.uniform(0.7, 1.3) + 0.5 + rng.uniform(-0.15, 0.15)
    img = np.clip(img, 0.0, 1.0) ** rng.uniform(0.7, 1.4)
    if rng.random() < 0.3:
        k = int(rng.choice([3, 5]))
        img = cv2.GaussianBlur(img, (k, k), 0)
    if rng.random() < 0.5:
        img = img + rng.normal(0.0, rng.uniform(0.005, 0.04), size=img.shape).astype(np.float32)
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def add_dirt(image: np.ndarray, rng: np.random.Generator, max_blobs: int = 6) -> np.ndarray:
    """Semi-transparent stains, smudges and pen strokes (never covering much of the page)."""
    h, w = image.shape[:2]
    out = image.astype(np.float32)
    for _ in range(int(rng.integers(0, max_blobs + 1))):
        mask = np.zeros((h, w), np.float32)
        kind = rng.random()
        color = np.array([rng.uniform(20, 140), rng.uniform(40, 160), rng.uniform(60, 200)], np.float32)
        if kind < 0.6:  # a stain: blurred ellipse
            c = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            ax = (int(rng.uniform(0.02, 0.12) * w) + 1, int(rng.uniform(0.02, 0.12) * h) + 1)
            cv2.ellipse(mask, c, ax, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
            k = max(3, (min(ax) // 2) * 2 + 1)
            mask = cv2.GaussianBlur(mask, (k, k), 0) * rng.uniform(0.15, 0.5)
        else:  # a pen stroke / scribble
            pts = np.cumsum(rng.normal(0, 0.03, size=(int(rng.integers(3, 8)), 2)), axis=0)
            pts = (pts + rng.uniform(0.1, 0.9, size=2)) * np.array([w, h])
            cv2.polylines(mask, [pts.astype(np.int32)], False, 1.0, max(1, int(min(h, w) * 0.004)), cv2.LINE_AA)
            color = rng.uniform(0, 120, size=3).astype(np.float32)
            mask *= rng.uniform(0.4, 0.9)
        out = out * (1 - mask[..., None]) + color * mask[..., None]
    return np.clip(out, 0, 255).astype(np.uint8)


def jpeg(image: np.ndarray, rng: np.random.Generator, quality: tuple[int, int] = (35, 95)) -> np.ndarray:
    """Re-encode as JPEG at a random quality (compression artefacts)."""
    q = int(rng.integers(quality[0], quality[1] + 1))
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, q])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR) if ok else image
