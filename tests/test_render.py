"""Renderer: the image and its ground truth agree (ecgtrace.data.render)."""

from __future__ import annotations

import numpy as np
import pytest

from ecgtrace.data.groundtruth import GroundTruth
from ecgtrace.data.render import GRID_SCHEMES, RenderStyle, random_style, render_page, trace_pixel_errors
from ecgtrace.data.signals import synthesize_ecg
from ecgtrace.errors import EcgTraceError
from ecgtrace.paper import CANONICAL, LEADS, MARKERS, RHYTHM_KEY, Page, window_indices


def snr_db(ref: np.ndarray, est: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(ref**2) / max(np.sum((ref - est) ** 2), 1e-30)))


def round_trip(gt: GroundTruth, signals, fs, page) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """GT polylines -> paper.px_to_lead -> (input mV, read-back mV) per trace; checks the times too."""
    out = {}
    n = len(signals["II"])
    for key, poly in gt.traces.items():
        lead = "II" if key == RHYTHM_KEY else key
        i0, i1 = window_indices(key, fs, n)
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
    img, gt = render_page(sig, 250, page=page, rng=3)
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
    for _ in range(60):
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
