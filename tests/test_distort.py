"""Distortions move ground truth exactly as they move pixels.

A small synthetic page (Page(dpi=50), 550 x 425) carries black dots at known
points (grid intersections and fwd_map nodes) and black polylines; after a
distortion each dot is found again from the pixels (darkness-weighted
centroid) and compared with where the ground truth says it went.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from ecgtrace import orient
from ecgtrace.data import distort
from ecgtrace.data.groundtruth import GroundTruth
from ecgtrace.errors import EcgTraceError
from ecgtrace.paper import MARKERS, Page

DPI = 50
STRIDE = 10  # fwd_map stride of the test page (px)


def _fixed(p: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(p) * 16).astype(np.int32)


def make_page(dpi: float = DPI, dots_on: str = "grid") -> tuple[np.ndarray, GroundTruth, np.ndarray]:
    """Synthetic page: faint grid, 4 black sine traces, black dots at known points.

    Returns (image, gt, dot_index) where ``dot_index`` selects the dotted points in
    ``gt.grid_points`` (dots_on="grid") or in ``gt.fwd_map.reshape(-1, 2)`` (dots_on="fwd").
    """
    page = Page(dpi=dpi)
    h, w = page.size
    img = np.full((h, w, 3), 255, np.uint8)
    for x in page.vline_x(np.arange(page.n_vlines)):
        cv2.line(img, (int(round(x * 16)), 0), (int(round(x * 16)), (h - 1) * 16), (200, 200, 250), 1, cv2.LINE_AA, 4)
    for y in page.hline_y(np.arange(page.n_hlines)):
        cv2.line(img, (0, int(round(y * 16))), ((w - 1) * 16, int(round(y * 16))), (200, 200, 250), 1, cv2.LINE_AA, 4)
    traces, times, mvs = {}, {}, {}
    for k, lead in enumerate(["I", "II", "III", "II_rhythm"]):
        t = np.linspace(0, 2.5 if lead != "II_rhythm" else 10, 200)
        mv = 0.8 * np.sin(2 * np.pi * (1.1 + 0.3 * k) * t)
        x, y = page.lead_to_px(lead, t, mv)
        traces[lead] = np.stack([x, y], 1)
        times[lead] = t
        mvs[lead] = mv
    pts_all, gidx = page.grid_points()
    gx, gy = np.meshgrid(np.arange(0, w + STRIDE, STRIDE, dtype=np.float32),
                         np.arange(0, h + STRIDE, STRIDE, dtype=np.float32))
    fwd = np.stack([gx, gy], -1)
    cand = pts_all if dots_on == "grid" else fwd.reshape(-1, 2).astype(np.float64)
    # dots in the page interior (away from torn corners/edges), apart from traces and each other
    # distance to the drawn segments, not only the vertices (steep QRS segments are long)
    allv = np.vstack([np.stack([np.interp(np.linspace(0, len(v) - 1, 20 * len(v)), np.arange(len(v)), v[:, k])
                                for k in range(2)], 1) for v in traces.values()])
    inner = (cand[:, 0] > 0.1 * w) & (cand[:, 0] < 0.9 * w) & (cand[:, 1] > 0.1 * h) & (cand[:, 1] < 0.9 * h)
    far = np.array([np.min(np.hypot(*(allv - p).T)) > 12 for p in cand])
    sel = np.flatnonzero(inner & far)
    keep = []
    for i in sel:
        if all(np.hypot(*(cand[i] - cand[j])) > 18 for j in keep):
            keep.append(i)
    dot_index = np.array(keep)
    for p in cand[dot_index]:
        cv2.circle(img, tuple(int(v) for v in _fixed(p)), 2 * 16, (0, 0, 0), -1, cv2.LINE_AA, 4)
    cv2.polylines(img, [_fixed(v) for v in traces.values()], False, (0, 0, 0), 2, cv2.LINE_AA, 4)
    gt = GroundTruth(image_size=(h, w), traces=traces, trace_times=times, trace_mv=mvs,
                     markers=page.label_centers.copy(), grid_points=pts_all, grid_index=gidx, fwd_map=fwd,
                     map_stride=STRIDE, page_dpi=float(dpi))
    return img, gt, dot_index


def locate_dots(img: np.ndarray, pts: np.ndarray, r: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Darkness-weighted centroid of the dark blob near each expected point; (centroids, found mask)."""
    g = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.float64)
    h, w = g.shape
    out = np.full((len(pts), 2), np.nan)
    found = np.zeros(len(pts), bool)
    for k, (x, y) in enumerate(pts):
        xi, yi = int(round(x)), int(round(y))
        if not (r + 3 <= xi < w - r - 3 and r + 3 <= yi < h - r - 3):
            continue
        big = g[yi - r - 3:yi + r + 4, xi - r - 3:xi + r + 4]
        bg = np.percentile(big, 75)
        win = g[yi - r:yi + r + 1, xi - r:xi + r + 1]
        dark = np.clip(bg - win, 0, None)
        if dark.max() < 40:
            continue
        yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
        # keep only the blob under the centre (a trace or a mould speck may share the window)
        near = np.where(xx ** 2 + yy ** 2 <= 4, dark, -1)
        seed = np.unravel_index(np.argmax(near), near.shape)
        _, lab = cv2.connectedComponents((dark > 0.2 * dark.max()).astype(np.uint8), connectivity=8)
        if lab[seed] == 0:
            continue
        wgt = np.where(lab == lab[seed], dark, 0)
        out[k] = [xi + (wgt * xx).sum() / wgt.sum(), yi + (wgt * yy).sum() / wgt.sum()]
        found[k] = True
    return out, found


