"""Distortions that imitate the competition's image variants.

A variant is one geometric warp (at most ONE ``cv2.remap`` per page: scanner
rotation/skew, camera perspective and non-rigid paper curl, creases and
wrinkles are composed into a single backward map) followed by photometric
effects (lighting, shadows, stains, mould, moire, blur, noise, JPEG, B/W) and,
last, an optional orientation class (:mod:`ecgtrace.orient`). A page whose ground
truth carries ECG-Image-Kit augmentation parameters (:class:`EikAugment`, drawn per
page by the renderer's random styles) first gets, in every variant but the clean 0001,
that augmentation (rotation, crop,
padding, strong grey noise, colour temperature) as the generator's saved file would
show it; the variant then prints / scans / photographs that file (one resampling
more for such pages, as the real chain has).

Geometry is exact: a :class:`Warp` is ``src = Hinv(q) + D(q)`` for an output
pixel ``q``, with ``Hinv`` a homography (output -> input px) and ``D`` a
smooth displacement sampled bilinearly from a coarse grid on the output image.
The image is warped with that map and ground-truth points are moved forward by
solving ``Hinv(q) + D(q) = p`` for ``q`` (fixed-point iterations until the
residual is below 0.01 px), so points and pixels agree to a few hundredths of
a pixel (bilinear remap quantizes source positions to 1/32 px).

Sizes scale with the page: every length below is given for the canonical
2200 px wide page and multiplied by ``u = width / 2200``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Callable

import cv2
import numpy as np

from ecgtrace import orient
from ecgtrace.data.groundtruth import GroundTruth
from ecgtrace.errors import EcgTraceError

VARIANT_INFO: dict[str, str] = {
    "0001": "clean render",
    "0003": "colour print, colour scan",
    "0004": "colour print, black-and-white scan",
    "0005": "phone photo of a print",
    "0006": "phone photo of a screen (moire, glare, RGB subpixel pattern)",
    "0009": "photo of a stained / soaked print",
    "0010": "photo of a badly damaged print (creases, folds, wrinkles, tears)",
    "0011": "colour scan of a mouldy print",
    "0012": "black-and-white scan of a mouldy print",
}
VARIANTS: tuple[str, ...] = tuple(VARIANT_INFO)

F32 = np.float32
#: Largest Frobenius norm allowed for the Jacobian of a displacement field, so
#: that the warp stays invertible and the fixed-point solve converges fast.
MAX_DISP_GRAD = 0.35
#: Stop the forward point solve when the residual is below this (input px).
POINT_TOL_PX = 0.01


# =============================================================================
# coarse grids: node k sits at pixel k*step + (step-1)/2 for k = -MARGIN ..
# ceil(size/step) - 1 + MARGIN, so that an integer-factor cv2.resize
# (INTER_LINEAR, half-pixel centres) interpolates, at every pixel of the image,
# exactly the bilinear function that sample_coarse evaluates for points; the
# extra node on each side means no pixel of the image is clamped.
# =============================================================================
MARGIN = 1


def coarse_shape(size: tuple[int, int], step: int) -> tuple[int, int]:
    """Shape (ch, cw) of the coarse grid covering an image of ``size`` = (h, w), margin included."""
    h, w = size
    return -(-h // step) + 2 * MARGIN, -(-w // step) + 2 * MARGIN


def coarse_nodes(size: tuple[int, int], step: int) -> np.ndarray:
    """(ch, cw, 2) float64 pixel positions (x, y) of the coarse grid nodes."""
    ch, cw = coarse_shape(size, step)
    xs = (np.arange(cw) - MARGIN) * step + (step - 1) / 2.0
    ys = (np.arange(ch) - MARGIN) * step + (step - 1) / 2.0
    return np.stack(np.meshgrid(xs, ys), axis=-1)


def upsample(coarse: np.ndarray, size: tuple[int, int], step: int) -> np.ndarray:
    """Bilinear upsampling of a coarse grid to full ``size`` (float32, channels kept)."""
    h, w = size
    ch, cw = coarse.shape[:2]
    c = np.ascontiguousarray(coarse, dtype=F32)
    out = c if step == 1 else cv2.resize(c, (cw * step, ch * step), interpolation=cv2.INTER_LINEAR)
    o = MARGIN * step
    return out[o:o + h, o:o + w]


def upsample_u8(coarse: np.ndarray, size: tuple[int, int], step: int) -> np.ndarray:
    """Like :func:`upsample` for a uint8/uint16 grid (fast fixed-point resize; for photometric fields only)."""
    h, w = size
    ch, cw = coarse.shape[:2]
    out = coarse if step == 1 else cv2.resize(coarse, (cw * step, ch * step), interpolation=cv2.INTER_LINEAR)
    o = MARGIN * step
    return out[o:o + h, o:o + w]


def sample_coarse(coarse: np.ndarray, pts: np.ndarray, step: int) -> np.ndarray:
    """Bilinear value of a coarse grid at pixel points (N, 2), clamped at the border, float64."""
    ch, cw = coarse.shape[:2]
    u = np.clip(np.nan_to_num((pts[:, 0] - (step - 1) / 2.0) / step + MARGIN), 0, cw - 1)
    v = np.clip(np.nan_to_num((pts[:, 1] - (step - 1) / 2.0) / step + MARGIN), 0, ch - 1)
    i0 = np.minimum(np.floor(v).astype(np.int64), max(ch - 2, 0))
    j0 = np.minimum(np.floor(u).astype(np.int64), max(cw - 2, 0))
    i1 = np.minimum(i0 + 1, ch - 1)
    j1 = np.minimum(j0 + 1, cw - 1)
    fy = (v - i0)
    fx = (u - j0)
    c = coarse  # gathered values are promoted to float64 by the float64 weights
    if c.ndim == 3:
        fx, fy = fx[:, None], fy[:, None]
    top = c[i0, j0] * (1 - fx) + c[i0, j1] * fx
    bot = c[i1, j0] * (1 - fx) + c[i1, j1] * fx
    return top * (1 - fy) + bot * fy


def _apply_h(h: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Homography ``h`` applied to points (N, 2), float64."""
    p = np.asarray(pts, dtype=np.float64)
    den = p[:, 0] * h[2, 0] + p[:, 1] * h[2, 1] + h[2, 2]
    x = (p[:, 0] * h[0, 0] + p[:, 1] * h[0, 1] + h[0, 2]) / den
    y = (p[:, 0] * h[1, 0] + p[:, 1] * h[1, 1] + h[1, 2]) / den
    return np.stack([x, y], axis=1)


