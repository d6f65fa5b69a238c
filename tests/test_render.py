"""Renderer: the image and its ground truth agree (ecgtrace.data.render)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from ecgtrace.data.groundtruth import GroundTruth
from ecgtrace.data.render import GRID_SCHEMES, RenderStyle, random_style, render_page, trace_pixel_errors
from ecgtrace.data.signals import synthesize_ecg
from ecgtrace.errors import EcgTraceError
from ecgtrace.paper import (
    CANONICAL,
    LEADS,
    MARKERS,
    PEN_OFFSET_PX,
    RHYTHM_KEY,
    ROW_BASELINES_MV,
    Page,
    lead_row_col,
    window_indices,
)


def snr_db(ref: np.ndarray, est: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(ref**2) / max(np.sum((ref - est) ** 2), 1e-30)))


def true_px(poly: np.ndarray) -> np.ndarray:
    """A GT polyline (where the pen drew) moved back by the pen offset (half a page px) to the true line."""
    return poly - PEN_OFFSET_PX


def round_trip(gt: GroundTruth, signals, fs, page) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """GT polylines -> paper.px_to_lead -> (input mV, read-back mV) per trace; checks the times too."""
    out = {}
    n = len(signals["II"])
    for key, poly in gt.traces.items():
        lead = "II" if key == RHYTHM_KEY else key
        i0, i1 = window_indices(key, fs, n)
        poly = true_px(poly)
        t, mv = page.px_to_lead(key, poly[:, 0], poly[:, 1])
        np.testing.assert_allclose(t, np.arange(i0, i1) / fs, atol=1 / 32 / page.px_per_s + 1e-9)
        out[key] = (signals[lead][i0:i1], mv)
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_round_trip_snr_canonical(seed):
    """At 200 dpi every lead reads back with SNR >= 40 dB; the only error is OpenCV's 1/16 px fixed point."""
    page = CANONICAL
    fs = (250, 500, 1025)[seed % 3]
    sig = synthesize_ecg(seed, fs=fs)
    img, gt = render_page(sig, fs, page=page, style=RenderStyle(), rng=seed)
    assert img.shape == (*page.size, 3) and img.dtype == np.uint8
    pairs = round_trip(gt, sig, fs, page)
    assert set(pairs) == set(LEADS) | {RHYTHM_KEY}
    snrs = {k: snr_db(ref, est) for k, (ref, est) in pairs.items()}
    assert min(snrs.values()) >= 40.0, snrs
    for ref, est in pairs.values():
        assert np.abs(ref - est).max() <= (1 / 32 + 1e-6) / page.px_per_mv


@pytest.mark.parametrize("dpi, min_db", [(100.0, 40.0), (50.0, 34.0)])
def test_round_trip_other_dpi(dpi, min_db):
    """Smaller pages: the same 1/32 px error bound; whole-page SNR (all leads pooled, as the metric does)."""
    page = Page(dpi=dpi)
    sig = synthesize_ecg(1, fs=500)
    img, gt = render_page(sig, 500, page=page, style=RenderStyle(), rng=0)
    assert img.shape == (*page.size, 3)
    pairs = round_trip(gt, sig, 500, page)
    ref = np.concatenate([r for r, _ in pairs.values()])
    est = np.concatenate([e for _, e in pairs.values()])
    assert np.abs(ref - est).max() <= (1 / 32 + 1e-6) / page.px_per_mv
    assert snr_db(ref, est) >= min_db


@pytest.mark.parametrize("dpi", [200.0, 100.0])
def test_trace_pixels_lie_under_gt_polyline(dpi):
    """Ink centroid of each flat trace column sits within a fraction of a pixel of the GT polyline."""
    page = Page(dpi=dpi)
    sig = synthesize_ecg(2, fs=500, hr=60)
    img, gt = render_page(sig, 500, page=page, style=RenderStyle(grid="red"), rng=0)
    errs = trace_pixel_errors(img, gt)
    assert len(errs) > 300
    assert np.median(errs) <= 0.25 and np.percentile(errs, 95) <= 0.8, (np.median(errs), np.percentile(errs, 95))


