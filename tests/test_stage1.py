"""Stage 1: classical grid detection + rectification, pass-through on grid-less input, network decoding."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from ecgtrace import geometry
from ecgtrace.errors import EcgTraceError
from ecgtrace.paper import CANONICAL, Page
from ecgtrace.stages import grid_classical as G
from ecgtrace.stages import lattice as L
from ecgtrace.stages.stage1 import Stage1, lattice_overlay

SMALL = Page(dpi=50)


def draw_page(page: Page, major=(0, 0, 255), minor=(219, 223, 254), seed: int = 0) -> np.ndarray:
    """A simple ECG-like page: 5 mm (and, at >= 100 dpi, 1 mm) grid from :class:`Page` plus dark traces."""
    h, w = page.size
    img = np.full((h, w, 3), 255, np.uint8)
    s = 16

    def line(p0, p1, col, th):
        cv2.line(img, (int(round(p0[0] * s)), int(round(p0[1] * s))), (int(round(p1[0] * s)), int(round(p1[1] * s))),
                 col, th, cv2.LINE_AA, 4)

    if page.dpi >= 100:
        xs, ys = page.minor_lines()
        for x in xs:
            line((x, 0), (x, h), minor, 1)
        for y in ys:
            line((0, y), (w, y), minor, 1)
    th = max(1, int(round(page.dpi / 100)))
    for j in range(page.n_vlines):
        x = float(page.vline_x(j))
        line((x, 0), (x, h), major, th)
    for i in range(page.n_hlines):
        y = float(page.hline_y(i))
        line((0, y), (w, y), major, th)
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 10, 1500)
    for row in range(4):
        v = 0.15 * np.sin(2 * np.pi * 1.1 * t + rng.uniform(0, 6)) + 1.2 * np.exp(-((t % 0.9) - 0.3) ** 2 / 4e-4)
        pts = np.stack([page.time_to_x(t), page.mv_to_y(row, v)], axis=1)
        cv2.polylines(img, [np.round(pts * s).astype(np.int32)], False, (20, 20, 20), th, cv2.LINE_AA, 4)
    return img


def warp_page(img: np.ndarray, page: Page, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Warp by a known backward map (small homography + smooth curl, as stage 0 leaves a page).

    Returns the warped image and the input position of every 5 mm node (n_hlines * n_vlines, 2).
    """
    h, w = page.size
    u = page.dpi / 200.0
    rng = np.random.default_rng(seed)
    c = np.array([w / 2, h / 2])
    a = np.array([[1 + 0.006 * rng.normal(), 0.006 * rng.normal(), 0], [0.006 * rng.normal(), 1 + 0.006 * rng.normal(), 0],
                  [4e-6 / u * rng.normal(), 4e-6 / u * rng.normal(), 1.0]])
    t0 = np.array([[1, 0, -c[0]], [0, 1, -c[1]], [0, 0, 1.0]])
    t1 = np.array([[1, 0, c[0] + 4 * u * rng.normal()], [0, 1, c[1] + 4 * u * rng.normal()], [0, 0, 1.0]])
    hb = t1 @ a @ t0
    xx, yy = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    q = np.stack([xx.ravel(), yy.ravel()], 1)
    b = geometry.apply_homography(hb, q)
    b[:, 0] += 10 * u * np.sin(q[:, 1] / h * 3 + 1.0)
    b[:, 1] += 12 * u * np.sin(q[:, 0] / w * 4 + 2.0) * np.sin(q[:, 1] / h * 2)
    back = b.reshape(h, w, 2).astype(np.float32)
    out = cv2.remap(img, back[..., 0], back[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                    borderValue=(255, 255, 255))
    pts, _ = page.grid_points()
    return out, geometry.invert_points(back, pts)


def _rect_error(rect, nodes_in: np.ndarray, page: Page) -> np.ndarray:
    """Distance between where each true node lands on the rectified page and its canonical place."""
    pts, _ = page.grid_points()
    inside = (nodes_in[:, 0] >= 0) & (nodes_in[:, 0] < page.width_px) & (nodes_in[:, 1] >= 0) & \
        (nodes_in[:, 1] < page.height_px)
    return np.linalg.norm(geometry.invert_points(rect.map_xy, nodes_in[inside]) - pts[inside], axis=1)


def test_clean_page_is_identity() -> None:
    img = draw_page(SMALL)
    rect = Stage1(page=SMALL)(img)
    assert rect.ok and rect.method == "classical"
    assert rect.map_xy.shape == (SMALL.height_px, SMALL.width_px, 2) and rect.map_xy.dtype == np.float32
    assert np.abs(rect.map_xy - geometry.identity_map(*SMALL.size)).max() < 0.5
    assert rect.grid_error_px < 0.3 and rect.confidence > 0.8
    assert np.abs(rect.image.astype(int) - img.astype(int)).mean() < 3.0


def test_rendered_clean_page_is_identity() -> None:
    render = pytest.importorskip("ecgtrace.data.render")
    from ecgtrace.data.signals import synthesize_ecg

    page = CANONICAL  # the requirement: a clean canonical page is rectified by (numerically) the identity
    rng = np.random.default_rng(0)
    img, gt = render.render_page(synthesize_ecg(rng, fs=500.0), 500.0, page=page,
                                 style=render.RenderStyle(grid="red"), rng=rng)
    rect = Stage1(page=page)(img)
    assert rect.ok
    assert np.abs(rect.map_xy - geometry.identity_map(*page.size)).max() < 0.5
    assert np.median(np.abs(rect.map_xy - geometry.identity_map(*page.size))) < 0.1


def test_an_unsure_lattice_is_not_used(monkeypatch) -> None:
    """Below ``min_confidence`` the fitted lattice is not trusted: the page passes through as stage 0 left it,
    and the page on that lattice is made only when asked for (the same page a sure lattice gives)."""
    import ecgtrace.stages.stage1 as S1

    img, _ = warp_page(draw_page(SMALL, (0, 0, 255), (219, 223, 254)), SMALL, seed=3)
    sure = Stage1(page=SMALL)(img)
    assert sure.ok and sure.confidence >= Stage1(page=SMALL).min_confidence
    registered = []
    monkeypatch.setattr(S1, "content_offset", lambda rect, real=S1.content_offset: registered.append(1) or real(rect))
    unsure = Stage1(page=SMALL, min_confidence=sure.confidence + 0.01)(img)
    assert not unsure.ok and unsure.method == "identity" and "lattice unsure" in unsure.message
    assert np.array_equal(unsure.image, img) and unsure.detection is not None  # the lattice overlay still shows it
    assert registered == []  # no page was rectified (nor its ink read) for a lattice nobody used
    later = unsure.unsure_lattice
    assert registered == [1] and later.ok and np.array_equal(later.image, sure.image)
    assert np.array_equal(later.map_xy, sure.map_xy) and later.message == sure.message


@pytest.mark.parametrize("colours", [((0, 0, 255), (219, 223, 254)), ((110, 110, 110), (215, 215, 215))],
                         ids=["red", "grey"])
def test_warped_page_is_rectified(colours) -> None:
    img, nodes_in = warp_page(draw_page(SMALL, *colours), SMALL, seed=3)
    before = np.linalg.norm(nodes_in - SMALL.grid_points()[0], axis=1)
    rect = Stage1(page=SMALL)(img)
    assert rect.ok, rect.message
    err = _rect_error(rect, nodes_in, SMALL)
    # 50 dpi: 1 px here is 4 canonical px; the warp moves nodes by ~2-5 px
    assert np.median(before) > 1.0
    assert np.median(err) < 0.15 and np.percentile(err, 95) < 0.4
    assert np.median(err) < 0.1 * np.median(before)
    # the rectified image shows the grid where the page says: compare with the unwarped drawing
    clean = draw_page(SMALL, *colours).astype(float)
    inner = (slice(20, -20), slice(20, -20))
    assert np.abs(rect.image.astype(float) - clean)[inner].mean() < 0.5 * np.abs(img.astype(float) - clean)[inner].mean()


def test_wrong_phase_is_reanchored() -> None:
    """A page shifted by more than half a box is still indexed by the phase nearest the canonical one."""
    img = draw_page(SMALL)
    m = np.float32([[1, 0, 3.0], [0, 1, -2.0]])  # 3 px = 0.3 box at 50 dpi
    shifted = cv2.warpAffine(img, m, (SMALL.width_px, SMALL.height_px), borderValue=(255, 255, 255))
    det = G.detect_grid(shifted, SMALL)
    assert det.ok
    d = det.points - L.canonical_points(det.index, SMALL)
    assert np.allclose(np.median(d, axis=0), [3.0, -2.0], atol=0.2)


def test_blank_page_passes_through_flagged() -> None:
    blank = np.full((SMALL.height_px, SMALL.width_px, 3), 245, np.uint8)
    rect = Stage1(page=SMALL)(blank)
    assert not rect.ok and rect.method == "identity" and rect.confidence == 0.0
    assert "no 5 mm grid" in rect.message and "unrectified" in rect.message
    assert np.array_equal(rect.map_xy, geometry.identity_map(*SMALL.size))
    assert np.array_equal(rect.image, blank)


def test_non_ecg_photo_passes_through_flagged() -> None:
    rng = np.random.default_rng(5)
    h, w = SMALL.size
    noise = cv2.GaussianBlur(rng.normal(0, 1, (h, w, 3)).astype(np.float32), (0, 0), 6)
    photo = np.clip(128 + 600 * noise, 0, 255).astype(np.uint8)
    for _ in range(12):  # some objects with edges
        cv2.circle(photo, tuple(int(v) for v in rng.integers(0, [w, h])), int(rng.integers(10, 80)),
                   tuple(int(v) for v in rng.integers(0, 255, 3)), -1)
    rect = Stage1(page=SMALL)(photo)
    assert not rect.ok and rect.method == "identity"
    assert np.array_equal(rect.map_xy, geometry.identity_map(*SMALL.size))


def test_no_grid_render_passes_through() -> None:
    render = pytest.importorskip("ecgtrace.data.render")
    from ecgtrace.data.signals import synthesize_ecg

    rng = np.random.default_rng(1)
    img, gt = render.render_page(synthesize_ecg(rng, fs=500.0), 500.0, page=SMALL,
                                 style=render.RenderStyle(grid="none"), rng=rng)
    rect = Stage1(page=SMALL)(img)
    assert not rect.ok and "unrectified" in rect.message


def test_other_input_size_is_scaled() -> None:
    img = draw_page(SMALL)
    big = cv2.resize(img, (SMALL.width_px * 2, SMALL.height_px * 2), interpolation=cv2.INTER_LINEAR)
    rect = Stage1(page=SMALL)(big)
    assert rect.ok and rect.image.shape[:2] == SMALL.size
    # rectified pixel (x, y) maps to the input pixel of the same page point at twice the scale
    ident = geometry.identity_map(*SMALL.size)
    expect = (ident + 0.5) * 2 - 0.5
    assert np.abs(rect.map_xy - expect)[5:-5, 5:-5].max() < 1.5


def test_bad_input_raises() -> None:
    from ecgtrace.errors import EcgTraceError

    with pytest.raises(EcgTraceError):
        Stage1(page=SMALL)(np.zeros((0, 0), np.uint8))
    with pytest.raises(EcgTraceError):
        Stage1(method="model")  # no checkpoint


def test_overlay_and_command(tmp_path) -> None:
    from ecgtrace.cli import main

    img, _ = warp_page(draw_page(SMALL), SMALL, seed=1)
    rect = Stage1(page=SMALL)(img)
    ov = lattice_overlay(img, rect, SMALL)
    assert ov.shape == img.shape and np.abs(ov.astype(int) - img.astype(int)).sum() > 0
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((170, 220, 3), 250, np.uint8))
    assert main(["stage1", "--image", str(blank), "--output", str(tmp_path / "out"), "--classical"]) == 0
    for name in ("rectified.png", "lattice_overlay.png", "rectify_map.npy"):
        assert (tmp_path / "out" / name).is_file()
    assert np.load(tmp_path / "out" / "rectify_map.npy").shape == (CANONICAL.height_px, CANONICAL.width_px, 2)
    assert main(["stage1", "--image", str(tmp_path / "missing.png")]) == 2