def dot_errors(img: np.ndarray, expected: np.ndarray) -> tuple[np.ndarray, float]:
    c, found = locate_dots(img, expected)
    return np.hypot(*(c[found] - expected[found]).T), found.mean()


def on_trace_fraction(img: np.ndarray, gt: GroundTruth) -> float:
    """Fraction of polyline vertices (inside the image) whose pixel is clearly darker than the paper nearby."""
    g = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.float64)
    h, w = g.shape
    ok, n = 0, 0
    for v in gt.traces.values():
        for x, y in v[::3]:
            xi, yi = int(round(x)), int(round(y))
            if not (6 <= xi < w - 6 and 6 <= yi < h - 6):
                continue
            n += 1
            bg = np.percentile(g[yi - 6:yi + 7, xi - 6:xi + 7], 90)
            here = g[yi - 1:yi + 2, xi - 1:xi + 2].min()  # within 1 px of the vertex
            ok += bool(bg - here > 0.5 * (bg - g[yi - 6:yi + 7, xi - 6:xi + 7].min()) and bg - here > 30)
    return ok / max(n, 1)


# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def grid_page():
    return make_page(dots_on="grid")


@pytest.fixture(scope="module")
def fwd_page():
    return make_page(dots_on="fwd")


def test_clean_dots_are_found_where_drawn(grid_page):
    img, gt, idx = grid_page
    err, frac = dot_errors(img, gt.grid_points[idx])
    assert len(idx) > 80 and frac == 1.0
    assert err.max() < 0.15  # locator + anti-aliased drawing error


def test_coarse_upsample_matches_point_sampling():
    rng = np.random.default_rng(0)
    for step in (2, 3, 4):
        size = (7 * step - 1, 9 * step - 2)
        coarse = rng.normal(0, 1, distort.coarse_shape(size, step) + (2,)).astype(np.float32)
        full = distort.upsample(coarse, size, step)
        yy, xx = np.mgrid[0:size[0], 0:size[1]]
        pts = np.stack([xx.ravel(), yy.ravel()], 1).astype(np.float64)
        ref = distort.sample_coarse(coarse, pts, step).reshape(size[0], size[1], 2)
        assert np.abs(full - ref).max() < 1e-5


@pytest.mark.parametrize("name", sorted(distort.GEOMETRIC_OPS))
def test_geometric_op_moves_points_with_pixels(name, grid_page):
    img, gt, idx = grid_page
    for seed in range(3):
        warp = distort.GEOMETRIC_OPS[name](img.shape[:2], np.random.default_rng(seed))
        # forward is the exact inverse of backward, and backward is what the remap uses
        p = gt.grid_points
        q = warp.forward(p)
        assert np.abs(warp.backward(q) - p).max() < distort.POINT_TOL_PX
        full = warp.maps()
        qi = np.round(q[(q[:, 0] > 1) & (q[:, 1] > 1) & (q[:, 0] < warp.out_size[1] - 2) &
                        (q[:, 1] < warp.out_size[0] - 2)]).astype(int)
        via_map = full[qi[:, 1], qi[:, 0]]
        assert np.abs(via_map - warp.backward(qi.astype(float))).max() < 2e-3
        out = warp.apply(img)
        gt2 = warp.move(gt)
        assert out.shape[:2] == tuple(gt2.image_size) == warp.out_size
        err, frac = dot_errors(out, gt2.grid_points[idx])
        assert frac > 0.95, (name, seed, frac)
        # requirement: within 1 px; measured: max ~0.23 px, mostly the locator's own error (0.11 px on a clean page)
        assert err.max() < 0.5 and np.median(err) < 0.15, (name, seed, err.max(), np.median(err))
        assert on_trace_fraction(out, gt2) > 0.98