def test_ground_truth_fields():
    page = Page(dpi=50)
    sig = synthesize_ecg(3, fs=250)
    img, gt = render_page(sig, 250, page=page, style=RenderStyle(), rng=3)
    assert gt.image_size == page.size and gt.variant == "0001" and gt.orientation == 0
    assert gt.markers.shape == (len(MARKERS), 2)
    np.testing.assert_allclose(gt.markers, page.label_centers)
    pts, idx = page.grid_points()
    np.testing.assert_allclose(gt.grid_points, pts)
    assert (gt.grid_index == idx).all()
    # identity forward map: entry (i, j) is the point (j, i) * stride
    gh, gw, _ = gt.fwd_map.shape
    assert gw * gt.map_stride >= page.width_px and gh * gt.map_stride >= page.height_px
    np.testing.assert_allclose(gt.fwd_map[3, 5], [5 * gt.map_stride, 3 * gt.map_stride])
    assert len(gt.traces[RHYTHM_KEY]) == 2500 and len(gt.traces["V1"]) == 625


def test_labels_and_grid_are_drawn_where_paper_says():
    page = Page(dpi=100)
    sig = {k: np.zeros(5000) for k in LEADS}
    img, _ = render_page(sig, 500, page=page, style=RenderStyle(grid="none"), rng=0)
    gray = img.min(axis=2)
    for m in MARKERS:  # some ink within a label-sized box around each centre
        x, y = np.round(page.label_center(m)).astype(int)
        assert gray[y - 4:y + 5, x - 6:x + 7].min() < 100, m
    img, _ = render_page(sig, 500, page=page, style=RenderStyle(grid="bw", show_minor=False), rng=0)
    # a major grid line column away from traces/labels is dark along its length
    x = int(round(float(page.vline_x(50))))
    assert (img[20:120, x].min(axis=1) < 160).all()


def test_other_styles_and_random_style():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(300):
        seen.add(random_style(rng).grid)
    assert seen == set(GRID_SCHEMES)
    sig = synthesize_ecg(5, fs=256)
    for scheme in ("none", "bw", "blue"):
        img, gt = render_page(sig, 256, page=Page(dpi=50), style=RenderStyle(grid=scheme, header=True), rng=1)
        assert gt.grid_visible == (scheme != "none")
    with pytest.raises(EcgTraceError, match="unknown grid scheme"):
        RenderStyle(grid="purple")


def test_bad_signals():
    with pytest.raises(EcgTraceError, match="lack lead"):
        render_page({"I": np.zeros(10)}, 500)
    sig = {k: np.zeros(5000) for k in LEADS}
    sig["V3"] = np.zeros(100)
    with pytest.raises(EcgTraceError, match="V3"):
        render_page(sig, 500)


def test_gt_save_load_round_trip(tmp_path):
    sig = synthesize_ecg(4, fs=500)
    _, gt = render_page(sig, 500, page=Page(dpi=50), rng=4)
    gt.save(tmp_path / "a.gt.npz")
    g2 = GroundTruth.load(tmp_path / "a.gt.npz")
    np.testing.assert_allclose(g2.traces["V5"], gt.traces["V5"], atol=1e-3)
    assert float(g2.extra["fs"]) == 500.0


def test_canonical_size():
    sig = synthesize_ecg(0, fs=500)
    img, gt = render_page(sig, 500, rng=0)
    assert img.shape == (1700, 2200, 3) and gt.image_size == CANONICAL.size