# -- learned path: targets, decoding, task --------------------------------------------------
def test_targets_decode_back_to_nodes() -> None:
    from ecgtrace.models.stage1 import decode_points
    from ecgtrace.train.stage1 import make_targets

    h, w = 352, 448
    scale = np.array([w / CANONICAL.width_px, h / CANONICAL.height_px])
    nodes = (L.canonical_nodes(CANONICAL) + 0.5) * scale - 0.5
    rng = np.random.default_rng(0)
    nodes = nodes + rng.normal(0, 0.2, nodes.shape)
    tg = make_targets(nodes, (h, w))
    assert tg["points"].mean() < 0.2 and tg["hlines"].max() == CANONICAL.n_hlines
    # perfect network outputs: +-10 logits / one-hot maps
    pl = np.where(tg["points"] > 0, 10.0, -10.0)[None]
    hl = np.eye(CANONICAL.n_hlines + 1)[tg["hlines"]].transpose(2, 0, 1)
    vl = np.eye(CANONICAL.n_vlines + 1)[tg["vlines"]].transpose(2, 0, 1)
    pts, idx, _ = decode_points(pl, hl, vl)
    inside = (nodes[..., 0] > 2) & (nodes[..., 0] < w - 3) & (nodes[..., 1] > 2) & (nodes[..., 1] < h - 3)
    assert len(pts) >= 0.95 * inside.sum()
    err = np.linalg.norm(pts - nodes[idx[:, 0], idx[:, 1]], axis=1)
    # disc rasterisation at ~8 px per 5 mm limits it
    assert np.median(err) < 0.35 and np.percentile(err, 99) < 1.0 and err.max() < 1.5