# =============================================================================
# the one geometric operation
# =============================================================================
@dataclass
class Warp:
    """Backward map ``src = Hinv(q) + D(q)`` from output pixels ``q`` to input pixels.

    ``Hinv`` is a homography, ``D`` a smooth displacement on a coarse output
    grid (bilinear). A pure homography (``disp`` is None) is drawn with
    ``cv2.warpPerspective``; otherwise the map ``Hinv + D`` is formed on the
    coarse grid and drawn with one ``cv2.remap`` (the homography, interpolated
    over 8 px cells, differs from the exact one by ~1e-3 px).

    Attributes:
        in_size: (h, w) of the input image.
        out_size: (h, w) of the output image.
        hinv: 3x3 homography output px -> input px (None = identity).
        disp: (ch, cw, 2) float32 backward displacement (input px) on the coarse output grid, or None.
        step: coarse grid spacing in output px (see :func:`coarse_nodes`).
    """

    in_size: tuple[int, int]
    out_size: tuple[int, int]
    hinv: np.ndarray | None = None
    disp: np.ndarray | None = None
    step: int = 8

    @property
    def h(self) -> np.ndarray | None:
        """Forward homography input px -> output px."""
        return None if self.hinv is None else np.linalg.inv(self.hinv)

    def _hinv(self, q: np.ndarray) -> np.ndarray:
        return q.copy() if self.hinv is None else _apply_h(self.hinv, q)

    def backward(self, q: np.ndarray) -> np.ndarray:
        """Output px (N, 2) -> input px (N, 2)."""
        q = np.asarray(q, dtype=np.float64).reshape(-1, 2)
        p = self._hinv(q)
        if self.disp is not None:
            p += sample_coarse(self.disp, q, self.step)
        return p

    def forward(self, p: np.ndarray) -> np.ndarray:
        """Input px (N, 2) -> output px (N, 2): the inverse of :meth:`backward`.

        Fixed point ``q <- H(p - D(q))`` until ``|backward(q) - p| < POINT_TOL_PX``;
        it converges because ``|grad D|`` is kept small (:func:`limit_gradient`).
        """
        p = np.asarray(p, dtype=np.float64).reshape(-1, 2)
        h = self.h
        q = p.copy() if h is None else _apply_h(h, p)
        if self.disp is None or len(p) == 0:
            return q
        for _ in range(100):
            d = sample_coarse(self.disp, q, self.step)
            res = self._hinv(q) + d - p  # = backward(q) - p
            err = np.abs(res[np.isfinite(res).all(axis=1)])
            if err.size == 0 or err.max() < POINT_TOL_PX:
                break
            q = p - d if h is None else _apply_h(h, p - d)
        return q

    def coarse_map(self) -> np.ndarray | None:
        """(ch, cw, 2) float32 source position of every coarse node (None for a pure homography)."""
        if self.disp is None:
            return None
        nodes = coarse_nodes(self.out_size, self.step)
        src = self._hinv(nodes.reshape(-1, 2)).reshape(nodes.shape)
        return (src + self.disp).astype(F32)

    def maps(self) -> np.ndarray:
        """Full-resolution (h, w, 2) float32 map of source positions (for checks; :meth:`apply` is faster)."""
        if self.disp is not None:
            return upsample(self.coarse_map(), self.out_size, self.step)
        h, w = self.out_size
        xs, ys = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
        q = np.stack([xs.ravel(), ys.ravel()], 1)
        return self._hinv(q).reshape(h, w, 2).astype(F32)

    def apply(self, image: np.ndarray, fill: tuple[float, float, float] | np.ndarray = (255, 255, 255)) -> np.ndarray:
        """Warp ``image`` (one resampling); where the input does not cover the output, show ``fill``.

        ``fill`` is a BGR colour or a full-size uint8 background image (a table, a screen bezel);
        OpenCV blends the pixels on the paper's edge with it.
        """
        h, w = self.out_size
        full = None if self.disp is None else upsample(self.coarse_map(), self.out_size, self.step)
        if isinstance(fill, np.ndarray):
            if fill.shape[:2] != (h, w):
                raise EcgTraceError(f"background is {fill.shape[:2]}, the warp makes {(h, w)}; pass a full-size image")
            out, border, value = fill.copy(), cv2.BORDER_TRANSPARENT, 0
        else:
            out, border, value = None, cv2.BORDER_CONSTANT, tuple(float(v) for v in fill)
        if full is None:
            m = np.eye(3) if self.hinv is None else self.hinv
            res = cv2.warpPerspective(image, m, (w, h), dst=out, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                      borderMode=border, borderValue=value)
        else:
            res = cv2.remap(image, full, None, cv2.INTER_LINEAR, dst=out, borderMode=border, borderValue=value)
        return res

    def move(self, gt: GroundTruth | None, **changes) -> GroundTruth | None:
        """Move every ground-truth point with this warp."""
        if gt is None:
            return None
        return gt.transformed(self.forward, self.out_size, **changes)


def limit_gradient(disp: np.ndarray, step: int, max_grad: float = MAX_DISP_GRAD) -> np.ndarray:
    """Scale a coarse displacement field down so its Jacobian norm stays <= ``max_grad`` (invertible warp)."""
    if disp.shape[0] < 2 or disp.shape[1] < 2:
        return disp
    gx = np.diff(disp, axis=1)[:-1] / step
    gy = np.diff(disp, axis=0)[:, :-1] / step
    g = float(np.sqrt((gx ** 2).sum(-1) + (gy ** 2).sum(-1)).max())
    return disp * F32(max_grad / g) if g > max_grad else disp


