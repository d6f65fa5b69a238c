"""Lattice fitting: detected 5 mm grid points with (row, col) indices -> dense rectification map.

Shared by the classical and the learned stage-1 paths. The steps:

1. canonical targets: node ``(i, j)`` (horizontal line ``i`` from the top,
   vertical line ``j`` from the left) belongs at ``(page.vline_x(j), page.hline_y(i))``;
2. a RANSAC homography canonical -> input, then residuals against it; a point is
   an outlier when its residual disagrees with the median residual of its lattice
   neighbours (a wrong index moves a point by a whole pitch, curl moves it smoothly);
3. the inlier residuals are interpolated (a discrete thin-plate spline on the index lattice)
   to every node, which fills gaps and smooths localisation noise;
4. the node lattice is padded by linear extrapolation and upsampled with a cubic
   spline to one input position per canonical pixel (``map_xy``), used by ``cv2.remap``.

A lattice that is exactly canonical gives exactly the identity map (cubic splines
reproduce linear functions), so rectifying a clean page changes nothing.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from scipy.interpolate import BSpline, RectBivariateSpline
from scipy.linalg import solveh_banded
from threadpoolctl import ThreadpoolController

from ecgtrace.geometry import apply_homography
from ecgtrace.paper import CANONICAL, Page

_PAD = 2  # extrapolated node rings around the lattice, so the spline covers the whole page


@dataclass
class LatticeFit:
    """Result of :func:`fit_lattice`.

    Attributes:
        nodes: (n_hlines, n_vlines, 2) input-image (x, y) of every 5 mm node.
        observed: (n_hlines, n_vlines) bool, True where an inlier detection supports the node.
        inliers: (N,) bool over the input points.
        homography: 3x3 canonical px -> input px (the rigid part of the fit).
        residual_px: RMS distance of the inlier detections from the fitted lattice (input px).
        heldout_px: RMS error predicting held-out inlier detections, each held out alone (cross-validation,
            clipped at 3 px): the "grid error" of the fit, on which the confidence thresholds were set.
        smoothing: the smoothing weight used.
        n_points: detections given; ``n_inliers`` kept.
        page: the page geometry the indices refer to.
    """

    nodes: np.ndarray
    observed: np.ndarray
    inliers: np.ndarray
    homography: np.ndarray
    residual_px: float
    n_points: int
    n_inliers: int
    page: Page
    heldout_px: float = float("nan")
    smoothing: float = float("nan")

    @property
    def coverage(self) -> float:
        """Fraction of lattice nodes backed by an inlier detection."""
        return float(self.observed.mean()) if self.observed.size else 0.0


def pitch_px(page: Page = CANONICAL) -> float:
    """Spacing of the 5 mm lattice in pixels of ``page``."""
    return float(page.vline_x(1) - page.vline_x(0))


def canonical_nodes(page: Page = CANONICAL) -> np.ndarray:
    """(n_hlines, n_vlines, 2) canonical (x, y) of every 5 mm node of ``page``."""
    ii, jj = np.meshgrid(np.arange(page.n_hlines), np.arange(page.n_vlines), indexing="ij")
    return np.stack([page.vline_x(jj), page.hline_y(ii)], axis=-1)


def canonical_points(index: np.ndarray, page: Page = CANONICAL) -> np.ndarray:
    """Canonical (x, y) of nodes given as (N, 2) int (hline i, vline j)."""
    idx = np.asarray(index).reshape(-1, 2)
    return np.stack([page.vline_x(idx[:, 1]), page.hline_y(idx[:, 0])], axis=1)


def _neighbour_median(index: np.ndarray, values: np.ndarray, radius: int, shape: tuple[int, int]) -> np.ndarray:
    """Median of ``values`` over each point's lattice neighbours (excluding itself) within ``radius`` index steps.

    Returns NaN where a point has fewer than 3 neighbours.
    """
    nh, nv = shape
    grid = np.full((nh + 2 * radius, nv + 2 * radius, values.shape[1]), np.nan)
    grid[index[:, 0] + radius, index[:, 1] + radius] = values
    stack = []
    for di in range(-radius, radius + 1):
        for dj in range(-radius, radius + 1):
            if di == 0 and dj == 0:
                continue
            stack.append(grid[index[:, 0] + radius + di, index[:, 1] + radius + dj])
    stack = np.stack(stack, axis=0)  # (K, N, 2); a missing neighbour is NaN in both columns
    count = np.isfinite(stack[..., 0]).sum(axis=0)
    # np.nanmedian's numbers (the middle one of the finite values, or the mean of the middle two), from one sort
    # that puts the NaNs last: numpy takes the masked-array path for so short an axis, ten times slower
    srt = np.sort(stack, axis=0)
    lo = np.maximum(count - 1, 0) // 2
    low = np.take_along_axis(srt, lo[None, :, None], axis=0)[0]
    high = np.take_along_axis(srt, (count // 2)[None, :, None], axis=0)[0]
    med = (low + high) / 2.0
    med[count < 3] = np.nan
    return med, count


def fit_lattice(
    points: np.ndarray,
    index: np.ndarray,
    page: Page = CANONICAL,
    *,
    ransac_frac: float = 0.45,
    outlier_frac: float = 0.25,
    smoothing: float | str = "auto",
    edge_frac: float = 0.12,
    inner_frac: float = 0.08,
    heldout: bool = True,
) -> LatticeFit:
    """Fit the 5 mm lattice to detections.

    Args:
        points: (N, 2) detected node positions (x, y) in the input image.
        index: (N, 2) int (hline i from the top, vline j from the left) of each detection.
        page: geometry the indices refer to (also fixes the canonical output size).
        ransac_frac: RANSAC reprojection threshold as a fraction of the lattice pitch.
        outlier_frac: a point whose homography residual differs from its neighbours' by more than
            this fraction of the pitch is rejected (a wrong index is off by a whole pitch).
        heldout: estimate :attr:`LatticeFit.heldout_px` by cross-validation (4 extra solves when
            ``smoothing`` is fixed; callers that only need the nodes can skip it).
        inner_frac: the same test, stricter, for a point with (almost) all its neighbours present.
        edge_frac: an edge node further than this fraction of the pitch from the linear extrapolation
            of its two inward neighbours is rejected.
        smoothing: weight of the bending energy in :func:`smooth_lattice_field` (0 ~ interpolate), or
            ``"auto"``: the value of :data:`SMOOTHING_CHOICES` that best predicts held-out points
            (wrinkled paper wants little smoothing, noisy detections on a flat page want more).

    Raises:
        ValueError: fewer than 4 usable detections (no homography possible).
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    idx = np.asarray(index).reshape(-1, 2).astype(np.int64)
    if len(pts) != len(idx):
        raise ValueError(f"points ({len(pts)}) and index ({len(idx)}) differ in length")
    nh, nv = page.n_hlines, page.n_vlines
    ok = (idx[:, 0] >= 0) & (idx[:, 0] < nh) & (idx[:, 1] >= 0) & (idx[:, 1] < nv) & np.isfinite(pts).all(axis=1)
    n_total = len(pts)
    if ok.sum() < 4:
        raise ValueError(f"only {int(ok.sum())} usable grid points; need at least 4 to fit the lattice")
    pitch = pitch_px(page)
    src = canonical_points(idx, page)

    # 1) global homography, robust to wrong indices.
    h, mask = cv2.findHomography(src[ok], pts[ok], cv2.RANSAC, ransac_frac * pitch, maxIters=3000, confidence=0.999)
    if h is None:
        raise ValueError("grid points are degenerate (collinear?); cannot fit the lattice")
    inl = np.zeros(n_total, dtype=bool)
    inl[np.flatnonzero(ok)] = mask.ravel().astype(bool)
    # Refit on the inliers without RANSAC for a least-squares homography.
    if inl.sum() >= 4:
        h2, _ = cv2.findHomography(src[inl], pts[inl], 0)
        if h2 is not None:
            h = h2

    # 2) local consistency of the residual field: curl is smooth, index errors are not.
    resid = pts - apply_homography(h, src)
    rnorm = np.linalg.norm(resid, axis=1)
    cand = ok & (rnorm < 1.5 * pitch)  # beyond this it is a different node
    # Several detections claiming one node: keep the one nearest the homography's prediction.
    flat = idx[:, 0] * nv + idx[:, 1]
    order = np.lexsort((rnorm, np.where(cand, flat, -1)))
    dup = np.zeros(n_total, dtype=bool)
    fo = flat[order]
    dup[order[1:]] = fo[1:] == fo[:-1]
    cand &= ~dup
    keep = cand.copy()
    for radius in (2, 1):
        ci = np.flatnonzero(keep)
        if len(ci) < 4:
            break
        med, count = _neighbour_median(idx[ci], resid[ci], radius, (nh, nv))
        dev = np.linalg.norm(resid[ci] - med, axis=1)
        isolated = ~np.isfinite(dev)
        # Surrounded on all sides, the neighbours' median predicts a smooth field to second order: be strict.
        tol = np.where(count >= (4 * radius + 2) * radius, inner_frac, outlier_frac) * pitch
        bad = np.where(isolated, ~inl[ci], dev > tol)
        keep[ci[bad]] = False
    if keep.sum() < 4:
        keep = inl.copy()
    # The outermost lines have neighbours on one side only, so a distractor running along them (a header
    # text line, the paper edge) can shift a whole edge line consistently: check each edge node against the
    # linear extrapolation of the two nodes inward of it.
    keep &= ~_edge_outliers(idx, resid, keep, (nh, nv), edge_frac * pitch)

    # 3) smooth residual field over the index lattice; fills gaps, then reject what the fit cannot explain.
    all_idx = np.stack(np.meshgrid(np.arange(nh), np.arange(nv), indexing="ij"), axis=-1).reshape(-1, 2)
    base = apply_homography(h, canonical_points(all_idx, page))
    reject_smoothing = 0.3 if smoothing == "auto" else float(smoothing)
    for _ in range(2):
        ki = fitted = np.flatnonzero(keep)  # ``fitted``: the nodes of the last field fitted (at reject_smoothing)
        field = smooth_lattice_field(idx[ki], resid[ki], (nh, nv), reject_smoothing)
        err = np.linalg.norm(resid[ki] - field[idx[ki, 0], idx[ki, 1]], axis=1)
        sigma = 1.4826 * np.median(err) + 1e-6
        bad = err > max(6.0 * sigma, 0.08 * pitch)
        if not bad.any() or keep.sum() - bad.sum() < 4:
            break
        keep[ki[bad]] = False
    ki = np.flatnonzero(keep)
    if smoothing == "auto":
        smoothing, _ = choose_smoothing(idx[ki], resid[ki], (nh, nv))
    # the grid error is each node's own, held out alone (as the confidence thresholds were set on it)
    cv_err = choose_smoothing(idx[ki], resid[ki], (nh, nv), choices=(float(smoothing),), block=1)[1] \
        if heldout else float("nan")
    if not (np.array_equal(fitted, ki) and reject_smoothing == float(smoothing)):  # else that very field is this one
        field = smooth_lattice_field(idx[ki], resid[ki], (nh, nv), float(smoothing))
    nodes = base.reshape(nh, nv, 2) + field
    err = np.linalg.norm(resid[ki] - field[idx[ki, 0], idx[ki, 1]], axis=1)
    observed = np.zeros((nh, nv), dtype=bool)
    observed[idx[ki, 0], idx[ki, 1]] = True
    return LatticeFit(
        nodes=nodes,
        observed=observed,
        inliers=keep,
        homography=h,
        residual_px=float(np.sqrt(np.mean(err**2))) if len(err) else float("nan"),
        heldout_px=cv_err,
        smoothing=float(smoothing),
        n_points=n_total,
        n_inliers=int(keep.sum()),
        page=page,
    )


