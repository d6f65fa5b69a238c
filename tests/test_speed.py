"""The faster forms of stage 1/2 steps give what the direct ones gave (issue 14, point 1): blurs, path search,
lattice solve, the stage-2 network with its BatchNorms folded; and the step timer."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from ecgtrace.models.batchnorm_fold import folded_for_inference
from ecgtrace.models.unet import UNet
from ecgtrace.stages import lattice as L
from ecgtrace.stages import steps
from ecgtrace.stages.memo import PageMemo
from ecgtrace.stages.trace import ink
from ecgtrace.stages.trace.path import RUN_THRESHOLD, _runs, thin, thin_touching, viterbi


def _page_like(h: int, w: int, c: int = 3, seed: int = 0) -> np.ndarray:
    """Paper with shading, thin dark strokes and a coloured grid: the structure the blurs meet."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = 235 + 15 * np.sin(xx / 150.0)[..., None] * np.ones(c)
    img[:, ::20] = [200, 170, 250][:c]
    img[::20, :] = [200, 170, 250][:c]
    for _ in range(40):
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        cv2.line(img, (int(x0), int(y0)), (int(x0 + rng.integers(-80, 80)), int(y0 + rng.integers(-80, 80))),
                 (20,) * c, 2)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("shape,sigma", [((400, 600), 30.0), ((400, 600, 3), 27.0), ((300, 500), 78.7),
                                         ((120, 90), 40.0), ((400, 600), 8.0)])
def test_blur_wide_is_opencvs_blur(shape, sigma):
    img = _page_like(shape[0], shape[1], shape[2] if len(shape) == 3 else 1).astype(np.float32)
    img = img.reshape(shape)
    got = ink.blur_wide(img, sigma)
    ref = cv2.GaussianBlur(img, (0, 0), sigma)
    assert got.shape == ref.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=2e-3)  # float32 rounding of two ways to sum the same kernel


def test_blur_coarse_is_close():
    img = _page_like(400, 600).astype(np.float32)
    ref = cv2.GaussianBlur(img, (0, 0), 27.0)
    assert np.abs(ink.blur_coarse(img, 27.0) - ref).max() < 1.0  # of 0..255: 1e-3 of the range or better