def test_task_loss_and_metrics_run() -> None:
    torch = pytest.importorskip("torch")
    from ecgtrace.config import load_config
    from ecgtrace.train.stage1 import TASK, make_sample, simulate_stage0

    cfg = load_config(1, overrides={"MODEL.INPUT_SIZE": [96, 128], "MODEL.DECODER_CHANNELS": [16, 16, 8, 8],
                                    "MODEL.BACKBONE.NAME": "mobilenetv3_small_100"})
    model = TASK.build_model(cfg)
    img = draw_page(SMALL)

    class _GT:  # the fields make_sample and simulate_stage0 read
        grid_points, grid_index = SMALL.grid_points()
        markers = np.vstack([SMALL.label_center(m) for m in __import__("ecgtrace.paper").paper.MARKERS])
        grid_visible = True

        def transformed(self, fn, size):
            out = _GT()
            out.grid_points = fn(self.grid_points)
            out.markers = fn(self.markers)
            return out

    norm, gt, hom = simulate_stage0(img, _GT(), SMALL)
    assert np.allclose(hom, np.eye(3), atol=1e-6) and np.allclose(gt.grid_points, SMALL.grid_points()[0], atol=1e-6)
    item = make_sample(norm, gt, (96, 128), None, augment=False)
    batch = {k: v[None] for k, v in item.items()}
    out = model(batch["image"])
    assert out["points"].shape == (1, 1, 96, 128) and out["hlines"].shape[1] == CANONICAL.n_hlines + 1
    loss, parts = TASK.loss(out, batch)
    assert torch.isfinite(loss) and set(parts) == {"points_loss", "hlines_loss", "vlines_loss"}
    loss.backward()
    m = TASK.metrics(out, batch)
    assert set(m) >= {"point_err_px", "node_recall", "index_error_rate"}