@pytest.mark.parametrize("variant", distort.VARIANTS)
def test_variant_geometry_is_exact(variant, grid_page):
    """Geometry only (photometric=False): every dot under its moved grid point within 1 px."""
    img, gt, idx = grid_page
    for seed in range(2):
        out, gt2 = distort.apply_variant(img, gt, variant, seed, photometric=False)
        assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
        assert out.shape[:2] == tuple(gt2.image_size)
        assert gt2.variant == variant and gt2.orientation == 0
        err, frac = dot_errors(out, gt2.grid_points[idx])
        assert frac > 0.95, (variant, seed, frac)
        assert err.max() < 0.5 and np.median(err) < 0.15, (variant, seed, err.max())
        assert on_trace_fraction(out, gt2) > 0.97


@pytest.mark.parametrize("variant", distort.VARIANTS)
def test_variant_full_look_keeps_points(variant, grid_page):
    """With every photometric effect on, the dots that are still visible sit under their points."""
    img, gt, idx = grid_page
    for seed in range(2):
        out, gt2 = distort.apply_variant(img, gt, variant, seed)
        _, geo = distort.apply_variant(img, gt, variant, seed, photometric=False)
        assert np.array_equal(gt2.grid_points, geo.grid_points)  # photometry never moves geometry
        err, frac = dot_errors(out, gt2.grid_points[idx])
        assert frac > 0.8, (variant, seed, frac)
        # shading, noise, blur and JPEG on a 50 dpi page move some centroids (the geometry is exact: see above)
        assert np.median(err) < 0.35 and np.mean(err < 1.0) > 0.9, (variant, seed, np.median(err))
        assert on_trace_fraction(out, gt2) > 0.85


@pytest.mark.parametrize("variant", ["0003", "0005", "0010"])
def test_fwd_map_moves_with_pixels(variant, fwd_page):
    """gt.fwd_map[i, j] is where the clean point (j, i) * stride ended up in the image."""
    img, gt, idx = fwd_page
    for seed in range(2):
        out, gt2 = distort.apply_variant(img, gt, variant, seed, photometric=False)
        err, frac = dot_errors(out, gt2.fwd_map.reshape(-1, 2)[idx].astype(np.float64))
        assert frac > 0.95 and err.max() < 1.0, (variant, seed, frac, err.max())


@pytest.mark.parametrize("c", range(8))
def test_orientations_move_points_with_pixels(c, grid_page):
    img, gt, idx = grid_page
    out, gt2 = distort.apply_variant(img, gt, "0005", 7, orientation=c, photometric=False)
    up, gtu = distort.apply_variant(img, gt, "0005", 7, photometric=False)
    assert gt2.orientation == c
    assert out.shape[:2] == orient.oriented_size(up.shape[:2], c) == tuple(gt2.image_size)
    assert np.array_equal(orient.unorient_image(out, c), up)
    err, frac = dot_errors(out, gt2.grid_points[idx])
    assert frac > 0.95 and err.max() < 1.0
    assert np.allclose(orient.unorient_points(gt2.markers, c, up.shape[:2]), gtu.markers)


def test_deterministic_for_a_seed(grid_page):
    img, gt, _ = grid_page
    for v in ("0005", "0006", "0011"):
        a, ga = distort.apply_variant(img, gt, v, np.random.default_rng(5))
        b, gb = distort.apply_variant(img, gt, v, 5)
        c, _ = distort.apply_variant(img, gt, v, 6)
        assert np.array_equal(a, b) and np.array_equal(ga.fwd_map, gb.fwd_map)
        assert not np.array_equal(a, c) if a.shape == c.shape else True


def test_bad_input(grid_page):
    img, gt, _ = grid_page
    with pytest.raises(EcgTraceError, match="0001, 0003"):
        distort.apply_variant(img, gt, "0002", 0)
    with pytest.raises(EcgTraceError, match="orientation"):
        distort.apply_variant(img, gt, "0003", 0, orientation=9)
    with pytest.raises(EcgTraceError, match="uint8 BGR"):
        distort.apply_variant(img[..., 0], gt, "0003", 0)
    assert len(distort.VARIANTS) == 9 and set(distort.VARIANT_INFO) == set(distort.VARIANTS)