def test_channel_max_min():
    page = _page_like(50, 70)
    four = np.dstack([page, page[..., :1] // 2])
    for img in (page.astype(np.float32) * np.float32(1.01), page, page[..., :1], four):
        mx, mn = ink.channel_max_min(img)
        assert mx.dtype == img.dtype and mx.shape == img.shape[:2]
        assert np.array_equal(mx, img.max(axis=2)) and np.array_equal(mn, img.min(axis=2))
        before = img.copy()
        mx[0, 0] = 7  # its own arrays: writing one leaves the other and the picture alone
        assert mn[0, 0] == img.min(axis=2)[0, 0] and np.array_equal(img, before)


def _viterbi_reference(unary: np.ndarray, step: np.ndarray) -> np.ndarray:
    """The search as it was written first: back pointers stored for every pixel of every column."""
    hb, n = unary.shape
    ar = np.arange(hb)
    back = np.empty((n, hb), dtype=np.int64)
    d = unary[:, 0].astype(np.float64).copy()
    for x in range(1, n):
        c = np.cumsum(step[:, x], dtype=np.float64)
        a = d - c
        ra = np.minimum.accumulate(a)
        ia = np.maximum.accumulate(np.where(a <= ra, ar, 0))
        b = (d + c)[::-1]
        rb = np.minimum.accumulate(b)
        ib = (hb - 1 - np.maximum.accumulate(np.where(b <= rb, ar, 0)))[::-1]
        fa, fb = ra + c, rb[::-1] - c
        back[x] = np.where(fa <= fb, ia, ib)
        d = unary[:, x] + np.minimum(fa, fb)
    path = np.empty(n, dtype=np.int64)
    path[-1] = int(np.argmin(d))
    for x in range(n - 1, 0, -1):
        path[x - 1] = back[x, path[x]]
    return path


@pytest.mark.parametrize("shape,ksize", [((300, 420, 3), 31), ((257, 300), 31), ((131, 90, 3), 5), ((64, 80), 31)])
def test_median_blur_in_halves_is_opencvs_median(shape, ksize):
    rng = np.random.default_rng(3)
    img = cv2.GaussianBlur((rng.random(shape) * 255).astype(np.uint8), (0, 0), 2)
    img[::7] = 0  # dark rows: medians that differ near the cut if a half saw too few rows of the other
    assert np.array_equal(ink.median_blur(img, ksize), cv2.medianBlur(img, ksize))


@pytest.mark.parametrize("shape,sigma", [((301, 170, 3), 9.0), ((120, 90, 3), 2.5), ((60, 50, 3), 6.7), ((200, 90), 4.0)])
def test_gaussian_blur_in_halves_is_opencvs_blur(shape, sigma):
    """Three-channel blurs go by halves on two cores (kernels longer than the halves' overlap would differ
    near the cut, as would a short picture's borders: (60, 50) runs whole); one channel goes to OpenCV as it is."""
    rng = np.random.default_rng(4)
    img = (rng.random(shape) * 255).astype(np.float32)
    img[::9] = 0.0  # sharp rows: a half that saw too few rows of the other would differ near the cut
    assert np.array_equal(ink.gaussian_blur(img, sigma), cv2.GaussianBlur(img, (0, 0), sigma))


@pytest.mark.parametrize("shape", [(40, 1), (37, 151), (1, 8)])
def test_column_median_in_halves_is_numpys(shape):
    rng = np.random.default_rng(5)
    a = np.round(rng.random(shape).astype(np.float32), 2)  # ties, and even column lengths (a mean of two)
    assert np.array_equal(ink.column_median(a), np.median(a, axis=0))


@pytest.mark.parametrize("shape,f", [((50, 83), 4), ((7, 4), 4), ((30, 61), 3)])
@pytest.mark.parametrize("transposed", [False, True])
def test_pool_columns_is_the_reshaped_maximum(shape, f, transposed):
    m = (np.random.default_rng(8).random(shape) < 0.3).astype(np.uint8) * 255
    m = m.T if transposed else m  # the long-line eraser pools the mask and its transposed view
    h, w = m.shape
    assert np.array_equal(ink.pool_columns(m, f), m[:, :w // f * f].reshape(h, w // f, f).max(axis=2))


def test_viterbi_matches_the_reference_including_ties():
    rng = np.random.default_rng(3)
    for trial in range(60):
        hb, n = int(rng.integers(1, 40)), int(rng.integers(1, 80))
        u = rng.random((hb, n)).astype(np.float32)
        s = (rng.random((hb, n)) * (trial % 3)).astype(np.float32)
        if trial % 4 == 0:  # many equal costs
            u, s = np.round(u, 1), np.round(s, 1)
        assert np.array_equal(viterbi(u, s), _viterbi_reference(u, s)), trial


def test_viterbi_reads_any_layout_and_avoids_unknown_costs():
    rng = np.random.default_rng(4)
    u, s = rng.random((30, 50)), rng.random((30, 50)) * 0.2
    want = _viterbi_reference(u, s)
    # float32, a view of every other column of a wider array, Fortran order: the same path
    wide = np.repeat(u.astype(np.float32), 2, axis=1)
    assert np.array_equal(viterbi(wide[:, ::2], np.asfortranarray(s)), _viterbi_reference(u.astype(np.float32), s))
    assert np.array_equal(viterbi(np.asfortranarray(u), s), want)
    # a NaN cost is a place the path never passes, as +inf
    u[want[10], 10] = np.nan
    path = viterbi(u, s)
    assert path[10] != want[10]
    u[want[10], 10] = np.inf
    assert np.array_equal(path, _viterbi_reference(u, s))


def _runs_reference(prob_band: np.ndarray, path: np.ndarray, thr: float, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """The column-by-column loop :func:`_runs` replaced (its former code)."""
    hb, n = prob_band.shape
    ya = np.empty(n)
    yb = np.empty(n)
    for x in range(n):
        col = prob_band[:, x]
        lo_i = hi_i = int(path[x])
        if x > 0:
            lo_i, hi_i = min(lo_i, int(path[x - 1]) + 1), max(hi_i, int(path[x - 1]) - 1)
        lo_i, hi_i = min(lo_i, int(path[x])), max(hi_i, int(path[x]))
        stop = max(0, lo_i - max_len)
        i = lo_i
        while i > stop and col[i - 1] >= thr:
            i -= 1
        # sub-pixel edge between i-1 (below thr) and i
        a = float(i)
        if i > 0 and col[i - 1] < thr <= col[i]:
            a = i - (col[i] - thr) / (col[i] - col[i - 1])
        stop = min(hb - 1, hi_i + max_len)
        j = hi_i
        while j < stop and col[j + 1] >= thr:
            j += 1
        b = float(j)
        if j < hb - 1 and col[j + 1] < thr <= col[j]:
            b = j + (col[j] - thr) / (col[j] - col[j + 1])
        ya[x], yb[x] = a, b
    return ya, yb


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_runs_are_the_column_loops_to_the_bit(dtype):
    rng = np.random.default_rng(6)
    for trial in range(40):
        hb, n = int(rng.integers(1, 30)), int(rng.integers(1, 60))
        band = rng.random((hb, n)).astype(dtype)
        if trial % 3 == 0:  # values at the threshold, and solid columns that reach the band's edges
            band[rng.random((hb, n)) < 0.2] = RUN_THRESHOLD
            band[:, ::5] = 1.0
        path = rng.integers(0, hb, n)
        for max_len in (0, 3, 100):
            got, want = _runs(band, path, RUN_THRESHOLD, max_len), _runs_reference(band, path, RUN_THRESHOLD, max_len)
            assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1]), (trial, max_len)


def _thin_reference(mask: np.ndarray, max_iter: int = 20) -> np.ndarray:
    """:func:`thin` as it was written before its lookup table (one array expression per rule)."""
    m = np.pad(mask.astype(bool), 1)
    for _ in range(max_iter):
        changed = False
        for step in (0, 1):
            p2, p3, p4 = m[:-2, 1:-1], m[:-2, 2:], m[1:-1, 2:]
            p5, p6, p7 = m[2:, 2:], m[2:, 1:-1], m[2:, :-2]
            p8, p9 = m[1:-1, :-2], m[:-2, :-2]
            nb = [p2, p3, p4, p5, p6, p7, p8, p9]
            b = sum(x.astype(np.uint8) for x in nb)
            a = sum(((~nb[i]) & nb[(i + 1) % 8]).astype(np.uint8) for i in range(8))
            if step == 0:
                c = ~(p2 & p4 & p6) & ~(p4 & p6 & p8)
            else:
                c = ~(p2 & p4 & p8) & ~(p2 & p6 & p8)
            kill = m[1:-1, 1:-1] & (b >= 2) & (b <= 6) & (a == 1) & c
            if kill.any():
                m[1:-1, 1:-1] &= ~kill
                changed = True
        if not changed:
            break
    return m[1:-1, 1:-1]



def test_thin_by_table_is_the_rules_written_out():
    rng = np.random.default_rng(7)
    for trial in range(20):
        shape = (int(rng.integers(1, 60)), int(rng.integers(1, 90)))
        mask = cv2.dilate((rng.random(shape) < 0.05).astype(np.uint8), np.ones((1 + trial % 5,) * 2, np.uint8)) > 0
        for max_iter in (1, 20):
            assert np.array_equal(thin(mask, max_iter), _thin_reference(mask, max_iter)), (trial, max_iter)


def test_thin_touching_is_thin_on_the_parts_it_keeps():
    rng = np.random.default_rng(4)
    mask = cv2.dilate((rng.random((80, 200)) < 0.04).astype(np.uint8), np.ones((4, 4), np.uint8)).astype(bool)
    seeds = np.zeros_like(mask)
    seeds[:, 50:120] = mask[:, 50:120]
    _, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    kept = np.isin(labels, np.unique(labels[seeds])) & mask
    full = thin(mask)
    assert np.array_equal(thin_touching(mask, seeds), full & kept)
    assert not thin_touching(mask, np.zeros_like(mask)).any()


def test_banded_lattice_solve_matches_sparse_lu():
    rng = np.random.default_rng(5)
    for shape in ((12, 17), (17, 12), (4, 5)):
        idx = np.argwhere(rng.random(shape) < 0.5)
        vals = rng.normal(size=(len(idx), 2))
        for lam in (5.0, 0.01):
            got = L.smooth_lattice_field(idx, vals, shape, lam)
            nh, nv = shape
            flat = idx[:, 0] * nv + idx[:, 1]
            d = L._second_differences(nh, nv)
            solve = spla.factorized((sp.diags(np.bincount(flat, minlength=nh * nv).astype(float))
                                     + lam * (d.T @ d)).tocsc())
            ref = np.stack([solve(np.bincount(flat, weights=vals[:, c], minlength=nh * nv)) for c in range(2)], 1)
            np.testing.assert_allclose(got.reshape(-1, 2), ref, atol=1e-9)


def test_lattice_solve_on_one_blas_thread_gives_the_same_field_and_restores_the_threads():
    """The banded solves run on one BLAS thread (faster at this size): the field is the one the default
    threads give, to the bit, and the process's BLAS threads are what they were afterwards, also when two
    threads solve at once (the server's jobs)."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(6)
    shape = (44, 56)  # a canonical page's lattice: a band 89 wide
    idx = np.argwhere(rng.random(shape) < 0.7)
    vals = rng.normal(size=(len(idx), 2))
    solve = L.solveh_banded
    seen = []

    def watched(*args, **kwargs):
        seen.append(max(i["num_threads"] for i in L._blas_controller().select(user_api="blas").info()))
        return solve(*args, **kwargs)

    before = L._blas_controller().select(user_api="blas").info()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(L, "solveh_banded", watched)
        with ThreadPoolExecutor(2) as pool:
            got = list(pool.map(lambda lam: L.smooth_lattice_field(idx, vals, shape, lam), (0.3, 0.3, 3.0, 3.0)))
    assert seen == [1, 1, 1, 1]
    assert L._blas_controller().select(user_api="blas").info() == before
    band, order = L._bending_band(*shape)
    flat, n = idx[:, 0] * shape[1] + idx[:, 1], shape[0] * shape[1]
    rhs = np.stack([np.bincount(flat, weights=vals[:, c], minlength=n) for c in range(2)], 1)
    for lam, field in zip((0.3, 0.3, 3.0, 3.0), got):
        ab = lam * band
        ab[-1] += np.bincount(flat, minlength=n)[order]
        ref = np.empty_like(rhs)
        ref[order] = solve(ab, rhs[order], check_finite=False)  # the default threads
        assert np.array_equal(field.reshape(-1, 2), ref)


def test_ink_map_is_reused_only_for_the_same_pixels():
    page = _page_like(425, 550)
    prob, blind = ink.ink_map(page)
    again, _ = ink.ink_map(page.copy())
    assert np.array_equal(prob, again)
    again[:] = 0  # the caller's copy: the next reader still gets the ink map
    assert np.array_equal(ink.ink_map(page)[0], prob)
    other = page.copy()
    other[200:210, 100:300] = 0
    assert not np.array_equal(ink.ink_map(other)[0], prob)


def test_ink_map_keeps_the_last_two_pages(monkeypatch):
    """Stage 2 with a model reads the network's small page between stage 1's and its own full-size read."""
    pages = [_page_like(425, 550), _page_like(212, 275)]
    pages.append(pages[0].copy())
    pages[2][100:110, 50:150] = 0
    monkeypatch.setattr(ink, "_LAST", PageMemo(2))  # an empty cache: earlier tests read these pages too
    made = []
    real = ink._ink_map
    monkeypatch.setattr(ink, "_ink_map", lambda img: made.append(img.shape) or real(img))
    first = ink.ink_map(pages[0])[0]
    ink.ink_map(pages[1])
    assert np.array_equal(ink.ink_map(pages[0])[0], first) and len(made) == 2  # still kept after another page
    ink.ink_map(pages[2])  # a third page evicts the least recently read (pages[1])
    ink.ink_map(pages[0])
    assert len(made) == 3
    ink.ink_map(pages[1])
    assert len(made) == 4


def test_steps_nest_and_cost_nothing_unrecorded():
    with steps.step("outside"):  # no recording open: nothing kept anywhere
        pass
    with steps.recording() as rec:
        with steps.step("a"):
            with steps.step("b"):
                pass
            with steps.step("b"):
                pass
    assert list(rec.seconds) == ["a/b", "a"] and rec.calls["a/b"] == 2 and rec.calls["a"] == 1
    with steps.recording() as rec:
        with steps.step("busy"):
            t = time.perf_counter()
            while time.perf_counter() - t < 0.05:  # a core busy for 50 ms ...
                pass
        with steps.step("idle"):
            time.sleep(0.05)  # ... and none
    assert rec.cpu["busy"] > 0.5 * rec.seconds["busy"] and rec.cpu["idle"] < 0.2 * rec.seconds["idle"]


def _with_running_stats(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """``model`` in eval mode with BatchNorm statistics and affines away from the identity (as after training)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)
    return model.eval()


def test_folded_batchnorm_gives_the_same_logits():
    net = _with_running_stats(UNet("resnet18", [16, 8, 8, 8, 8], seg_heads={"trace": 1}))
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    folded = folded_for_inference(net, x[:1])
    assert folded is not net
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())  # the original is left as it was
    with torch.no_grad():
        want, got = net(x)["trace"], folded(x)["trace"]
    torch.testing.assert_close(got, want, atol=1e-4 * float(want.abs().max()), rtol=0)


class _NormFirst(torch.nn.Module):
    """A pre-activation block: its ``bn1`` runs before ``conv1``, so folding by name would be wrong."""

    def __init__(self) -> None:
        super().__init__()
        self.bn1 = torch.nn.BatchNorm2d(4)
        self.conv1 = torch.nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1(self.bn1(x))


def test_folding_that_would_change_the_outputs_is_refused():
    net = _with_running_stats(_NormFirst())
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    assert folded_for_inference(net, x) is net


def test_map_sampling_reads_a_crop_and_takes_any_number_of_points():
    """``geometry._bilinear`` samples the part of the map its points read, in rows of points: the same
    numbers as ``cv2.remap`` over the whole map one point per row (which refuses 32767 points or more),
    for points inside, outside, on whole pixels and not finite; and a row of traces or a label maps
    alone as it does with the others."""
    from ecgtrace import geometry

    rng = np.random.default_rng(3)
    m = (rng.random((170, 220, 2)) * 200).astype(np.float32)

    def whole_map(q: np.ndarray) -> np.ndarray:
        p = q.astype(np.float32).reshape(-1, 1, 2)
        return np.stack([cv2.remap(np.ascontiguousarray(m[..., c]), p[..., 0], p[..., 1], cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_REPLICATE).ravel() for c in (0, 1)], axis=1)

    for trial in range(60):
        n = int(rng.integers(1, 400))
        q = rng.random(2) * [260, 210] - 20 + (rng.random((n, 2)) - 0.5) * rng.random() * 120
        if trial % 5 == 0:
            q = np.round(q)
        if trial % 11 == 0:
            q[0] = np.nan
        assert np.array_equal(geometry._bilinear(m, q), whole_map(q), equal_nan=True), trial
    many = rng.random((40000, 2)) * [220, 170]
    got = geometry._bilinear(m, many)
    assert got.shape == (40000, 2)
    assert np.array_equal(got[:30000], whole_map(many[:30000]))
    parts = [many[i:i + 37] for i in range(0, 2000, 37)]
    assert np.array_equal(np.concatenate([geometry.sample_map(m, p) for p in parts]),
                          geometry.sample_map(m, np.concatenate(parts)))


def _ink_near_path_by_point(prob: np.ndarray, x: np.ndarray, y: np.ndarray, radius: float) -> np.ndarray:
    """:func:`ink.ink_near_path` as it was written first: a dilated page, then one slice per point's span."""
    xi, lo, hi = ink.path_spans(prob.shape, x, y, radius)
    wide = cv2.dilate(prob, np.ones((1, 3), np.uint8))
    return np.array([wide[a:b + 1, c].max() for c, a, b in zip(xi, lo, hi)], np.float32)


@pytest.mark.parametrize("seed", range(4))
def test_ink_near_path_is_the_max_over_each_points_span(seed):
    rng = np.random.default_rng(seed)
    prob = rng.random((120, 300)).astype(np.float32 if seed % 2 == 0 else np.float64)
    n = 400
    x = np.linspace(-3, 302, n) + rng.normal(0, 0.3, n)  # past both edges
    y = np.cumsum(rng.normal(0, 1, n)) + 60
    y[::37] += rng.normal(0, 40, len(y[::37]))  # steep strokes, some off the page
    for radius in (1.0, 2.0, 3.5):
        got = ink.ink_near_path(prob, x, y, radius)
        assert got.dtype == np.float32 and np.array_equal(got, _ink_near_path_by_point(prob, x, y, radius))
    assert ink.ink_near_path(prob, x[:0], y[:0], 2.0).shape == (0,)


def test_lattice_neighbour_median_is_nanmedian():
    """The sorted form of the lattice's neighbour median gives np.nanmedian's numbers (gaps, ties, even counts)."""
    import warnings

    rng = np.random.default_rng(11)
    nh, nv = 12, 15
    for trial in range(24):
        idx = np.argwhere(rng.random((nh, nv)) < rng.uniform(0.2, 0.95))
        vals = rng.normal(size=(len(idx), 2)) * (1e-3, 1.0, 50.0)[trial % 3]
        if trial % 4 == 0:
            vals = np.round(vals, 1)  # equal values
        for radius in (1, 2):
            med, count = L._neighbour_median(idx, vals, radius, (nh, nv))
            grid = np.full((nh + 2 * radius, nv + 2 * radius, 2), np.nan)
            grid[idx[:, 0] + radius, idx[:, 1] + radius] = vals
            around = np.stack([grid[idx[:, 0] + radius + di, idx[:, 1] + radius + dj]
                               for di in range(-radius, radius + 1) for dj in range(-radius, radius + 1) if di or dj])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                want = np.nanmedian(around, axis=0)
            want[np.isfinite(around[..., 0]).sum(axis=0) < 3] = np.nan
            assert np.array_equal(med, want, equal_nan=True), (trial, radius)
            assert np.array_equal(count, np.isfinite(around[..., 0]).sum(axis=0))