def test_contact_sheet_command(tmp_path, capsys):
    import cv2

    from ecgtrace.cli import main

    out = tmp_path / "sheet.png"
    assert main(["contact-sheet", "--out", str(out), "--variants", "0001", "--tile-width", "200"]) == 0
    sheet = cv2.imread(str(out))
    assert sheet is not None and sheet.shape[1] == 3 * 200 + 2 * 8
    assert "wrote contact sheet" in capsys.readouterr().out
    assert main(["contact-sheet", "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


# --- randomized conventions (random_style): every option keeps the ground truth exact ----------------
def _plain(style: RenderStyle, **kw) -> RenderStyle:
    """``style`` with no grid and no text clutter, so ink = trace (the pen/marks/labels/dpi options stay)."""
    return replace(style, grid="none", header=False, footer=False, augment=None, **kw)


@pytest.mark.parametrize("seed", [0, 3, 6, 11])
def test_random_styles_round_trip_and_ink(seed):
    """Random pens, marks, pulses, labels and source resolutions: GT polylines read back to the signal
    within the fixed-point bound at the source resolution, and the ink lies under them."""
    page = Page(dpi=100)
    style = _plain(random_style(np.random.default_rng(seed)))
    sig = synthesize_ecg(2, fs=500, hr=60)
    img, gt = render_page(sig, 500, page=page, style=style, rng=seed)
    assert img.shape == (*page.size, 3) and gt.image_size == page.size
    k = page.dpi / float(gt.extra["source_dpi"])
    for ref, est in round_trip(gt, sig, 500, page).values() if k == 1 else ():
        assert np.abs(ref - est).max() <= (1 / 32 + 1e-6) / page.px_per_mv
    n = len(sig["II"])
    for key, poly in gt.traces.items():  # any source dpi: the error is 1/32 px of the *source* page
        i0, i1 = window_indices(key, 500, n)
        poly = true_px(poly)
        _, mv = page.px_to_lead(key, poly[:, 0], poly[:, 1])
        ref = sig["II" if key == RHYTHM_KEY else key][i0:i1]
        assert np.abs(mv - ref).max() <= (k / 32 + 1e-6) / page.px_per_mv
    errs = trace_pixel_errors(img, gt)
    assert len(errs) > 300
    # the checker's own spread on this signal is ~0.2-0.4 px median for any pen at the native dpi
    assert np.median(errs) <= 0.5 and np.percentile(errs, 95) <= 1.3, (style, np.median(errs))
    np.testing.assert_allclose(gt.grid_points, page.grid_points()[0])


def test_source_dpi_is_an_exact_rescale():
    """Drawn at 50 dpi and scaled to a 100 dpi page: the GT is the 50 dpi drawing's GT times 2, exactly
    (the true lines; the pen offset is half a pixel of each finished picture)."""
    sig = synthesize_ecg(4, fs=500)
    lo_img, lo = render_page(sig, 500, page=Page(dpi=50), style=RenderStyle(grid="none"), rng=0)
    hi_img, hi = render_page(sig, 500, page=Page(dpi=100), style=RenderStyle(grid="none", source_dpi=50), rng=0)
    assert hi_img.shape[:2] == Page(dpi=100).size and float(hi.extra["source_dpi"]) == 50.0
    for key in lo.traces:
        np.testing.assert_allclose(true_px(hi.traces[key]), 2.0 * true_px(lo.traces[key]), atol=1e-9)
    np.testing.assert_allclose(hi.markers, Page(dpi=100).label_centers, atol=1e-9)
    # the picture is the low-resolution one blown up (thick, soft lines), not a fresh sharp drawing
    sharp, _ = render_page(sig, 500, page=Page(dpi=100), style=RenderStyle(grid="none"), rng=0)
    assert (hi_img < 250).sum() > 1.3 * (sharp < 250).sum()


@pytest.mark.parametrize("anchor", ["center", "left"])
def test_label_offsets_move_markers_with_the_ink(anchor):
    """drawn_label_centers is where the label text is, for any offset, size, font and anchor; the GT
    markers stay the canonical anchors (stage 0 maps them onto those)."""
    from ecgtrace.data.render import drawn_label_centers

    page = Page(dpi=100)
    sig = {k: np.zeros(5000) for k in LEADS}
    for font, dx, dy in [(0, 0.08, -0.3), ("DejaVuSans.ttf", -0.1, 0.3), (2, 0.0, 0.2)]:
        st = RenderStyle(grid="none", calibration=False, separators=False, label_font=font, label_dx_s=dx,
                         label_dy_mv=dy, label_anchor=anchor, label_scale=1.5)
        img, gt = render_page(sig, 500, page=page, style=st, rng=0)
        ink = 255.0 - img.min(axis=2).astype(np.float64)
        np.testing.assert_allclose(gt.markers, page.label_centers)
        for m, (x, y) in zip(MARKERS, drawn_label_centers(page, st)):
            x0, y0 = int(round(x)) - 14, int(round(y)) - 9
            win = ink[y0:y0 + 19, x0:x0 + 29].copy()
            win[win < 60] = 0  # drop the zero-signal trace's faint edge
            r = np.abs(np.arange(y0, y0 + 19) - page.baseline_y(lead_row_col(m)[0]))
            assert win.sum() > 0, (m, font)
            win[r <= 3] = 0  # rows of the baseline trace
            ys, xs = np.nonzero(win)  # the marker is the centre of the text box: compare the ink's box
            cy, cx = y0 + (ys.min() + ys.max()) / 2.0, x0 + (xs.min() + xs.max()) / 2.0
            assert abs(cx - x) < 2.5 and abs(cy - y) < 2.5, (anchor, font, m, cx - x, cy - y)
        if anchor == "center":
            off = np.array([dx * page.px_per_s, -dy * page.px_per_mv])
            np.testing.assert_allclose(drawn_label_centers(page, st), page.label_centers + off)
    # drawn at 50 dpi and scaled up: the text box is where drawn_label_centers says on the final page
    st = RenderStyle(grid="none", label_anchor=anchor, label_dx_s=0.05, source_dpi=50)
    c50 = drawn_label_centers(Page(dpi=50), replace(st, source_dpi=None))
    np.testing.assert_allclose(drawn_label_centers(page, st), 2 * c50)
    _, gt = render_page(sig, 500, page=page, style=RenderStyle(labels=False), rng=0)
    assert float(gt.extra["labels_drawn"]) == 0.0 and np.allclose(gt.markers, page.label_centers)


@pytest.mark.parametrize("mark", ["tick", "bar", "gap", "none"])
def test_lead_switch_marks(mark):
    """bar: a thick block of ink at each switch; gap: the baseline trace is cut there; none/tick as drawn."""
    page = Page(dpi=100)
    sig = {k: np.zeros(5000) for k in LEADS}
    st = RenderStyle(grid="none", switch_mark=mark, switch_width_pt=3.0 if mark in ("bar", "gap") else None,
                     switch_height_mv=1.0, switch_offset_mv=-0.3 if mark == "bar" else 0.0, labels=False)
    img, _ = render_page(sig, 500, page=page, style=st, rng=0)
    ink = 255 - img.min(axis=2).astype(int)
    for row in range(3):
        b = page.baseline_y(row)
        for col in (1, 2, 3):
            x = int(round(page.column_x(col)))
            below = ink[int(b + (0.5 if mark == "bar" else 0.7) * page.px_per_mv), x - 1:x + 2]
            above = ink[int(b - 0.1 * page.px_per_mv), x]
            pen = int(round(b + PEN_OFFSET_PX))  # the row where the pen drew the flat trace
            on_trace = ink[pen, x - 1:x + 2]
            if mark == "bar":
                assert below.min() > 150 and ink[int(b + 0.5 * page.px_per_mv), x - 5] < 60
            elif mark == "tick":
                assert below.max() < 60 and ink[int(b - 0.3 * page.px_per_mv), x] > 100
            elif mark == "gap":
                assert on_trace.max() < 60 and ink[pen, x - 8] > 100
            else:
                assert below.max() < 60 and above < 60 and on_trace.min() > 100


@pytest.mark.parametrize("shape", ["tails", "box", "step"])
def test_calibration_pulse_shapes(shape):
    page = Page(dpi=100)
    sig = {k: np.zeros(5000) for k in LEADS}
    for t0, w in [(0.4, 0.2), (0.25, 0.15)]:
        st = RenderStyle(grid="none", cal_shape=shape, cal_t0_s=t0, cal_width_s=w, labels=False)
        img, _ = render_page(sig, 500, page=page, style=st, rng=0)
        ink = 255 - img.min(axis=2).astype(int)
        for row in range(4):
            x, y = page.to_px(t0 + w / 2, ROW_BASELINES_MV[row] + 1.0)
            assert ink[int(round(float(y))), int(round(float(x)))] > 100, (shape, row)  # the 1 mV top
        x, y = page.to_px(t0 + w / 2, ROW_BASELINES_MV[0] + 1.0)
    img, _ = render_page(sig, 500, page=page, style=RenderStyle(grid="none", calibration=False, labels=False), rng=0)
    assert (255 - img.min(axis=2))[int(round(float(y))), int(round(float(x)))] < 30


def test_grid_inset_random_colours_and_eik_bw():
    page = Page(dpi=100)
    sig = {k: np.zeros(5000) for k in LEADS}
    st = RenderStyle(grid="random", grid_major=(20, 140, 30), grid_minor=(90, 60, 200), grid_inset_mm=5.0,
                     labels=False, paper=(235, 245, 252))
    img, gt = render_page(sig, 500, page=page, style=st, rng=0)
    m = int(round(5.0 * page.px_per_mm))
    assert (img[:m - 1, :] == (235, 245, 252)).all() and (img[:, -m + 1:] == (235, 245, 252)).all()
    x = int(round(float(page.vline_x(20))))
    line = img[m + 5:m + 60, x - 1:x + 2].astype(float)
    # the darkest of the three columns around the major line is near the major colour, far from the paper
    best = line[:, np.argmin(np.abs(line - (20, 140, 30)).sum(axis=(0, 2)))]
    assert np.abs(best - (20, 140, 30)).max(axis=1).mean() < 0.6 * np.abs(np.subtract((235, 245, 252), (20, 140, 30))).max()
    assert gt.grid_visible
    img, _ = render_page(sig, 500, page=page, style=RenderStyle(grid="eik_bw", labels=False), rng=0)
    assert (img[20:60, x - 1:x + 2].min(axis=1).astype(int) < 180).all()


def test_random_style_spread():
    """The distributions cover every option the brief names (per page, many pages)."""
    from ecgtrace.data.render import CAL_SHAPES, SWITCH_MARKS, TTF_FONTS

    rng = np.random.default_rng(1)
    styles = [random_style(rng) for _ in range(400)]
    assert {s.switch_mark for s in styles} == set(SWITCH_MARKS)
    assert {s.cal_shape for s in styles} == set(CAL_SHAPES) and any(not s.calibration for s in styles)
    assert any(not s.labels for s in styles) and {s.label_anchor for s in styles} == {"center", "left"}
    assert {s.label_font for s in styles} & set(TTF_FONTS) and {s.label_font for s in styles} - set(TTF_FONTS)
    pens = np.array([s.trace_width_pt for s in styles])
    assert pens.min() >= 0.3 and pens.max() <= 2.0 and pens.min() < 0.4 and pens.max() > 1.7
    assert {s.source_dpi for s in styles} >= {50.0, 100.0, 200.0, 300.0}
    assert not all(s.antialias for s in styles) and not all(s.show_minor for s in styles)
    assert {s.header_kind for s in styles if s.header} == {"cart", "eik"} and any(s.footer for s in styles)
    augs = [s.augment for s in styles if s.augment is not None]
    assert 0.2 < len(augs) / len(styles) < 0.5
    assert max(a.noise_sigma for a in augs) > 40 and max(abs(a.rotate_deg) for a in augs) > 4
    assert max(a.crop for a in augs) > 0.015 and any(a.pad > 0 for a in augs)
    temps = [a.temperature_k for a in augs if a.temperature_k]
    assert min(temps) < 4000 and max(temps) > 10000
    cal_end = [s.cal_t0_s + s.cal_width_s for s in styles]
    assert max(cal_end) <= 0.6 + 1e-9  # the pulse always ends before the signal starts
    assert RenderStyle().augment is None and RenderStyle().source_dpi is None

def test_style_mix_asks_for_more_wrinkled_pages_and_leaves_the_rest_of_each_look():
    """DATA.SYNTHETIC_AUGMENT_P / _WRINKLE_P: more augmented and wrinkled pages, the other draws unchanged."""
    from dataclasses import replace

    from ecgtrace.data.render import StyleMix

    base = [random_style(np.random.default_rng([3, i, 1])) for i in range(200)]
    assert base == [random_style(np.random.default_rng([3, i, 1]), StyleMix()) for i in range(200)]
    more = [random_style(np.random.default_rng([3, i, 1]), StyleMix(0.35, 0.9)) for i in range(200)]

    def wrinkled(styles):
        return sum(s.augment is not None and s.augment.wrinkles > 0 for s in styles)

    assert wrinkled(more) > 2 * wrinkled(base) > 0
    for b, m in zip(base, more):  # the wrinkle draw is the augmentation's last: nothing else moves
        assert (b.augment is None) == (m.augment is None)
        if b.augment is not None:
            assert replace(b, augment=replace(b.augment, wrinkles=0.0)) == \
                replace(m, augment=replace(m.augment, wrinkles=0.0))
    from ecgtrace.config import Config
    from ecgtrace.train.stage2 import Stage2Task

    cfg = Config()
    cfg.MODEL.INPUT_SIZE, cfg.DATA.SYNTHETIC_PER_EPOCH, cfg.DATA.SYNTHETIC_WRINKLE_P = [170, 220], 4, 0.9
    train, val = Stage2Task().build_datasets(cfg)  # the training pages are drawn with the config's mix
    assert train.pages().mix == val.pages().mix == StyleMix(0.35, 0.9)
    cfg.DATA.SYNTHETIC_AUGMENT_P = 1.5
    with pytest.raises(EcgTraceError, match=r"DATA.SYNTHETIC_AUGMENT_P=1.5 .*augment_p is a share of pages"):
        Stage2Task().build_datasets(cfg)
    for bad in ({"augment_p": 1.5}, {"wrinkle_p": -0.1}):
        with pytest.raises(EcgTraceError, match="share of pages"):
            StyleMix(**bad)


def test_bad_style_fields():
    for kw, msg in [({"switch_mark": "zigzag"}, "lead-switch"), ({"cal_shape": "sine"}, "calibration shape"),
                    ({"cal_t0_s": 0.5, "cal_width_s": 0.2}, "before the signal"),
                    ({"label_anchor": "top"}, "label_anchor"), ({"label_font": "Comic.ttf"}, "unknown font"),
                    ({"source_dpi": 5}, "source_dpi")]:
        with pytest.raises(EcgTraceError, match=msg):
            RenderStyle(**kw)


def test_contact_sheet_spread(tmp_path, capsys):
    """``--spread N``: N random training pages, 4 per row, each captioned with its look."""
    import cv2

    from ecgtrace.cli import main

    out = tmp_path / "spread.png"
    assert main(["contact-sheet", "--out", str(out), "--spread", "5", "--variants", "0001,0003", "--tile-width",
                 "150"]) == 0
    sheet = cv2.imread(str(out))
    assert sheet is not None and sheet.shape[1] == 4 * 150 + 3 * 8
    assert main(["contact-sheet", "--out", str(out), "--spread", "-1"]) == 2
    assert "--spread" in capsys.readouterr().err