def test_without_gt_and_markers_kept(grid_page):
    img, gt, _ = grid_page
    out, none = distort.apply_variant(img, None, "0009", 1)
    assert none is None and out.dtype == np.uint8
    _, g2 = distort.apply_variant(img, gt, "0009", 1)
    assert g2.markers.shape == (len(MARKERS), 2) and np.isfinite(g2.markers).all()


def test_rendered_page_traces_stay_on_ink():
    """With the real renderer (when present): drawn trace vertices still lie on dark pixels after warping."""
    render = pytest.importorskip("ecgtrace.data.render")
    signals = pytest.importorskip("ecgtrace.data.signals")
    sig = signals.synthesize_ecg(0, fs=250)
    img, gt = render.render_page(sig, 250, Page(dpi=100), rng=0)
    for k, v in enumerate(distort.VARIANTS):
        out, gt2 = distort.apply_variant(img, gt, v, 3, orientation=k % 8, photometric=False)
        assert out.shape[:2] == tuple(gt2.image_size) and gt2.orientation == k % 8
        assert on_trace_fraction(out, gt2) > 0.95, v


# --- ECG-Image-Kit's own augmentation (rotation, crop, padding, grey noise, colour temperature) ----------
EIK_AUGS = [
    distort.EikAugment(rotate_deg=5.0, crop=0.02),
    distort.EikAugment(rotate_deg=-4.0, crop=0.01, pad=0.06),
    distort.EikAugment(rotate_deg=3.0, pad=0.05, corner_fill=(255, 255, 255)),
    distort.EikAugment(noise_sigma=50.0, temperature_k=3000.0, rotate_deg=-5.0, crop=0.02),
    distort.EikAugment(noise_sigma=20.0, rotate_deg=2.0, crop=0.01, wrinkles=0.6),
]


def with_augment(gt: GroundTruth, aug: distort.EikAugment) -> GroundTruth:
    from dataclasses import replace

    return replace(gt, extra={**gt.extra, distort.EIK_AUGMENT_KEY: aug.to_array()})


@pytest.mark.parametrize("k", range(len(EIK_AUGS)))
def test_eik_augment_moves_points_with_pixels(k, grid_page, fwd_page):
    """Grid dots and fwd_map dots sit under their moved points after rotation + crop + padding."""
    aug = EIK_AUGS[k]
    assert distort.EikAugment.from_array(aug.to_array()) == aug
    for img, gt, idx, which in (grid_page + ("grid",), fwd_page + ("fwd",)):
        g = with_augment(gt, aug)
        out, gt2 = distort.eik_augment(img, g, aug, np.random.default_rng(k), photometric=False)
        assert distort.EIK_AUGMENT_KEY in g.extra  # the input's ground truth is left as it was
        assert out.shape == img.shape and tuple(gt2.image_size) == img.shape[:2]
        pts = gt2.grid_points[idx] if which == "grid" else gt2.fwd_map.reshape(-1, 2)[idx].astype(np.float64)
        err, frac = dot_errors(out, pts)
        assert frac > 0.95, (k, which, frac)
        assert err.max() < 0.5 and np.median(err) < 0.15, (k, which, err.max(), np.median(err))
        assert on_trace_fraction(out, gt2) > 0.97
        assert distort.EIK_AUGMENT_KEY not in gt2.extra and "eik_augmented" in gt2.extra
    # photometry never moves geometry
    img, gt, _ = grid_page
    a, ga = distort.eik_augment(img, gt, aug, np.random.default_rng(k))
    b, gb = distort.eik_augment(img, gt, aug, np.random.default_rng(k), photometric=False)
    assert np.array_equal(ga.grid_points, gb.grid_points)


def test_eik_augment_corners_noise_and_temperature():
    white = np.full((425, 550, 3), 255, np.uint8)
    out, _ = distort.eik_augment(white, None, distort.EikAugment(rotate_deg=5.0), np.random.default_rng(0))
    assert (out[0, 0] == 0).all() and (out[212, 275] == 255).all()  # black corners, as ECG-Image-Kit leaves them
    out, _ = distort.eik_augment(white, None, distort.EikAugment(rotate_deg=5.0, pad=0.08), np.random.default_rng(0))
    assert (out[0, 0] == 0).all() and (out[25, 275] == 255).all()  # white padding inside the black corners
    grey = np.full((425, 550, 3), 128, np.uint8)
    out, _ = distort.eik_augment(grey, None, distort.EikAugment(noise_sigma=50.0), np.random.default_rng(0))
    d = out.astype(float) - 128
    assert 44 < d.std() < 54 and abs(d.mean()) < 2
    assert np.corrcoef(d[..., 0].ravel(), d[..., 2].ravel())[0, 1] > 0.95  # grey noise, as measured on its pages
    out, _ = distort.eik_augment(white, None, distort.EikAugment(temperature_k=3746.0), np.random.default_rng(0))
    assert np.abs(out[200, 200].astype(int) - (153, 201, 255)).max() <= 4  # measured on ECG-Image-Kit's page