P100 = Page(dpi=100)


def _rendered(page: Page, seed: int = 0) -> tuple[np.ndarray, object]:
    from ecgtrace.data import render
    from ecgtrace.data.signals import synthesize_ecg

    rng = np.random.default_rng(seed)
    return render.render_page(synthesize_ecg(rng, fs=250.0), 250.0, page=page, style=render.RenderStyle(grid="red"),
                              rng=rng)


def test_whole_box_offset_is_read_from_the_calibration_pulses() -> None:
    """The grid cannot say which box is which; the pulses can. A blank page says nothing."""
    from ecgtrace.stages.register import content_offset

    img, _ = _rendered(P100)
    reg = content_offset(img)
    assert reg.shift == (0, 0) and reg.confident
    pitch = 5 * P100.px_per_mm
    m = np.float32([[1, 0, -2 * pitch], [0, 1, 1 * pitch]])  # content 1 box lower, 2 boxes further left
    moved = cv2.warpAffine(img, m, (P100.width_px, P100.height_px), borderValue=(255, 255, 255))
    reg = content_offset(moved)
    assert reg.shift == (1, -2) and reg.confident, reg
    assert not content_offset(np.full_like(img, 255)).confident


def test_strong_perspective_is_rectified_in_a_second_pass() -> None:
    """A page stage 0 could not correct (corners moved by up to 3 boxes): the lattice's own homography
    pre-warps it, the grid is found again, and the pulses fix the numbering."""
    img, gt = _rendered(P100, seed=1)
    h, w = P100.size
    src = np.float32([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]])
    dst = src + np.float32([[45, 30], [-20, 55], [-50, -25], [25, -40]])
    hom = cv2.getPerspectiveTransform(src, dst)
    warped = cv2.warpPerspective(img, hom, (w, h), borderValue=(255, 255, 255))
    nodes_in = geometry.apply_homography(hom.astype(np.float64), gt.grid_points)
    canon = L.canonical_points(gt.grid_index, P100)
    assert np.median(np.linalg.norm(nodes_in - canon, axis=1)) > 0.5 * 5 * P100.px_per_mm
    rect = Stage1(page=P100)(warped)
    assert rect.ok, rect.message
    inside = (nodes_in[:, 0] > 5) & (nodes_in[:, 0] < w - 5) & (nodes_in[:, 1] > 5) & (nodes_in[:, 1] < h - 5)
    err = np.linalg.norm(geometry.invert_points(rect.map_xy, nodes_in[inside], init=canon[inside]) - canon[inside], axis=1)
    assert np.median(err) < 0.5 and np.percentile(err, 95) < 1.5, (np.median(err), np.percentile(err, 95))


