"""Lattice fitting: known warps of the 5 mm lattice are recovered; outliers rejected; gaps filled."""

from __future__ import annotations

import numpy as np
import pytest

from ecgtrace import geometry
from ecgtrace.paper import CANONICAL, Page
from ecgtrace.stages import lattice as L

SMALL = Page(dpi=50)


def _warp_fn(page: Page, curl: float = 1.0):
    """A homography plus a smooth, page-sized displacement (paper curl), scaled to ``page``."""
    s = page.dpi / 200.0
    h = np.array([[1.02, 0.03, 15 * s], [-0.02, 0.99, -10 * s], [1e-5 / s, -2e-5 / s, 1.0]])

    def warp(p: np.ndarray) -> np.ndarray:
        q = geometry.apply_homography(h, p)
        dx = 8 * s * curl * np.sin(p[:, 1] / page.height_px * 3)
        dy = 6 * s * curl * np.cos(p[:, 0] / page.width_px * 4)
        return q + np.stack([dx, dy], axis=1)

    return warp


@pytest.mark.parametrize("page", [SMALL, CANONICAL], ids=["dpi50", "canonical"])
def test_identity_lattice_gives_identity_map(page: Page) -> None:
    pts, idx = page.grid_points()
    fit = L.fit_lattice(pts, idx, page)
    m = L.dense_map(fit.nodes, page)
    assert m.shape == (page.height_px, page.width_px, 2)
    assert np.abs(m - geometry.identity_map(*page.size)).max() < 0.01
    assert fit.residual_px < 1e-6
    assert fit.n_inliers == len(pts)


def test_homography_recovered_exactly() -> None:
    page = SMALL
    s = page.dpi / 200
    h = np.array([[0.97, -0.04, 20 * s], [0.03, 1.01, 12 * s], [2e-5 / s, 1e-5 / s, 1.0]])
    pts, idx = page.grid_points()
    fit = L.fit_lattice(geometry.apply_homography(h, pts), idx, page)
    truth = geometry.apply_homography(h, L.canonical_nodes(page).reshape(-1, 2)).reshape(fit.nodes.shape)
    assert np.abs(fit.nodes - truth).max() < 1e-3
    m = L.dense_map(fit.nodes, page)
    rng = np.random.default_rng(1)
    r = rng.uniform([0, 0], [page.width_px - 1, page.height_px - 1], (500, 2))
    # The spline of a homography is not exactly the homography between nodes, but very close.
    assert np.abs(geometry.sample_map(m, r) - geometry.apply_homography(h, r)).max() < 0.05


def test_smooth_warp_with_noise_gaps_and_wrong_indices() -> None:
    page = CANONICAL
    warp = _warp_fn(page)
    rng = np.random.default_rng(0)
    pts, idx = page.grid_points()
    q = warp(pts) + rng.normal(0, 0.3, pts.shape)  # detector noise
    keep = rng.random(len(q)) > 0.3  # 30 % of the nodes missing
    # a whole missing block too, to exercise gap filling
    block = (idx[:, 0] >= 10) & (idx[:, 0] < 16) & (idx[:, 1] >= 20) & (idx[:, 1] < 28)
    keep &= ~block
    q, ii = q[keep], idx[keep].copy()
    wrong = rng.random(len(q)) < 0.05  # 5 % with an index off by one line
    ii[wrong, 1] += 1
    fit = L.fit_lattice(q, ii, page)
    assert not fit.inliers[wrong].any(), "a point with a wrong index survived"
    assert fit.inliers[~wrong].mean() > 0.97
    truth = warp(L.canonical_nodes(page).reshape(-1, 2)).reshape(fit.nodes.shape)
    err = np.linalg.norm(fit.nodes - truth, axis=-1)
    assert np.median(err) < 0.35 and err.max() < 1.5
    # the filled block is interpolated, not left empty
    assert err[10:16, 20:28].max() < 1.0
    assert not fit.observed[10:16, 20:28].any()
    m = L.dense_map(fit.nodes, page)
    r = rng.uniform([0, 0], [page.width_px - 1, page.height_px - 1], (2000, 2))
    e = np.linalg.norm(geometry.sample_map(m, r) - warp(r), axis=1)
    assert np.median(e) < 0.4 and np.percentile(e, 99) < 1.2