def _edge_outliers(index: np.ndarray, resid: np.ndarray, keep: np.ndarray, shape: tuple[int, int],
                   tol: float) -> np.ndarray:
    """Boolean mask of kept points on the outermost lattice lines that disagree with their inward extrapolation."""
    nh, nv = shape
    grid = np.full((nh, nv, 2), np.nan)
    k = np.flatnonzero(keep)
    grid[index[k, 0], index[k, 1]] = resid[k]
    bad = np.zeros(len(index), dtype=bool)
    for n in k:
        i, j = index[n]
        for edge, step in ((i == 0, (1, 0)), (i == nh - 1, (-1, 0)), (j == 0, (0, 1)), (j == nv - 1, (0, -1))):
            if not edge:
                continue
            i1, j1, i2, j2 = i + step[0], j + step[1], i + 2 * step[0], j + 2 * step[1]
            if not (0 <= i2 < nh and 0 <= j2 < nv):
                continue
            r1, r2 = grid[i1, j1], grid[i2, j2]
            if np.isfinite(r1).all() and np.isfinite(r2).all() and np.linalg.norm(resid[n] - (2 * r1 - r2)) > tol:
                bad[n] = True
    return bad


#: Candidate smoothing weights tried by ``fit_lattice(smoothing="auto")``.
SMOOTHING_CHOICES: tuple[float, ...] = (100.0, 10.0, 1.0, 0.3, 0.1, 0.03, 0.01)
#: :func:`choose_smoothing` holds out square blocks of this many lattice nodes a side together. Neighbouring
#: nodes share their measurement errors (a renderer snaps grid lines to whole pixels, a low-resolution
#: page aliases them, a trace runs along a line), so a node held out alone is predicted by neighbours with
#: the same error: the cross-validation chose the least smoothing (0.01) on every page looked at, and the
#: lattice copied those errors into the page. Held out in blocks, the lattice must predict a region from around it, as
#: curl and perspective allow and local errors do not. Transfer bench: black-and-white pages 22.8 -> 24.9 dB,
#: header pages 19.6 -> 20.5; own bench (curled and photographed pages) 16.4 -> 16.8.
CV_BLOCK_NODES = 4