def test_index_heads_start_from_the_canonical_lines() -> None:
    """GridNet's line-index heads carry the canonical position prior: with the learned part zeroed, every
    output pixel is given its nearest canonical line (background beyond the lattice), at any input size;
    the checkpoint arch rebuilds the same network, and plain-UNet checkpoints rebuild without the prior."""
    import torch

    from ecgtrace.models.backbone import create_model
    from ecgtrace.models.stage1 import HLINES_HEAD, VLINES_HEAD, GridNet, stage1_unet

    m = stage1_unet(encoder_name="resnet18", decoder_channels=(16, 8, 8, 8, 8)).eval()
    assert isinstance(m, GridNet) and m.arch["kwargs"]["coord_heads"] is True
    for head in (m.seg_heads[HLINES_HEAD], m.seg_heads[VLINES_HEAD]):
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
    for h, w in ((170, 220), (352, 448)):
        with torch.no_grad():
            out = m(torch.rand(1, 3, h, w))
        cx = (np.arange(w) + 0.5) * CANONICAL.width_px / w - 0.5
        cy = (np.arange(h) + 0.5) * CANONICAL.height_px / h - 0.5
        pitch = CANONICAL.vline_x(1) - CANONICAL.vline_x(0)
        for head, u, lines in ((VLINES_HEAD, cx, CANONICAL.vline_x(np.arange(CANONICAL.n_vlines))),
                               (HLINES_HEAD, cy, CANONICAL.hline_y(np.arange(CANONICAL.n_hlines)))):
            got = out[head][0].argmax(0).numpy()
            got = got[0] if head == VLINES_HEAD else got[:, 0]
            d = np.abs(u[:, None] - lines[None, :])
            want = np.where(d.min(1) < 0.5 * pitch, d.argmin(1) + 1, 0)
            sure = np.abs(np.sort(d, 1)[:, 1] - d.min(1)) > 0.05 * pitch  # not on a band boundary
            sure &= np.abs(d.min(1) - 0.5 * pitch) > 0.05 * pitch
            assert (got[sure] == want[sure]).all(), head
    rebuilt = create_model(m.arch["name"], **m.arch["kwargs"])
    assert isinstance(rebuilt, GridNet)
    plain = dict(m.arch["kwargs"])
    plain.pop("coord_heads")
    old = create_model("unet", **plain)
    assert not isinstance(old, GridNet) and old.coord_heads is False