def test_errors_shared_by_neighbouring_nodes_are_smoothed_away_not_copied() -> None:
    """Grid lines snapped to whole pixels: every line sits up to half a pixel off, so all nodes on it share the
    error. Held out one by one, the cross-validation chose interpolation (0.01) and the lattice copied the
    snapping into the page; held out in blocks, it smooths them away, and still follows real curl."""
    page = CANONICAL
    rng = np.random.default_rng(1)
    pts, idx = page.grid_points()
    snap = np.stack([rng.uniform(-0.5, 0.5, page.n_vlines)[idx[:, 1]],  # per vertical line: its x
                     rng.uniform(-0.5, 0.5, page.n_hlines)[idx[:, 0]]], axis=1)  # per horizontal line: its y
    fit = L.fit_lattice(pts + snap, idx, page)
    assert fit.smoothing >= 1.0, fit.smoothing
    err = np.linalg.norm(fit.nodes - L.canonical_nodes(page), axis=-1)
    assert np.sqrt(np.mean(err ** 2)) < 0.5 * np.sqrt(np.mean(np.sum(snap ** 2, axis=1))), err.mean()
    warp = _warp_fn(page, curl=2.0)  # the same snapping on a curled page: the curl is still followed
    fit = L.fit_lattice(warp(pts) + snap, idx, page)
    truth = warp(L.canonical_nodes(page).reshape(-1, 2)).reshape(fit.nodes.shape)
    assert np.median(np.linalg.norm(fit.nodes - truth, axis=-1)) < 0.4


def test_invert_points_round_trip() -> None:
    page = SMALL
    warp = _warp_fn(page, curl=2.0)
    pts, idx = page.grid_points()
    m = L.dense_map(L.fit_lattice(warp(pts), idx, page, smoothing=0.0).nodes, page)
    rng = np.random.default_rng(2)
    r = rng.uniform([5, 5], [page.width_px - 5, page.height_px - 5], (300, 2))
    back = geometry.invert_points(m, geometry.sample_map(m, r))
    assert np.abs(back - r).max() < 0.05


def test_too_few_points_raise() -> None:
    pts, idx = SMALL.grid_points()
    with pytest.raises(ValueError):
        L.fit_lattice(pts[:3], idx[:3], SMALL)


def test_remap_identity_keeps_image() -> None:
    rng = np.random.default_rng(3)
    img = rng.integers(0, 255, (SMALL.height_px, SMALL.width_px, 3), dtype=np.uint8)
    out = geometry.remap(img, geometry.identity_map(*SMALL.size))
    assert np.array_equal(out, img)


@pytest.mark.parametrize("page", [SMALL, CANONICAL], ids=["dpi50", "canonical"])
def test_dense_map_is_the_splines_own_evaluation(page: Page) -> None:
    """The dense map, made as products with the spline's B-spline bases, gives what evaluating the bicubic
    spline at every pixel gives (margins outside the outermost lines included), to float32 rounding."""
    from scipy.interpolate import RectBivariateSpline

    rng = np.random.default_rng(4)
    nodes = _warp_fn(page)(L.canonical_nodes(page).reshape(-1, 2)).reshape(page.n_hlines, page.n_vlines, 2)
    nodes = nodes + rng.normal(0, 0.4, nodes.shape)  # not a smooth field: every coefficient counts
    padded = L._pad_linear(nodes, L._PAD)
    vi = np.arange(-L._PAD, page.n_hlines + L._PAD, dtype=np.float64)
    uj = np.arange(-L._PAD, page.n_vlines + L._PAD, dtype=np.float64)
    v, u = L._pixel_lattice_coords(page)
    assert v.min() < 0  # pixels above the first line: the padded rings are in the test
    m = L.dense_map(nodes, page)
    for c in range(2):
        ref = RectBivariateSpline(vi, uj, padded[..., c], kx=3, ky=3, s=0)(v, u, grid=True)
        assert np.abs(m[..., c] - ref).max() <= 1e-6 * np.abs(ref).max()