# =============================================================================
# page-space deformations: callables of page points r (N, 2) float32 returning
# a backward displacement (N, 2) and a shading offset (N,) (0 = unchanged).
# Plain element-wise float32 arithmetic: tiny matmuls are slow on busy machines.
# =============================================================================
PageField = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def curl_field(page_size: tuple[int, int], rng: np.random.Generator, amp_px: float) -> PageField:
    """Gentle paper curl: a few page-sized sine modes, amplitude ``amp_px``, with the matching shading."""
    h, w = page_size
    n = 3
    k = rng.uniform(0.3, 1.2, (n, 2)) * rng.choice([-1, 1], (n, 2)) / np.array([w, h])
    phase = rng.uniform(0, 2 * np.pi, n)
    vec = rng.normal(0, 1, (n, 2))
    vec *= amp_px / np.sqrt(n) / np.maximum(np.linalg.norm(vec, axis=1, keepdims=True), 1e-9)
    light = rng.normal(0, 1, 2)
    light /= np.linalg.norm(light) + 1e-9
    shade_amp = rng.uniform(0.01, 0.05) * min(w, h)

    def f(r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x, y = r[:, 0], r[:, 1]
        d = np.zeros_like(r)
        s = np.zeros(len(r), F32)
        for i in range(n):
            arg = F32(2 * np.pi * k[i, 0]) * x + F32(2 * np.pi * k[i, 1]) * y + F32(phase[i])
            sn = np.sin(arg)
            d[:, 0] += F32(vec[i, 0]) * sn
            d[:, 1] += F32(vec[i, 1]) * sn
            s += F32(shade_amp * (k[i] @ light)) * np.cos(arg)
        return d, s

    return f


def crease_field(page_size: tuple[int, int], rng: np.random.Generator, n_creases: int, u: float) -> PageField:
    """Fold lines: the paper shifts by a few px across each fold; a dark groove, a highlight and a lit side."""
    h, w = page_size
    lines = []
    for _ in range(n_creases):
        if rng.random() < 0.7:  # folded in halves / thirds: near-horizontal or near-vertical lines
            vert = rng.random() < 0.5
            ang = rng.normal(0, 0.03) + (0.0 if vert else np.pi / 2)
            frac = rng.choice([1 / 2, 1 / 3, 2 / 3, 1 / 4, 3 / 4]) + rng.normal(0, 0.02)
            c0 = np.array([w * frac, h / 2]) if vert else np.array([w / 2, h * frac])
        else:
            ang = rng.uniform(0, np.pi)
            c0 = np.array([rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h])
        n = np.array([np.cos(ang), np.sin(ang)])  # normal of the fold line
        lines.append(dict(n=n.astype(F32), c=F32(n @ c0), amp=F32(rng.uniform(0.8, 2.5) * u),
                          width=F32(rng.uniform(10, 16) * u), side=F32(rng.uniform(0.02, 0.08) * rng.choice([-1, 1])),
                          dark=F32(rng.uniform(0.08, 0.25)), bright=F32(rng.uniform(0.0, 0.12)),
                          lw=F32(max(rng.uniform(2.0, 4.0) * u, 1.0))))

    def f(r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d = np.zeros_like(r)
        s = np.zeros(len(r), F32)
        for L in lines:
            t = r[:, 0] * L["n"][0] + r[:, 1] * L["n"][1] - L["c"]
            step = L["amp"] * np.tanh(t / L["width"])
            d[:, 0] += step * L["n"][0]
            d[:, 1] += step * L["n"][1]
            s += L["side"] * np.tanh(t / (3 * L["width"]))
            s -= L["dark"] * np.exp(-np.square(t / L["lw"]))
            s += L["bright"] * np.exp(-np.square((t - 2 * L["lw"]) / (1.5 * L["lw"])))
        return d, s

    return f


def _smooth_noise(shape: tuple[int, int], cell: float, rng: np.random.Generator, channels: int = 1) -> np.ndarray:
    """Zero-mean, unit-std smooth random field of ``shape`` with feature size ``cell`` (px of that array)."""
    ch = max(2, int(round(shape[0] / cell)) + 2)
    cw = max(2, int(round(shape[1] / cell)) + 2)
    z = rng.standard_normal((ch, cw, channels)).astype(F32)
    big = cv2.resize(z, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)
    big = big.reshape(shape[0], shape[1], channels)
    big -= big.mean(axis=(0, 1))
    big /= big.std(axis=(0, 1)) + 1e-6
    return big if channels > 1 else big[..., 0]


def wrinkle_field(page_size: tuple[int, int], rng: np.random.Generator, amp_px: float, cell_px: float,
                  shade: float, ridged: bool = False) -> PageField:
    """Crumpled / cockled paper: smooth random displacement of feature size ``cell_px`` and matching shading.

    ``ridged`` folds the height field (|noise|) so the shading shows sharp crumple ridges.
    """
    h, w = page_size
    st = max(1.0, cell_px / 8)  # sample the random fields on a page grid this fine
    gh, gw = int(h / st) + 2, int(w / st) + 2
    z = _smooth_noise((gh, gw), cell_px / st, rng, channels=3)  # dx, dy, height
    height = z[..., 2]
    if ridged:
        h2 = _smooth_noise((gh, gw), cell_px / st / 2.3, rng)
        height = -np.abs(height) - 0.3 * np.abs(h2)
    hx = cv2.Sobel(height, cv2.CV_32F, 1, 0, ksize=3)
    hy = cv2.Sobel(height, cv2.CV_32F, 0, 1, ksize=3)
    light = rng.normal(0, 1, 2)
    light /= np.linalg.norm(light) + 1e-9
    sh = hx * F32(light[0]) + hy * F32(light[1])
    sh *= F32(shade) / (np.percentile(np.abs(sh), 99) + 1e-6)
    fields = np.dstack([z[..., 0] * F32(amp_px), z[..., 1] * F32(amp_px), sh]).astype(F32)
    inv = F32(1.0 / st)

    def f(r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # node k of the field sits at page px k * st
        n = len(r)
        m = np.zeros((-(-n // 1024) * 1024, 2), F32)  # remap wants < 32767 rows: fold into 1024 columns
        m[:n] = r * inv
        v = cv2.remap(fields, m.reshape(-1, 1024, 2), None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        v = v.reshape(-1, 3)[:n]
        return v[:, :2], v[:, 2]

    return f


def build_warp(page_size: tuple[int, int], out_size: tuple[int, int], hinv: np.ndarray | None,
               page_fields: list[PageField], step: int) -> tuple[Warp, np.ndarray | None]:
    """Compose a homography and page-space deformations into one :class:`Warp`.

    The fields are evaluated where each coarse output node lands on the page
    (``r = Hinv(q)``); the warp's grid is ``Hinv(q) + sum of displacements``.
    Returns the warp and the summed shading offset on the same coarse grid (None if no fields).
    """
    if not page_fields:
        return Warp(page_size, out_size, hinv, None, step), None
    nodes = coarse_nodes(out_size, step)
    ch, cw = nodes.shape[:2]
    q = nodes.reshape(-1, 2)
    r = (q.copy() if hinv is None else _apply_h(hinv, q)).astype(F32)
    d = np.zeros_like(r)
    s = np.zeros(len(r), F32)
    for f in page_fields:
        dd, ss = f(r)
        d += dd
        s += ss
    disp = limit_gradient(d.reshape(ch, cw, 2), step)
    return Warp(page_size, out_size, hinv, disp, step), s.reshape(ch, cw)


def _grid_step(u: float, fine: bool = False) -> int:
    """Coarse grid spacing: 8 px on the canonical page (4 px where thin crease shading must show)."""
    return max(2, int(round((4 if fine else 8) * u)))


# =============================================================================
# geometric building blocks (each returns a Warp; public so tests can check each)
# =============================================================================
def rotation_warp(size: tuple[int, int], rng: np.random.Generator, max_deg: float = 2.0) -> Warp:
    """Small rotation + scale + shift about the centre (a page on a scanner bed)."""
    h, w = size
    ang = rng.uniform(-max_deg, max_deg)
    sc = rng.uniform(0.97, 1.02)
    u = w / 2200
    m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), ang, sc)
    m[:, 2] += rng.uniform(-12, 12, 2) * u
    hf = np.vstack([m, [0, 0, 1]])
    return Warp(size, size, np.linalg.inv(hf), None, _grid_step(u))


def skew_warp(size: tuple[int, int], rng: np.random.Generator, max_deg: float = 1.0) -> Warp:
    """Small shear and anisotropic scale (a sheet fed crooked through a scanner)."""
    h, w = size
    sx, sy = np.tan(np.radians(rng.uniform(-max_deg, max_deg, 2)))
    a = np.array([[rng.uniform(0.98, 1.02), sx, 0], [sy, rng.uniform(0.98, 1.02), 0], [0, 0, 1.0]])
    c = np.array([[1, 0, (w - 1) / 2], [0, 1, (h - 1) / 2], [0, 0, 1.0]])
    hf = c @ a @ np.linalg.inv(c)
    return Warp(size, size, np.linalg.inv(hf), None, _grid_step(w / 2200))


def perspective_homography(size: tuple[int, int], rng: np.random.Generator, fill: tuple[float, float] = (0.82, 0.97),
                           max_rot_deg: float = 5.0, jitter: float = 0.04,
                           crop_p: float = 0.1) -> tuple[np.ndarray, tuple[int, int]]:
    """Camera view of a page lying on a table: (Hinv output->page, output size)."""
    h, w = size
    ow = int(round(w * rng.uniform(1.0, 1.12)))
    oh = int(round(h * rng.uniform(1.0, 1.15)))
    s = rng.uniform(*fill) * min(ow / w, oh / h)
    if rng.random() < crop_p:  # page larger than the frame: edges cut off
        s = rng.uniform(1.0, 1.05) * min(ow / w, oh / h)
    ang = np.radians(np.clip(rng.normal(0, max_rot_deg / 2), -max_rot_deg, max_rot_deg))
    src = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], dtype=np.float64)
    cen = src.mean(0)
    ca, sa = np.cos(ang), np.sin(ang)
    rel = src - cen
    dst = np.stack([ca * rel[:, 0] - sa * rel[:, 1], sa * rel[:, 0] + ca * rel[:, 1]], 1) * s
    slack = np.array([ow, oh]) - (dst.max(0) - dst.min(0))
    off = np.array([(ow - 1) / 2, (oh - 1) / 2]) + rng.uniform(-0.45, 0.45, 2) * np.maximum(slack, 0)
    dst = dst + off
    # keystone (camera tilt) + independent corner jitter
    tilt = rng.normal(0, jitter / 2, 2) * w * s
    dst[0, 0] += tilt[0]
    dst[1, 0] -= tilt[0]
    dst[0, 1] += tilt[1]
    dst[3, 1] -= tilt[1]
    dst += rng.uniform(-jitter, jitter, (4, 2)) * w * s / 2
    hf = cv2.getPerspectiveTransform(src.astype(F32), dst.astype(F32)).astype(np.float64)
    return np.linalg.inv(hf), (oh, ow)


def perspective_warp(size: tuple[int, int], rng: np.random.Generator) -> Warp:
    """Phone photo geometry: the page under a perspective view, output size differs from the page."""
    hinv, out = perspective_homography(size, rng)
    return Warp(size, out, hinv, None, _grid_step(size[1] / 2200))


def curl_warp(size: tuple[int, int], rng: np.random.Generator, amp: float = 8.0) -> Warp:
    """Non-rigid paper curl only (output size = input size)."""
    u = size[1] / 2200
    return build_warp(size, size, None, [curl_field(size, rng, amp * u)], _grid_step(u))[0]


def crease_warp(size: tuple[int, int], rng: np.random.Generator, n: int = 3) -> Warp:
    """Fold lines only."""
    u = size[1] / 2200
    return build_warp(size, size, None, [crease_field(size, rng, n, u)], _grid_step(u, fine=True))[0]


def wrinkle_warp(size: tuple[int, int], rng: np.random.Generator, amp: float = 3.0) -> Warp:
    """Crumpled-paper wrinkles only."""
    u = size[1] / 2200
    return build_warp(size, size, None, [wrinkle_field(size, rng, amp * u, 90 * u, 0.1, ridged=True)],
                      _grid_step(u))[0]


def photo_warp(size: tuple[int, int], rng: np.random.Generator) -> Warp:
    """Perspective + curl + creases + wrinkles, composed into one map."""
    u = size[1] / 2200
    hinv, out = perspective_homography(size, rng)
    fields = [curl_field(size, rng, 6 * u), crease_field(size, rng, 2, u), wrinkle_field(size, rng, 2 * u, 80 * u, 0.1)]
    return build_warp(size, out, hinv, fields, _grid_step(u, fine=True))[0]


#: Every geometric building block, by name: ``fn(size, rng) -> Warp``.
GEOMETRIC_OPS: dict[str, Callable[[tuple[int, int], np.random.Generator], Warp]] = {
    "rotation": rotation_warp,
    "skew": skew_warp,
    "perspective": perspective_warp,
    "curl": curl_warp,
    "crease": crease_warp,
    "wrinkle": wrinkle_warp,
    "photo": photo_warp,
}


# =============================================================================
# photometric effects: multiplicative gain G and additive light A on a coarse
# output grid, applied once at full resolution
# =============================================================================
class Light:
    """Accumulates low-frequency lighting (gain ``G`` and additive ``A``, BGR) on a coarse grid."""

    def __init__(self, size: tuple[int, int], step: int):
        self.size = size
        self.step = step
        self.nodes = coarse_nodes(size, step).astype(F32)
        ch, cw = self.nodes.shape[:2]
        self.G = np.ones((ch, cw, 3), F32)
        self.A: np.ndarray | None = None
        h, w = size
        rel = (self.nodes - np.array([w / 2, h / 2], F32)) / F32(max(h, w) / 2)  # ~[-1, 1]
        self.rx, self.ry = rel[..., 0], rel[..., 1]

    def gain(self, g: np.ndarray | float) -> None:
        g = np.asarray(g, F32)
        self.G *= g[..., None] if g.ndim == 2 else g

    def add(self, a: np.ndarray) -> None:
        self.A = a.astype(F32) if self.A is None else self.A + a

    def apply(self, img: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
        """img * G + A (+ int16 noise) at full resolution, in integer arithmetic (gain in 1/4096 steps)."""
        g16 = np.rint(np.clip(self.G, 0, 15.9) * 4096).astype(np.uint16)
        out = cv2.multiply(img, upsample_u8(g16, self.size, self.step), scale=1.0 / 4096, dtype=cv2.CV_8U)
        if self.A is not None:
            out = cv2.add(out, upsample_u8(cv2.convertScaleAbs(np.clip(self.A, 0, 255)), self.size, self.step))
        if noise is not None:
            out = add_noise(out, noise)
        return out


def _unit(rng: np.random.Generator) -> tuple[F32, F32]:
    a = rng.uniform(0, 2 * np.pi)
    return F32(np.cos(a)), F32(np.sin(a))


def light_gradient(L: Light, rng: np.random.Generator, strength: float) -> None:
    """Uneven illumination: a linear ramp in a random direction."""
    dx, dy = _unit(rng)
    L.gain(1 + F32(strength * 0.5) * (L.rx * dx + L.ry * dy) - F32(strength * 0.25))


def vignette(L: Light, rng: np.random.Generator, strength: float) -> None:
    """Darker corners (phone lens)."""
    cx, cy = rng.uniform(-0.2, 0.2, 2).astype(F32)
    r2 = np.square(L.rx - cx) + np.square(L.ry - cy)
    L.gain(1 - F32(strength) * np.clip(r2 * F32(0.5), 0, 1.5))


def shadow(L: Light, rng: np.random.Generator, strength: float) -> None:
    """A soft-edged shadow (hand, phone) entering from one side."""
    ch, cw = L.G.shape[:2]
    m = np.zeros((ch, cw), np.uint8)
    side = rng.integers(4)
    k = rng.integers(3, 6)
    depth = rng.uniform(0.15, 0.55)
    t = np.sort(rng.uniform(-0.2, 1.2, 2))
    if side in (0, 1):  # enters from left/right
        x_in = depth * cw if side == 0 else (1 - depth) * cw
        x_edge = -5 if side == 0 else cw + 5
        pts = [[x_edge, t[0] * ch]] + [[x_in + rng.normal(0, 0.08) * cw, y] for y in
                                        np.linspace(t[0], t[1], k) * ch] + [[x_edge, t[1] * ch]]
    else:
        y_in = depth * ch if side == 2 else (1 - depth) * ch
        y_edge = -5 if side == 2 else ch + 5
        pts = [[t[0] * cw, y_edge]] + [[x, y_in + rng.normal(0, 0.08) * ch] for x in
                                        np.linspace(t[0], t[1], k) * cw] + [[t[1] * cw, y_edge]]
    cv2.fillPoly(m, [np.array(pts, np.int32)], 255)
    blur_px = max(cw, ch) * rng.uniform(0.02, 0.08)
    mf = cv2.GaussianBlur(m.astype(F32) * F32(1 / 255), (0, 0), blur_px)
    tint = np.array([1.0, 0.97, 0.94], F32)  # shadows are a touch blue
    L.G *= 1 - F32(strength) * mf[..., None] * tint


def colour_cast(L: Light, rng: np.random.Generator, amount: float) -> None:
    """White-balance error / paper tint: per-channel gains."""
    g = 1 + rng.normal(0, amount, 3)
    L.gain((g / g.max()).astype(F32))


def paper_texture(L: Light, rng: np.random.Generator, amount: float) -> None:
    """Mottled paper: faint blotchy brightness variation a few mm across."""
    ch, cw = L.G.shape[:2]
    L.gain(1 + F32(amount) * _smooth_noise((ch, cw), rng.uniform(1.5, 4.0), rng))


def paper_age(L: Light, rng: np.random.Generator, amount: float) -> None:
    """Yellowed paper (less blue, a little less green)."""
    a = rng.uniform(0.3, 1.0) * amount
    L.gain(np.array([1 - a, 1 - 0.45 * a, 1 - 0.1 * a], F32))


def glare(L: Light, rng: np.random.Generator, strength: float) -> None:
    """Bright elliptical reflection (a screen or glossy paper) plus lifted blacks."""
    cx, cy = rng.uniform(-0.7, 0.7, 2).astype(F32)
    ax, ay = rng.uniform(0.15, 0.6, 2).astype(F32)
    c, s = _unit(rng)
    px = (L.rx - cx) * c + (L.ry - cy) * s
    py = -(L.rx - cx) * s + (L.ry - cy) * c
    e = np.exp(-(np.square(px / ax) + np.square(py / ay)))
    a = (F32(255 * strength) * e)[..., None] * np.array([1.0, 0.98, 0.95], F32)
    L.add(a + F32(rng.uniform(5, 25)))
    L.gain(1 - F32(0.5 * strength) * e)  # glare washes out contrast


def stains(L: Light, rng: np.random.Generator, n: int) -> None:
    """Coffee/water stains: irregular blobs with a darker tide-line rim, brownish-yellow."""
    ch, cw = L.G.shape[:2]
    for _ in range(n):
        cx, cy = rng.uniform(0.05, 0.95) * cw, rng.uniform(0.05, 0.95) * ch
        rad = rng.uniform(0.06, 0.3) * min(ch, cw)
        x0, x1 = int(max(0, cx - 1.6 * rad)), int(min(cw, cx + 1.6 * rad))
        y0, y1 = int(max(0, cy - 1.6 * rad)), int(min(ch, cy + 1.6 * rad))
        if x1 - x0 < 4 or y1 - y0 < 4:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(F32)
        rr = np.sqrt(np.square(xx - F32(cx)) + np.square(yy - F32(cy))) / F32(rad)
        t = rr + _smooth_noise((y1 - y0, x1 - x0), max(3.0, rad / 2.5), rng) * F32(0.2)  # < 1 inside
        body = np.clip((1 - t) * 6, 0, 1)
        rim = np.exp(-np.square((t - F32(0.97)) / F32(0.05)))
        colour = np.array([rng.uniform(0.5, 0.8), rng.uniform(0.72, 0.9), rng.uniform(0.88, 1.0)], F32)  # BGR brown
        a = F32(rng.uniform(0.3, 0.75))
        tex = F32(0.7) + F32(0.3) * _smooth_noise(body.shape, 6, rng)
        amt = np.clip(a * (F32(0.55) * body * tex + F32(0.9) * rim), 0, 1)
        L.G[y0:y1, x0:x1] *= 1 - amt[..., None] * (1 - colour)


def mould_halo(L: Light, rng: np.random.Generator, centers: np.ndarray, radii: np.ndarray) -> None:
    """Diffuse greenish-grey discolouration around mould colonies."""
    for (cx, cy), rad in zip(centers, radii):
        d2 = (np.square(L.nodes[..., 0] - F32(cx)) + np.square(L.nodes[..., 1] - F32(cy))) / F32((1.4 * rad) ** 2)
        e = np.exp(-d2) * F32(rng.uniform(0.1, 0.35))
        L.G *= 1 - e[..., None] * np.array([0.3, 0.15, 0.35], F32)


def moire_bands(L: Light, rng: np.random.Generator, strength: float) -> None:
    """Low-frequency coloured bands: the beat of the screen pixel grid and the camera sensor grid."""
    ch, cw = L.G.shape[:2]
    freq = F32(rng.uniform(6, 25) * np.pi)  # bands across the image
    c, s = _unit(rng)
    bend = _smooth_noise((ch, cw), max(ch, cw) / 3, rng) * F32(rng.uniform(1.0, 4.0))
    ph = (L.rx * c + L.ry * s) * freq + bend + F32(rng.uniform(0, 2 * np.pi))
    shift = np.array([0.0, 2.1, 4.2], F32)  # per-channel phase: rainbow tint
    L.G *= 1 + F32(strength) * np.cos(ph[..., None] + shift) * np.array([1.0, 0.8, 1.0], F32)


# =============================================================================
# full-resolution effects
# =============================================================================
@lru_cache(maxsize=4)
def _noise_tile(grain: bool, colour: bool) -> np.ndarray:
    """A fixed 1024 x 1024 x 3 tile of unit Gaussian noise (fine or camera-grain), made once per process."""
    z = np.random.default_rng(20240607 + 2 * grain + colour).standard_normal((1024, 1024, 3)).astype(F32)
    if not colour:
        z[:] = z[..., :1]
    if grain:  # demosaicing/denoising leaves noise correlated over ~2 px
        zp = np.pad(z, ((4, 4), (4, 4), (0, 0)), mode="wrap")  # keep the tile seamless
        z = np.ascontiguousarray(cv2.GaussianBlur(zp, (0, 0), 0.8)[4:-4, 4:-4])
        z /= z.std()
    return z


def sensor_noise(size: tuple[int, int], rng: np.random.Generator, sigma: float, grain: bool = False,
                 colour: bool = True) -> np.ndarray:
    """Gaussian noise (int16, BGR) of std ``sigma`` grey levels as a 1024 x 1024 tile, for :meth:`Light.apply`.

    A cached tile with a random shift and flips, repeated over the image (drawing fresh
    normals for 11 M values costs more than the rest of a scan variant). ``size`` is unused
    beyond documenting intent; the tile covers any size by repetition.
    """
    t = _noise_tile(bool(grain), bool(colour))
    oy, ox = rng.integers(0, 1024, 2)
    fy, fx = rng.random(2) < 0.5
    t16 = np.rint(t * F32(max(sigma, 0.0))).astype(np.int16)
    t16 = t16[::-1 if fy else 1, ::-1 if fx else 1]
    return np.roll(t16, (int(oy), int(ox)), axis=(0, 1))  # a contiguous copy


def add_noise(img: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Saturating ``img + noise`` where ``noise`` (int16) is full-size or a tile repeated over the image."""
    h, w = img.shape[:2]
    th, tw = noise.shape[:2]
    if (th, tw) == (h, w):
        return cv2.add(img, noise, dtype=cv2.CV_8U)
    out = np.empty_like(img)
    for y in range(0, h, th):
        for x in range(0, w, tw):
            roi = img[y:y + th, x:x + tw]
            out[y:y + th, x:x + tw] = cv2.add(roi, noise[:roi.shape[0], :roi.shape[1]], dtype=cv2.CV_8U)
    return out


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """JPEG recompression at ``quality`` (block artefacts, chroma smear)."""
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise EcgTraceError("JPEG encoding failed; check that the image is uint8 BGR")
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)


def blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur (defocus, scanner optics); no-op below 0.2 px."""
    return cv2.GaussianBlur(img, (0, 0), sigma) if sigma >= 0.2 else img


def resolution_loss(img: np.ndarray, factor: float) -> np.ndarray:
    """Down-sample by ``factor`` and back up: detail finer than the camera resolves is lost (size kept)."""
    h, w = img.shape[:2]
    small = cv2.resize(img, (max(1, int(w * factor)), max(1, int(h * factor))), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def motion_blur(img: np.ndarray, rng: np.random.Generator, length: float) -> np.ndarray:
    """Short linear camera-shake blur of ``length`` px."""
    n = int(max(3, round(length)) | 1)
    k = np.zeros((n, n), F32)
    ang = rng.uniform(0, np.pi)
    c = (n - 1) / 2
    cv2.line(k, (int(round(c - c * np.cos(ang))), int(round(c - c * np.sin(ang)))),
             (int(round(c + c * np.cos(ang))), int(round(c + c * np.sin(ang)))), 1.0, 1)
    return cv2.filter2D(img, -1, k / k.sum())


def to_bw(img: np.ndarray, rng: np.random.Generator, threshold_p: float = 0.35) -> np.ndarray:
    """Black-and-white scan: greyscale with a scanner tone curve, sometimes hard-thresholded."""
    g = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    if rng.random() < threshold_p:
        t = rng.uniform(130, 200)
        dark, light = rng.uniform(0, 40), rng.uniform(235, 255)
        ramp = rng.uniform(4, 24)  # a short ramp instead of a step keeps anti-aliased edges smooth
        lut = dark + (light - dark) * np.clip((np.arange(256) - t) / ramp + 0.5, 0, 1)
    else:
        lo, hi = rng.uniform(0, 40), rng.uniform(200, 250)
        gamma = rng.uniform(0.7, 1.5)
        lut = np.clip((np.arange(256) - lo) / (hi - lo), 0, 1) ** gamma * 255
    g = cv2.LUT(g, lut.astype(np.uint8))
    return cv2.cvtColor(g, cv2.COLOR_GRAY2BGR)


def scanner_streaks(img: np.ndarray, rng: np.random.Generator, n: int, u: float) -> None:
    """Thin lines along the scan direction (dust on the glass), drawn in place."""
    h, w = img.shape[:2]
    vertical = rng.random() < 0.5
    for _ in range(n):
        val = int(rng.uniform(0, 80)) if rng.random() < 0.5 else int(rng.uniform(200, 255))
        th = max(1, int(round(rng.uniform(0.5, 2.0) * u)))
        if vertical:
            x = int(rng.integers(0, w))
            cv2.line(img, (x, 0), (x + int(rng.integers(-2, 3)), h - 1), (val, val, val), th)
        else:
            y = int(rng.integers(0, h))
            cv2.line(img, (0, y), (w - 1, y + int(rng.integers(-2, 3))), (val, val, val), th)


def mould_spots(img: np.ndarray, rng: np.random.Generator, centers: np.ndarray, radii: np.ndarray, u: float) -> None:
    """Mould colonies, in place: clusters of fuzzy dark green / black speckles and blotches.

    Each colony is drawn as an alpha mask in its own bounding box (dense core, sparse
    fringe, a few irregular blotches), softened so the specks look fuzzy, then
    composited in one colour that varies from colony to colony.
    """
    h, w = img.shape[:2]
    palette = np.array([[28, 48, 30], [22, 24, 22], [40, 78, 52], [55, 90, 80], [35, 45, 60]], F32)  # BGR
    for (cx, cy), rad in zip(centers, radii):
        x0, x1 = int(max(0, cx - 2.2 * rad)), int(min(w, cx + 2.2 * rad))
        y0, y1 = int(max(0, cy - 2.2 * rad)), int(min(h, cy + 2.2 * rad))
        if x1 - x0 < 3 or y1 - y0 < 3:
            continue
        a = np.zeros((y1 - y0, x1 - x0), np.uint8)
        n_sub = int(rng.integers(2, 7))
        subs = np.array([cx - x0, cy - y0]) + rng.normal(0, 0.5 * rad, (n_sub, 2))
        n = int(rng.integers(80, 500))
        which = rng.integers(0, n_sub, n)
        spread = rng.uniform(0.15, 0.45) * rad
        pts = subs[which] + rng.standard_t(3, (n, 2)) * spread  # heavy tails: a sparse fringe
        sizes = np.clip(rng.gamma(1.2, 0.9, n) * u * 1.5, 0.35 * u, 6 * u)
        vals = rng.uniform(90, 255, n)
        for (x, y), sz, v in zip(pts, sizes, vals):
            cv2.circle(a, (int(round(x * 16)), int(round(y * 16))), max(1, int(round(sz * 16))), float(v), -1,
                       cv2.LINE_AA, 4)
        for _ in range(int(rng.integers(0, 4))):  # irregular blotches
            c = subs[rng.integers(0, n_sub)] + rng.normal(0, 0.2 * rad, 2)
            ax = (rng.uniform(1, 5) * u, rng.uniform(1, 5) * u)
            cv2.ellipse(a, (int(c[0] * 16), int(c[1] * 16)), (int(ax[0] * 16), int(ax[1] * 16)),
                        rng.uniform(0, 180), 0, 360, float(rng.uniform(120, 230)), -1, cv2.LINE_AA, 4)
        af = a.astype(F32) * F32(1 / 255)
        soft = cv2.GaussianBlur(af, (0, 0), max(0.6, 1.5 * u))
        af = np.maximum(af * F32(0.85), soft * F32(0.7))[..., None]  # fuzzy rims
        col = palette[rng.integers(0, len(palette))] * F32(rng.uniform(0.8, 1.2))
        roi = img[y0:y1, x0:x1]
        roi[:] = np.clip(roi * (1 - af) + col * af + 0.5, 0, 255).astype(np.uint8)


def screen_pixels(img: np.ndarray, rng: np.random.Generator, u: float) -> np.ndarray:
    """Show the page on an LCD: RGB subpixel stripes and dark gaps at the screen pixel pitch (page space)."""
    h, w = img.shape[:2]
    pitch = rng.uniform(2.2, 4.0) * max(u, 0.5)
    xs = np.arange(w, dtype=F32) / pitch
    ys = np.arange(h, dtype=F32) / pitch
    fx = xs - np.floor(xs)
    fy = ys - np.floor(ys)
    depth = rng.uniform(0.2, 0.45)
    # subpixel order R, G, B from left to right; BGR channel index 2, 1, 0
    col = np.empty((w, 3), F32)
    for k, chn in enumerate((2, 1, 0)):
        inside = (fx >= k / 3) & (fx < (k + 1) / 3)
        col[:, chn] = np.where(inside, 1.0, 1 - depth)
    row = np.where(fy < 0.85, 1.0, 1 - 0.6 * depth).astype(F32)
    # keep the mean brightness; screens: white is slightly blue
    col *= np.array([1.0, 0.98, rng.uniform(0.9, 0.97)], F32) * F32(128.0 / (1 - depth * 2 / 3))
    pattern = cv2.convertScaleAbs(row[:, None, None] * col[None, :, :])
    return cv2.multiply(img, pattern, scale=1.0 / 128)


def table_background(size: tuple[int, int], rng: np.random.Generator, u: float, kind: str | None = None) -> np.ndarray:
    """A surface under the page: wood, a desk, cloth or a dark room/screen bezel (uint8 BGR, full size)."""
    h, w = size
    kind = kind or str(rng.choice(["wood", "desk", "dark", "cloth"], p=[0.35, 0.35, 0.15, 0.15]))
    step = 8
    ch, cw = coarse_shape(size, step)
    if kind == "wood":
        base = np.array([rng.uniform(40, 90), rng.uniform(80, 130), rng.uniform(120, 180)], F32)
        grain = _smooth_noise((ch, max(2, cw // 6)), 2, rng)
        grain = cv2.resize(grain, (cw, ch), interpolation=cv2.INTER_LINEAR)
        if rng.random() < 0.5:
            grain = cv2.resize(_smooth_noise((max(2, ch // 6), cw), 2, rng), (cw, ch))
        tex = base * (1 + 0.15 * grain[..., None])
    elif kind == "desk":
        g = rng.uniform(90, 220)
        base = np.array([g, g, g], F32) * (1 + rng.normal(0, 0.05, 3)).astype(F32)
        tex = base * (1 + 0.04 * _smooth_noise((ch, cw), 20, rng)[..., None])
    elif kind == "cloth":  # muted fabric / bed sheet / clipboard
        g = rng.uniform(50, 200)
        base = (g * (1 + rng.normal(0, 0.12, 3))).astype(F32)
        tex = base * (1 + 0.06 * _smooth_noise((ch, cw), 25, rng)[..., None])
    else:
        base = np.array([rng.uniform(10, 40)] * 3, F32)
        tex = base * (1 + 0.2 * _smooth_noise((ch, cw), 30, rng)[..., None])
    # light falls off across the table
    rel = coarse_nodes(size, step).astype(F32) / np.array([w, h], F32) - 0.5
    dx, dy = _unit(rng)
    tex = tex * (1 + F32(0.3) * (rel[..., 0] * dx + rel[..., 1] * dy))[..., None]
    return upsample_u8(cv2.convertScaleAbs(np.clip(tex, 0, 255)), size, step)


def corner_tears(size: tuple[int, int], rng: np.random.Generator, u: float, n: int) -> list[np.ndarray]:
    """Polygons (page px) of paper torn off: corners and nicks along the edges."""
    h, w = size
    polys = []
    for _ in range(n):
        if rng.random() < 0.5:  # a torn corner
            cx = 0 if rng.random() < 0.5 else w - 1
            cy = 0 if rng.random() < 0.5 else h - 1
            a, b = rng.uniform(0.02, 0.07) * w, rng.uniform(0.02, 0.07) * h
            k = 8
            t = np.linspace(0, 1, k)
            # jagged line from (a, 0) to (0, b) relative to the corner
            line = np.stack([a * (1 - t), b * t], 1) + rng.normal(0, 3 * u, (k, 2))
            line[0, 1] = line[-1, 0] = -3  # start and end just outside the paper
            sx, sy = (1 if cx == 0 else -1), (1 if cy == 0 else -1)
            pts = np.vstack([[-3, -3], line]) * [sx, sy] + [cx, cy]
        else:  # a nick on an edge
            side = rng.integers(4)
            L = rng.uniform(0.03, 0.1) * (w if side < 2 else h)
            dpt = rng.uniform(0.01, 0.03) * min(h, w)
            s0 = rng.uniform(0.1, 0.9) * (w if side < 2 else h)
            t = np.linspace(0, 1, 7)
            along = s0 + L * (t - 0.5)
            across = dpt * np.sin(np.pi * t) + rng.normal(0, 2 * u, 7)
            across[[0, -1]] = -2
            if side == 0:
                pts = np.stack([along, across], 1)
            elif side == 1:
                pts = np.stack([along, h - 1 - across], 1)
            elif side == 2:
                pts = np.stack([across, along], 1)
            else:
                pts = np.stack([w - 1 - across, along], 1)
        polys.append(np.asarray(pts, dtype=np.float64))
    return polys


def paste_holes(img: np.ndarray, bg: np.ndarray, polys: list[np.ndarray]) -> None:
    """Show ``bg`` through polygons (output px), anti-aliased, in place; touches only their bounding boxes."""
    h, w = img.shape[:2]
    for poly in polys:
        if not np.isfinite(poly).all():
            continue
        x0, y0 = np.maximum(np.floor(poly.min(0)).astype(int) - 2, 0)
        x1, y1 = np.minimum(np.ceil(poly.max(0)).astype(int) + 3, [w, h])
        if x1 <= x0 or y1 <= y0:
            continue
        m = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.fillPoly(m, [np.round((poly - [x0, y0]) * 16).astype(np.int32)], 255, cv2.LINE_AA, 4)
        a = m.astype(F32)[..., None] * F32(1 / 255)
        roi = img[y0:y1, x0:x1]
        roi[:] = (roi * (1 - a) + bg[y0:y1, x0:x1] * a + 0.5).astype(np.uint8)


def crumple_texture(size: tuple[int, int], rng: np.random.Generator, strength: float) -> np.ndarray:
    """A grey multiplier (float32, (h, w), 1 = unchanged) that shades a flat page like crumpled, re-flattened paper.

    What ECG-Image-Kit's ``--wrinkles`` lays over a page, drawn procedurally: facets of a random Voronoi
    tiling (stretched one way, as paper crumples), each lit by its own tilt (sharp steps in shade along
    the fold lines between them, smooth inside), soft mottling, and a few long straight creases (a dark
    groove beside a lit edge). Purely photometric: the drawn trace does not move, so the ground truth is
    untouched. ``strength`` is the darkest shading (0.6 = a fold's shadow keeps 40 % of the light).
    """
    h, w = size
    sh, sw = max(8, h // 4), max(8, w // 4)  # the facets are drawn at a quarter of the resolution
    stretch = float(rng.uniform(1.0, 2.5))
    along_x = bool(rng.random() < 0.5)
    ch, cw = (sh, int(sw * stretch)) if along_x else (int(sh * stretch), sw)  # canvas squeezed back to (sh, sw)
    n = int(rng.integers(20, 90))
    marks = np.full((ch, cw), 255, np.uint8)
    marks[rng.integers(0, ch, n), rng.integers(0, cw, n)] = 0
    _, labels = cv2.distanceTransformWithLabels(marks, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
    m = int(labels.max()) + 1
    level = rng.uniform(-1.0, 1.0, m).astype(F32)
    tilt = rng.normal(0.0, 1.0, (m, 2)).astype(F32)
    yy, xx = np.mgrid[0:ch, 0:cw].astype(F32) / F32(np.sqrt(ch * cw / n))  # in cell sizes
    count = np.maximum(np.bincount(labels.ravel(), minlength=m), 1)
    cx = (np.bincount(labels.ravel(), xx.ravel(), m) / count).astype(F32)  # each facet's centre
    cy = (np.bincount(labels.ravel(), yy.ravel(), m) / count).astype(F32)
    shade = level[labels] + tilt[labels, 0] * (xx - cx[labels]) + tilt[labels, 1] * (yy - cy[labels])
    shade = cv2.resize(shade, (sw, sh), interpolation=cv2.INTER_AREA)
    shade = cv2.GaussianBlur(shade, (0, 0), rng.uniform(0.5, 1.5))
    shade += F32(0.2) * _smooth_noise((sh, sw), rng.uniform(15, 50), rng)
    shade = cv2.resize(shade, (w, h), interpolation=cv2.INTER_LINEAR)
    xs, ys = np.arange(w, dtype=F32)[None, :], np.arange(h, dtype=F32)[:, None]
    for _ in range(int(rng.integers(0, 5))):  # creases: straight across the page
        ang = rng.uniform(0, np.pi)
        d = (xs - F32(rng.uniform(0, w))) * F32(np.sin(ang)) - (ys - F32(rng.uniform(0, h))) * F32(np.cos(ang))
        s = F32(rng.uniform(1.5, 5.0) * w / 2200.0)
        shade += F32(rng.uniform(1.0, 2.5)) * (np.exp(-((d + s) / s) ** 2) - F32(0.6) * np.exp(-((d - s) / s) ** 2))
    dark = np.clip(0.35 + 0.35 * shade, 0.0, 1.0)
    return (1.0 - F32(strength) * dark).astype(F32)


# =============================================================================
# ECG-Image-Kit's own augmentation (its ``--augment`` / padding step), per page
# =============================================================================
#: Key of the :class:`EikAugment` parameters in ``GroundTruth.extra`` (written by the renderer,
#: consumed and replaced by ``"eik_augmented"`` once :func:`eik_augment` has run).
EIK_AUGMENT_KEY = "eik_augment"


@dataclass(frozen=True)
class EikAugment:
    """What ECG-Image-Kit's generator does to a drawn page before it saves it (``--augment``, padding).

    The renderer draws the parameters per page (``RenderStyle.augment``) and stores them in the
    ground truth; :func:`apply_variant` applies them first, before the print / scan / photo of
    the variant, so every variant can start from an "augmented ECG-Image-Kit file". Geometry is
    one affine map (pad -> rotate -> crop) that moves the ground truth exactly.

    Attributes:
        noise_sigma: std of additive Gaussian noise in grey levels of 255, the same in all three
            channels (ECG-Image-Kit's noise is grey: channel correlation 0.95 in its aug pages).
        temperature_k: colour temperature (kelvin) whose white point multiplies the channels
            (ECG-Image-Kit draws 2000-4000 K, orange paper, or 10000-20000 K, bluish); None = none.
        rotate_deg: rotation about the image centre, degrees (OpenCV sign: counter-clockwise).
        crop: fraction of the width and of the height cut off (split between the two sides at
            random), the rest scaled back to the image size (imgaug ``Crop(keep_size=True)``).
        pad: white border per side as a fraction of each dimension; the page shrinks to make room
            (ECG-Image-Kit's ``pad_inches``, with the image size kept).
        corner_fill: BGR colour of the corners a rotation uncovers (ECG-Image-Kit leaves them black).
        wrinkles: darkest shading of its ``--wrinkles`` texture (:func:`crumple_texture`), 0 = none.
    """

    noise_sigma: float = 0.0
    temperature_k: float | None = None
    rotate_deg: float = 0.0
    crop: float = 0.0
    pad: float = 0.0
    corner_fill: tuple[int, int, int] = (0, 0, 0)
    wrinkles: float = 0.0

    def to_array(self) -> np.ndarray:
        """Flat float64 form, for ``GroundTruth.extra`` (which is saved as plain arrays)."""
        return np.array([self.noise_sigma, self.temperature_k or 0.0, self.rotate_deg, self.crop, self.pad,
                         *self.corner_fill, self.wrinkles], dtype=np.float64)

    @classmethod
    def from_array(cls, a: np.ndarray) -> "EikAugment":
        a = np.asarray(a, dtype=np.float64).ravel()
        return cls(float(a[0]), float(a[1]) or None, float(a[2]), float(a[3]), float(a[4]),
                   tuple(int(v) for v in a[5:8]), float(a[8]) if a.size > 8 else 0.0)  # 8 long: saved before wrinkles

    @classmethod
    def from_gt(cls, gt: GroundTruth | None) -> "EikAugment | None":
        """The augmentation a page still has to undergo, or None."""
        if gt is None or EIK_AUGMENT_KEY not in gt.extra:
            return None
        return cls.from_array(gt.extra[EIK_AUGMENT_KEY])


def temperature_gains(kelvin: float) -> np.ndarray:
    """BGR channel gains (0..1) of a black body's white point at ``kelvin``.

    The usual piecewise fit of the Planckian locus in sRGB (red saturates below 6600 K, blue above).
    Checked against ECG-Image-Kit's aug pages: 3746 K turns white paper into BGR (153, 201, 255),
    this gives (154, 199, 255); 18318 K gives (255, 200, 174) against (253, 195, 184).
    """
    t = float(np.clip(kelvin, 1000.0, 40000.0)) / 100.0
    if t <= 66:
        r, g = 255.0, 99.4708 * np.log(t) - 161.1196
        b = 0.0 if t <= 19 else 138.5177 * np.log(t - 10) - 305.0448
    else:
        r = 329.6987 * (t - 60) ** -0.1332047
        g = 288.1222 * (t - 60) ** -0.0755148
        b = 255.0
    return np.clip(np.array([b, g, r]) / 255.0, 0.0, 1.0)


def eik_affine(size: tuple[int, int], aug: EikAugment, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(forward 3x3 page px -> output px, forward 3x3 padded canvas -> output px) of ``aug``'s geometry."""
    h, w = size
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    s = 1.0 / (1.0 + 2.0 * max(aug.pad, 0.0))
    pad = np.array([[s, 0, cx * (1 - s)], [0, s, cy * (1 - s)], [0, 0, 1.0]])
    rot = np.vstack([cv2.getRotationMatrix2D((cx, cy), float(aug.rotate_deg), 1.0), [0, 0, 1.0]])
    c = float(np.clip(aug.crop, 0.0, 0.2))
    z = 1.0 / (1.0 - c)
    x0, y0 = rng.uniform(0.0, 1.0, 2) * c * np.array([w, h])  # how much of the cut falls on the left / top
    crop = np.array([[z, 0, -x0 * z], [0, z, -y0 * z], [0, 0, 1.0]])
    return crop @ rot @ pad, crop @ rot


def eik_augment(image: np.ndarray, gt: GroundTruth | None, aug: EikAugment, rng: np.random.Generator,
                photometric: bool = True) -> tuple[np.ndarray, GroundTruth | None]:
    """Apply ``aug`` (geometry: one affine resampling; then the wrinkle texture, grey noise, colour temperature).

    ``photometric`` False keeps the geometry and skips wrinkles, noise and temperature (the random draws of
    the geometry are the same either way).

    The order follows the measured pages: the noise is sharp (added after the rotation), and the
    noise is clipped at white before the temperature tints it (the paper's 90th percentile is
    exactly the white point's colour).
    """
    size = image.shape[:2]
    h, w = size
    fwd, canvas = eik_affine(size, aug, rng)
    warp = Warp(size, size, np.linalg.inv(fwd), None, _grid_step(w / 2200.0))
    corner = tuple(float(v) for v in aug.corner_fill)
    if aug.pad > 0 or aug.rotate_deg == 0:
        img = warp.apply(image, fill=(255, 255, 255))  # the padding is white paper
        if aug.rotate_deg != 0 and corner != (255.0, 255.0, 255.0):
            # corners outside the rotated canvas: blend by the (anti-aliased) canvas coverage
            inside = cv2.warpAffine(np.full(size, 255, np.uint8), canvas[:2], (w, h), flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            a = inside.astype(F32)[..., None] * F32(1 / 255)
            img = (img * a + np.asarray(corner, F32) * (1 - a) + 0.5).astype(np.uint8)
    else:
        img = warp.apply(image, fill=corner)
    if photometric and aug.wrinkles > 0:
        # drawn only for a wrinkled page: any other page gets the same noise as before wrinkles existed
        tex = crumple_texture(size, np.random.default_rng([int(rng.integers(0, 2 ** 31)), 9]), aug.wrinkles)
        img = np.clip(img.astype(F32) * tex[..., None] + 0.5, 0, 255).astype(np.uint8)
    if photometric and aug.noise_sigma > 0:
        img = add_noise(img, sensor_noise(size, rng, aug.noise_sigma, colour=False))
    if photometric and aug.temperature_k:
        lut = np.clip(np.rint(np.arange(256)[:, None] * temperature_gains(aug.temperature_k)[None, :]), 0, 255)
        img = cv2.LUT(img, lut.astype(np.uint8).reshape(256, 1, 3))
    if gt is None:
        return img, None
    extra = {k: v for k, v in gt.extra.items() if k != EIK_AUGMENT_KEY}
    extra["eik_augmented"] = aug.to_array()
    return img, warp.move(gt, extra=extra)


# =============================================================================
# variants
# =============================================================================
@dataclass
class _Ctx:
    image: np.ndarray
    gt: GroundTruth | None
    rg: np.random.Generator  # geometry
    rp: np.random.Generator  # photometry
    u: float
    photometric: bool


def _scan(ctx: _Ctx, bw: bool, mould: bool) -> tuple[np.ndarray, GroundTruth | None]:
    size = ctx.image.shape[:2]
    rg, rp, u = ctx.rg, ctx.rp, ctx.u
    w0 = rotation_warp(size, rg, max_deg=2.0 if rg.random() < 0.8 else 4.0)
    w1 = skew_warp(size, rg, 0.5)
    hinv = w0.hinv @ w1.hinv  # skew first, then rotation
    warp = Warp(size, size, hinv, None, _grid_step(u))
    bed = tuple(float(v) for v in rg.uniform(225, 255) * np.ones(3))
    img = warp.apply(ctx.image, fill=bed)
    gt = warp.move(ctx.gt)
    if not ctx.photometric:
        return img, gt
    img = blur(img, rp.uniform(0.2, 0.5) * u * 2)
    L = Light(size, _grid_step(u))
    paper_age(L, rp, 0.12 if mould else 0.05)
    paper_texture(L, rp, rp.uniform(0.002, 0.008))
    colour_cast(L, rp, 0.02)
    light_gradient(L, rp, rp.uniform(0.0, 0.08))
    if rp.random() < 0.5:  # broad streaks along the scan direction
        ch, cw = L.G.shape[:2]
        prof = 1 + F32(0.015) * _smooth_noise((1, cw), rp.uniform(2, 8), rp)
        L.gain(np.repeat(prof, ch, axis=0))
    centers = radii = None
    if mould:
        n = int(rp.integers(2, 7))
        h, w = size
        centers = np.stack([rp.uniform(0.03, 0.97, n) * w, rp.uniform(0.03, 0.97, n) * h], 1)
        radii = rp.uniform(20, 130, n) * u
        mould_halo(L, rp, centers, radii)
    img = L.apply(img, sensor_noise(size, rp, rp.uniform(1.0, 4.0), colour=not bw))
    if mould:
        mould_spots(img, rp, centers, radii, u)
    if rp.random() < 0.3:
        scanner_streaks(img, rp, int(rp.integers(1, 3)), u)
    if bw:
        img = to_bw(img, rp)
    if rp.random() < 0.7:
        img = jpeg(img, int(rp.integers(65, 96)))
    return img, gt


def _photo(ctx: _Ctx, kind: str) -> tuple[np.ndarray, GroundTruth | None]:
    """Phone photos: 0005 print, 0006 screen, 0009 stained, 0010 damaged."""
    size = ctx.image.shape[:2]
    rg, rp, u = ctx.rg, ctx.rp, ctx.u
    step = _grid_step(u, fine=kind == "damaged")
    if kind == "screen":
        hinv, out = perspective_homography(size, rg, fill=(0.85, 0.98), max_rot_deg=4, jitter=0.05, crop_p=0.2)
        fields = [curl_field(size, rg, 1.0 * u)]  # a slight lens distortion
    else:
        hinv, out = perspective_homography(size, rg)
        fields = [curl_field(size, rg, rg.uniform(2, 10) * u)]
        if kind == "stained":
            fields.append(wrinkle_field(size, rg, rg.uniform(1.0, 3.0) * u, rg.uniform(120, 300) * u, 0.06))
        if kind == "damaged":
            fields.append(crease_field(size, rg, int(rg.integers(2, 6)), u))
            fields.append(wrinkle_field(size, rg, rg.uniform(1.5, 3.5) * u, rg.uniform(100, 250) * u,
                                        rg.uniform(0.06, 0.2), ridged=True))
        elif rg.random() < 0.3:
            fields.append(crease_field(size, rg, int(rg.integers(1, 3)), u))
    warp, shade = build_warp(size, out, hinv, fields, step)
    src = ctx.image
    if kind == "screen" and ctx.photometric:
        src = screen_pixels(src, rp, u)
    tears = corner_tears(size, rg, u, int(rg.integers(1, 5))) if kind == "damaged" else []
    bg = table_background(out, rp, u, kind="dark" if kind == "screen" else None)
    img = warp.apply(src, fill=bg)
    if tears:
        # densify the tear outlines, then move them exactly like the ground truth
        dense = [np.concatenate([np.linspace(a, b, 6, endpoint=False) for a, b in zip(t, np.roll(t, -1, 0))])
                 for t in tears]
        paste_holes(img, bg, [warp.forward(t) for t in dense])
    gt = warp.move(ctx.gt)
    if not ctx.photometric:
        return img, gt
    if rp.random() < 0.5:  # the camera resolved less than the page has pixels
        img = resolution_loss(img, rp.uniform(0.45, 0.85))
    L = Light(out, step)
    if shade is not None:
        L.gain(np.clip(1 + shade, 0.4, 1.6))
    if kind == "screen":
        moire_bands(L, rp, rp.uniform(0.02, 0.08))
        if rp.random() < 0.8:
            glare(L, rp, rp.uniform(0.05, 0.35))
        colour_cast(L, rp, 0.04)
    else:
        paper_age(L, rp, 0.15 if kind in ("stained", "damaged") else 0.04)
        paper_texture(L, rp, rp.uniform(0.005, 0.02))
        colour_cast(L, rp, 0.05)
        if rp.random() < 0.6:
            shadow(L, rp, rp.uniform(0.15, 0.5))
        if kind == "stained":
            stains(L, rp, int(rp.integers(2, 7)))
        if rp.random() < 0.2:
            glare(L, rp, rp.uniform(0.03, 0.12))
    light_gradient(L, rp, rp.uniform(0.05, 0.3))
    vignette(L, rp, rp.uniform(0.0, 0.25))
    # exposure: phone photos of paper are rarely white; blacks are lifted a little
    L.gain(F32(rp.uniform(0.7, 1.0)))
    L.add(np.full(L.G.shape, rp.uniform(0, 18), F32))
    noise = sensor_noise(out, rp, rp.uniform(2.0, 6.0), grain=True)
    img = L.apply(img, noise)
    if rp.random() < 0.25:
        img = motion_blur(img, rp, rp.uniform(2, 4) * u)
    img = blur(img, rp.uniform(0.25, 0.7) * u * 2)
    img = jpeg(img, int(rp.integers(55, 93)))
    return img, gt


def _clean(ctx: _Ctx) -> tuple[np.ndarray, GroundTruth | None]:
    return ctx.image, ctx.gt


_RECIPES: dict[str, Callable[[_Ctx], tuple[np.ndarray, GroundTruth | None]]] = {
    "0001": _clean,
    "0003": lambda c: _scan(c, bw=False, mould=False),
    "0004": lambda c: _scan(c, bw=True, mould=False),
    "0005": lambda c: _photo(c, "print"),
    "0006": lambda c: _photo(c, "screen"),
    "0009": lambda c: _photo(c, "stained"),
    "0010": lambda c: _photo(c, "damaged"),
    "0011": lambda c: _scan(c, bw=False, mould=True),
    "0012": lambda c: _scan(c, bw=True, mould=True),
}


def apply_orientation(image: np.ndarray, gt: GroundTruth | None, c: int) -> tuple[np.ndarray, GroundTruth | None]:
    """Turn/flip an upright page into orientation class ``c`` and move its ground truth with it."""
    size = image.shape[:2]
    out = orient.orient_image(image, c)
    if gt is None:
        return out, None
    new_size = orient.oriented_size(size, c)
    return out, gt.transformed(lambda p: orient.orient_points(p, c, size), new_size, orientation=int(c))


def apply_variant(image_bgr: np.ndarray, gt: GroundTruth | None, variant: str, rng: np.random.Generator | int | None,
                  orientation: int | None = None, photometric: bool = True) -> tuple[np.ndarray, GroundTruth | None]:
    """Make a clean rendered page look like competition variant ``variant``.

    Args:
        image_bgr: upright clean page, uint8 (h, w, 3) BGR.
        gt: its ground truth (moved with every geometric step), or None.
        variant: one of :data:`VARIANTS`.
        rng: numpy Generator or seed; the same seed gives the same result.
        orientation: class 0..7 applied last (None or 0 keeps the page upright).
        photometric: False skips every non-geometric effect (the geometry is the same either way).

    Returns:
        (image uint8 BGR, ground truth with ``variant`` and ``orientation`` set).
    """
    if variant not in _RECIPES:
        raise EcgTraceError(f"unknown variant {variant!r}; use one of {', '.join(VARIANTS)}")
    img = np.asarray(image_bgr)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise EcgTraceError(f"expected a uint8 BGR image (h, w, 3), got {img.dtype} {img.shape}; "
                            "load it with cv2.imread")
    if orientation is not None and not 0 <= int(orientation) < orient.N_ORIENTATIONS:
        raise EcgTraceError(f"orientation must be 0..7, got {orientation}")
    if gt is not None and tuple(gt.image_size) != img.shape[:2]:
        raise EcgTraceError(f"ground truth is for a {gt.image_size} image but the image is {img.shape[:2]}; "
                            "pass the GroundTruth rendered with this image")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    seeds = rng.integers(0, 2 ** 63 - 1, 2)
    # The page as ECG-Image-Kit would have saved it, before it is printed / scanned / photographed. Not
    # for 0001: the competition's clean renders are un-augmented, and the stages rely on 0001 being the
    # canonical page (stage 2 trains on it unrectified; stage 0's tests undo only its rotation).
    aug = EikAugment.from_gt(gt) if variant != "0001" else None
    if aug is not None:
        # its own stream, so pages without the augmentation are distorted exactly as before
        img, gt = eik_augment(np.ascontiguousarray(img), gt, aug, np.random.default_rng([int(seeds[0]), 7]),
                              photometric)
    ctx = _Ctx(np.ascontiguousarray(img), gt, np.random.default_rng(seeds[0]), np.random.default_rng(seeds[1]),
               img.shape[1] / 2200.0, photometric)
    out, gt2 = _RECIPES[variant](ctx)
    if gt2 is not None:
        gt2 = replace(gt2, variant=variant)
    if orientation:
        out, gt2 = apply_orientation(out, gt2, int(orientation))
    return np.ascontiguousarray(out), gt2