def test_renumbering_fixes_a_block_numbered_by_position() -> None:
    """A detector that numbers nodes by their nearest canonical place gets a curled corner one line off
    (as a block, which no outlier test sees); growing the lattice from the centre renumbers it."""
    page = CANONICAL
    pitch = L.pitch_px(page)
    true = L.canonical_nodes(page)
    u = (true[..., 0] / page.width_px)[..., None]
    v = (1.0 - true[..., 1] / page.height_px)[..., None]
    shift = 0.9 * pitch * (u * v) ** 2 * np.array([1.0, -0.6])  # curls the top-right corner out by ~1 box
    pts = (true + shift).reshape(-1, 2)
    idx_true = np.argwhere(np.ones(true.shape[:2], dtype=bool))
    near = np.argmin(np.linalg.norm(pts[:, None] - true.reshape(1, -1, 2), axis=-1), axis=1)
    idx_pos = np.stack(np.unravel_index(near, true.shape[:2]), axis=1)
    wrong = (idx_pos != idx_true).any(axis=1)
    assert wrong.sum() > 20  # the position-only numbering is off in the corner
    det = G.GridDetection(points=pts, index=idx_pos, strength=np.ones(len(pts)), feature="model")
    fixed = G.renumber_by_growth(det, page)
    back = {tuple(i): p for i, p in zip(fixed.index, fixed.points)}
    ok = [np.allclose(back[tuple(i)], p) for i, p in zip(idx_true, pts) if tuple(i) in back]
    assert len(ok) >= 0.98 * len(pts) and all(ok)
    assert fixed.extra["renumbered"] >= wrong.sum() * 0.9


def test_the_grid_search_at_a_lower_resolution_gives_nodes_in_the_page_pixels() -> None:
    """``detect_dpi`` below the page's: the nodes are found on the scaled page, reported in the page's own px."""
    page = Page(dpi=100)
    img, nodes_in = warp_page(draw_page(page), page, seed=3)
    full = Stage1(page=page, detect_dpi=100)
    half = Stage1(page=page, detect_dpi=50)
    assert full.detect_scale == 1.0 and half.detect_scale == 0.5
    det = half.detect(img)
    assert det.ok, det.message
    truth = nodes_in.reshape(page.n_hlines, page.n_vlines, 2)[det.index[:, 0], det.index[:, 1]]
    # a 0.5 px error at 50 dpi is 1 px here; a result left in the small page's px would be ~half the page off
    assert np.median(np.linalg.norm(det.points - truth, axis=1)) < 0.3
    rect = half(img)
    assert rect.ok, rect.message
    err = _rect_error(rect, nodes_in, page)
    assert np.median(err) < 0.3 and np.percentile(err, 95) < 0.8
    with pytest.raises(EcgTraceError, match="detect_dpi"):
        Stage1(page=page, detect_dpi=10)