def choose_smoothing(index: np.ndarray, values: np.ndarray, shape: tuple[int, int],
                     choices: tuple[float, ...] = SMOOTHING_CHOICES, folds: int = 4,
                     seed: int = 0, block: int = CV_BLOCK_NODES) -> tuple[float, float]:
    """The smoothing weight whose fit best predicts held-out detections (``folds``-fold cross-validation,
    folds made of ``block``-square blocks of the lattice; 1: single nodes).

    Returns (weight, RMS held-out error in px). The held-out error is an honest estimate of how far a
    node may be from where the lattice puts it (the in-sample residual is not, at low smoothing).
    """
    n = len(index)
    if n < 40:
        choices = (0.3,)
        folds = max(2, min(folds, n // 2))
    rng = np.random.default_rng(seed)
    _, cell = np.unique(index // block, axis=0, return_inverse=True)
    cell = cell.ravel()
    fold = rng.permutation(int(cell.max()) + 1)[cell] % folds
    best, best_err = choices[0], np.inf
    for lam in choices:
        err = 0.0
        for f in range(folds):
            tr, te = fold != f, fold == f
            field = smooth_lattice_field(index[tr], values[tr], shape, lam)
            d = np.linalg.norm(values[te] - field[index[te, 0], index[te, 1]], axis=1)
            err += float(np.sum(np.minimum(d, 3.0) ** 2))  # clipped: a stray point must not decide
            if err >= best_err:  # the folds only add: this weight can no longer win (its remaining solves spared)
                break
        if err < best_err:
            best, best_err = lam, err
    return float(best), float(np.sqrt(best_err / max(n, 1)))


def _second_differences(nh: int, nv: int) -> sp.csr_matrix:
    """Stacked discrete thin-plate operators (d2/di2, sqrt2 d2/didj, d2/dj2) on an nh x nv lattice."""
    def d2(n: int) -> sp.csr_matrix:
        if n < 3:
            return sp.csr_matrix((0, n))
        return sp.diags([np.ones(n - 2), -2 * np.ones(n - 2), np.ones(n - 2)], [0, 1, 2], shape=(n - 2, n))

    def d1(n: int) -> sp.csr_matrix:
        return sp.diags([-np.ones(n - 1), np.ones(n - 1)], [0, 1], shape=(n - 1, n))

    ih, iv = sp.identity(nh), sp.identity(nv)
    return sp.vstack([sp.kron(d2(nh), iv), np.sqrt(2.0) * sp.kron(d1(nh), d1(nv)), sp.kron(ih, d2(nv))]).tocsr()


@functools.lru_cache(maxsize=8)
def _bending_band(nh: int, nv: int) -> tuple[np.ndarray, np.ndarray]:
    """The bending energy ``D^T D`` of an nh x nv lattice as a symmetric band (LAPACK upper form), and the
    node order it is written in: the shorter side runs fastest, so the band is 2 min(nh, nv) + 1 wide."""
    d = _second_differences(nh, nv)
    ii, jj = np.meshgrid(np.arange(nh), np.arange(nv), indexing="ij")
    flat = ii * nv + jj
    order = (flat if nv <= nh else flat.T).ravel()  # band position -> row-major node index
    dtd = (d.T @ d).tocsr()[order][:, order].todia()
    u = 2 * min(nh, nv)
    band = np.zeros((u + 1, nh * nv))
    for off, data in zip(dtd.offsets, dtd.data):
        if 0 <= off <= u:
            band[u - off, off:] = data[off:]
    return band, order


@functools.lru_cache(maxsize=1)
def _blas_controller() -> ThreadpoolController:
    return ThreadpoolController()  # (inspects the loaded BLAS libraries once, about a millisecond)


@contextlib.contextmanager
def _one_blas_thread() -> Iterator[None]:
    """A context in which BLAS/LAPACK run on one thread. The banded Cholesky of a lattice (kd ~ 90) is too small
    to share: OpenBLAS's two threads took 3.2 ms a solve, one takes 2.3, with the same numbers to the bit
    (228 solves of eight ECG-Image-Kit pages); a lattice fit makes up to 35. The limit is process-wide, so
    pipelines in threads (the server's jobs) take turns: each sets it and puts it back unbroken."""
    with _BLAS_LIMIT, _blas_controller().limit(limits=1, user_api="blas"):
        yield


_BLAS_LIMIT = threading.Lock()


def smooth_lattice_field(index: np.ndarray, values: np.ndarray, shape: tuple[int, int],
                         smoothing: float) -> np.ndarray:
    """Smooth (nh, nv, C) field through scattered lattice values: a discrete thin-plate spline.

    Minimises sum over the given nodes of |f - value|^2 + ``smoothing`` * (bending energy of f);
    gaps are filled smoothly and linear fields are reproduced exactly. ``smoothing`` must be > 0
    (a tiny value interpolates). The normal equations are a symmetric positive band: a banded
    Cholesky solve (a general sparse LU when too few nodes leave them singular).
    """
    nh, nv = shape
    lam = max(float(smoothing), 1e-4)
    n = nh * nv
    flat = index[:, 0] * nv + index[:, 1]
    w = np.bincount(flat, minlength=n).astype(np.float64)
    vals = np.asarray(values, dtype=np.float64).reshape(len(index), -1)
    rhs = np.stack([np.bincount(flat, weights=vals[:, c], minlength=n) for c in range(vals.shape[1])], axis=1)
    band, order = _bending_band(nh, nv)
    ab = lam * band
    ab[-1] += w[order]
    out = np.empty((n, vals.shape[1]))
    try:
        with _one_blas_thread():
            out[order] = solveh_banded(ab, rhs[order], check_finite=False)
    except np.linalg.LinAlgError:
        d = _second_differences(nh, nv)
        solve = spla.factorized((sp.diags(w) + lam * (d.T @ d)).tocsc())
        for c in range(vals.shape[1]):
            out[:, c] = solve(rhs[:, c])
    return out.reshape(nh, nv, -1)


def dense_map(nodes: np.ndarray, page: Page = CANONICAL) -> np.ndarray:
    """Dense backward map (H, W, 2) float32: for each canonical pixel of ``page``, its (x, y) in the input.

    ``nodes`` is the (n_hlines, n_vlines, 2) node lattice (e.g. :attr:`LatticeFit.nodes`).
    Upsampled with an interpolating bicubic spline, padded by linear extrapolation so that the
    page margins outside the outermost lines are covered.
    """
    nh, nv = page.n_hlines, page.n_vlines
    if nodes.shape != (nh, nv, 2):
        raise ValueError(f"nodes must have shape ({nh}, {nv}, 2) for this page, got {nodes.shape}")
    padded = _pad_linear(np.asarray(nodes, dtype=np.float64), _PAD)
    vi, uj, knots, bv, bu = _spline_bases(page)
    out = np.empty((*page.size, 2), dtype=np.float32)
    for c in range(2):
        spl = RectBivariateSpline(vi, uj, padded[..., c], kx=3, ky=3, s=0)
        tv, tu = spl.get_knots()
        if not (np.array_equal(tv, knots[0]) and np.array_equal(tu, knots[1])):  # never seen; the bases would not fit
            v, u = _pixel_lattice_coords(page)
            out[..., c] = spl(v, u, grid=True)
            continue
        coef = spl.get_coeffs().reshape(len(tv) - 4, len(tu) - 4)
        # the spline's value at every pixel as two products with its B-spline bases: the numbers of the
        # spline's own evaluation (the same float32 map on the pages looked at), in a quarter of its time.
        # The second product a band of rows at a time: no page-sized float64 temporary (the same numbers, 41 -> 23 ms)
        rows = bv @ coef
        for r in range(0, len(rows), _DENSE_ROWS):
            out[r:r + _DENSE_ROWS, :, c] = rows[r:r + _DENSE_ROWS] @ bu.T
    return out


#: Rows of the dense map computed per product in :func:`dense_map` (a band of float64 that stays in cache).
_DENSE_ROWS = 128


def _pixel_lattice_coords(page: Page) -> tuple[np.ndarray, np.ndarray]:
    """Lattice coordinates (v of the rows, u of the columns) of every canonical pixel: x = vline_x(u), y = hline_y(v)."""
    h, w = page.size
    pitch = pitch_px(page)
    return (np.arange(h) - page.hline_y(0)) / pitch, (np.arange(w) - page.vline_x(0)) / pitch


@functools.lru_cache(maxsize=4)
def _spline_bases(page: Page) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray], np.ndarray, np.ndarray]:
    """The padded lattice's node coordinates (rows, columns), the knots of :func:`dense_map`'s spline and its
    dense cubic B-spline bases at every canonical pixel row and column of ``page``. The knots of an
    interpolating spline (``s=0``) depend on the node coordinates alone: one set serves every page of a geometry."""
    nh, nv = page.n_hlines, page.n_vlines
    vi = np.arange(-_PAD, nh + _PAD, dtype=np.float64)
    uj = np.arange(-_PAD, nv + _PAD, dtype=np.float64)
    tv, tu = RectBivariateSpline(vi, uj, np.zeros((len(vi), len(uj))), kx=3, ky=3, s=0).get_knots()
    v, u = _pixel_lattice_coords(page)
    bv = BSpline.design_matrix(v, tv, 3, extrapolate=True).toarray()
    bu = BSpline.design_matrix(u, tu, 3, extrapolate=True).toarray()
    for a in (vi, uj, tv, tu, bv, bu):
        a.flags.writeable = False  # shared by every call
    return vi, uj, (tv, tu), bv, bu


def _pad_linear(a: np.ndarray, n: int) -> np.ndarray:
    """Extend a (h, w, C) lattice by ``n`` rings, continuing the edge rows/cols linearly."""
    for axis in (0, 1):
        first = np.take(a, [0], axis=axis)
        step0 = first - np.take(a, [1], axis=axis)
        last = np.take(a, [-1], axis=axis)
        step1 = last - np.take(a, [-2], axis=axis)
        before = [first + step0 * k for k in range(n, 0, -1)]
        after = [last + step1 * k for k in range(1, n + 1)]
        a = np.concatenate(before + [a] + after, axis=axis)
    return a