def test_eik_wrinkles_shade_the_page_and_leave_its_pixels_in_place():
    """ECG-Image-Kit's --wrinkles as a crumpled-paper texture: dark folds with sharp edges, nothing moved."""
    tex = distort.crumple_texture((425, 550), np.random.default_rng(1), 0.6)
    assert tex.shape == (425, 550) and tex.dtype == np.float32
    assert tex.min() >= 0.4 - 1e-6 and tex.max() <= 1.0
    assert tex.max() - tex.min() > 0.3  # real folds, not a uniform dimming
    assert np.abs(np.diff(tex, axis=1)).max() > 0.02  # sharp steps along the fold lines
    white = np.full((425, 550, 3), 255, np.uint8)
    out, _ = distort.eik_augment(white, None, distort.EikAugment(wrinkles=0.6), np.random.default_rng(0))
    assert out.min() < 200 and (out[..., 0] == out[..., 2]).all()  # grey shading
    # a page saved before wrinkles existed (8 numbers) reads as unwrinkled
    old = distort.EikAugment(rotate_deg=3.0).to_array()[:8]
    assert distort.EikAugment.from_array(old) == distort.EikAugment(rotate_deg=3.0)


@pytest.mark.parametrize("variant", distort.VARIANTS)
def test_variants_with_eik_augment_stay_exact(variant, grid_page):
    """Every variant but the clean 0001 applies the page's augmentation first; geometry stays exact, once."""
    img, gt, idx = grid_page
    g = with_augment(gt, distort.EikAugment(rotate_deg=-3.0, crop=0.015, pad=0.03, noise_sigma=20.0,
                                            temperature_k=15000.0))
    out, gt2 = distort.apply_variant(img, g, variant, 4, photometric=False)
    err, frac = dot_errors(out, gt2.grid_points[idx])
    assert frac > 0.95, (variant, frac)
    assert err.max() < 0.6 and np.median(err) < 0.2, (variant, err.max(), np.median(err))
    assert on_trace_fraction(out, gt2) > 0.95
    plain, gp = distort.apply_variant(img, gt, variant, 4, photometric=False)
    if variant == "0001":  # the competition's clean render is un-augmented: the page stays canonical
        assert distort.EIK_AUGMENT_KEY in gt2.extra and np.array_equal(gp.grid_points, gt2.grid_points)
        return
    assert distort.EIK_AUGMENT_KEY not in gt2.extra
    assert not np.allclose(gp.grid_points, gt2.grid_points)  # the augmentation did move the page
    again, g3 = distort.apply_variant(out, gt2, "0003", 1, photometric=False)  # consumed: not applied twice
    assert "eik_augmented" in g3.extra and distort.EIK_AUGMENT_KEY not in g3.extra
    full, gf = distort.apply_variant(img, g, variant, 4)
    np.testing.assert_array_equal(gf.grid_points, gt2.grid_points)


def test_synthetic_pages_carry_the_augmentation_into_variants():
    from ecgtrace.data import synthetic
    from ecgtrace.data.render import RenderStyle, render_page
    from ecgtrace.data.signals import synthesize_ecg

    sig = synthesize_ecg(0, fs=250)
    aug = distort.EikAugment(rotate_deg=4.0, noise_sigma=30.0)
    img, gt = render_page(sig, 250, Page(dpi=50), style=RenderStyle(augment=aug), rng=0)
    assert distort.EikAugment.from_gt(gt) == aug
    same, _ = synthetic.apply_variant(img, gt, "0001", np.random.default_rng(0))
    assert same is img  # 0001 stays the clean, canonical render
    out, gt2 = synthetic.apply_variant(img, gt, "0003", np.random.default_rng(0))
    assert gt2.variant == "0003" and "eik_augmented" in gt2.extra
    _, g0 = synthetic.apply_variant(*render_page(sig, 250, Page(dpi=50), style=RenderStyle(), rng=0), "0003",
                                    np.random.default_rng(0))
    assert not np.allclose(g0.grid_points, gt2.grid_points)
