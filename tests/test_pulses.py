"""Registering a page by its calibration pulses (stages/pulses.py), the fallback for a tight crop."""

from __future__ import annotations

import cv2
import numpy as np

from ecgtrace.data.render import RenderStyle, render_page
from ecgtrace.data.signals import synthesize_ecg
from ecgtrace.paper import N_ROWS, Page
from ecgtrace.stages.pulses import PulseParams, find_pulses, fit_pulses, pulses_offset_mm, register_by_pulses

PAGE = Page(dpi=100)


def _cropped_photo(scale: float = 0.7):
    """A rendered page cut tight around its four rows and scaled: no page edge, little grid around."""
    fs = 250
    img, _ = render_page(synthesize_ecg(rng=3, fs=fs), fs, PAGE, RenderStyle(grid="red", labels=True), rng=3)
    x0, x1 = int(PAGE.time_to_x(-0.3)), int(PAGE.time_to_x(10.2))
    y0 = int(PAGE.baseline_y(0) - 2.5 * PAGE.px_per_mv)
    y1 = int(PAGE.baseline_y(N_ROWS - 1) + 1.5 * PAGE.px_per_mv)
    crop = img[y0:y1, x0:x1]
    small = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    # picture px -> page px, the truth the registration must find
    truth = np.array([[1 / scale, 0.0, x0], [0.0, 1 / scale, y0]])
    return small, truth


def test_four_pulses_are_found_and_fix_the_page():
    small, truth = _cropped_photo()
    pulses = find_pulses(small)
    assert len(pulses) == N_ROWS, pulses
    assert np.all(np.diff(pulses[:, 2]) > 0)  # top to bottom
    rect, fit = register_by_pulses(small, PAGE)
    assert rect is not None and fit.ok, fit.message
    assert rect.method == "pulses" and not rect.ok and "calibration pulses" in rect.message
    assert rect.image.shape[:2] == PAGE.size
    # every picture point lands where the true crop-and-scale puts it, to within 2 mm
    # (the renderer's pulse ends 0.05 s before signal time 0, where the fit puts the falling edge)
    pts = np.array([[30.0, 20.0], [small.shape[1] - 30.0, 20.0], [small.shape[1] / 2, small.shape[0] - 20.0]])
    got = pts @ fit.matrix[:, :2].T + fit.matrix[:, 2]
    want = pts @ truth[:, :2].T + truth[:, 2]
    assert np.abs(got - want).max() < 2.0 * PAGE.px_per_mm, (got, want)
    # map_xy points back into the picture: the warped page sampled there is the picture itself
    yy, xx = (np.array(rect.image.shape[:2]) * 0.5).astype(int)
    sx, sy = rect.map_xy[yy, xx]
    assert 0 <= sx < small.shape[1] and 0 <= sy < small.shape[0]
    np.testing.assert_allclose(fit.matrix[:, :2] @ [sx, sy] + fit.matrix[:, 2], [xx, yy], atol=0.5)


def test_a_picture_without_pulses_is_not_registered():
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 255, (300, 600, 3), dtype=np.uint8)
    blank = np.full((300, 600, 3), 255, np.uint8)
    for img in (noise, blank):
        rect, fit = register_by_pulses(img, PAGE)
        assert rect is None and not fit.ok and "pulse" in fit.message


def test_a_false_pulse_between_two_rows_is_skipped():
    """A QRS that looks like a pulse between two rows' pulses: the four that fit the rows are chosen."""
    small, _ = _cropped_photo()
    pulses = find_pulses(small)
    fake = pulses[1] + [40.0, 40.0, 0.45 * (pulses[2, 2] - pulses[1, 2]), 0.45 * (pulses[2, 3] - pulses[1, 3])]
    with_fake = np.insert(pulses, 2, fake, axis=0)
    fit, alone = fit_pulses(with_fake, PAGE), fit_pulses(pulses, PAGE)
    assert fit.ok and len(fit.pulses) == N_ROWS, fit.message
    np.testing.assert_allclose(fit.pulses, pulses)
    np.testing.assert_allclose(fit.matrix, alone.matrix, atol=1e-6)


def test_a_tilted_camera_is_levelled():
    """A crop sheared as a tilted camera shears it (each row runs downhill): the registered page's
    rows run level again, every point within 2 mm of where the truth puts it."""
    small, truth = _cropped_photo()
    shear = np.array([[1.0, 0.0, 0.0], [0.1, 1.0, 0.0]])  # y grows 10 px per 100 px: rows leave their bands
    h, w = small.shape[:2]
    tilted = cv2.warpAffine(small, shear, (w, h + int(0.1 * w) + 1), flags=cv2.INTER_LINEAR,
                            borderValue=(255, 255, 255))
    rect, fit = register_by_pulses(tilted, PAGE)
    assert rect is not None and fit.ok, fit.message
    pts = np.array([[30.0, 20.0], [w - 30.0, 20.0], [w / 2, h - 20.0], [w - 30.0, h - 20.0]])
    tilted_pts = pts @ shear[:, :2].T + shear[:, 2]
    got = tilted_pts @ fit.matrix[:, :2].T + fit.matrix[:, 2]
    want = pts @ truth[:, :2].T + truth[:, 2]
    assert np.abs(got - want).max() < 2.0 * PAGE.px_per_mm, (got, want)


def test_pulses_say_how_far_a_page_sits_from_the_canonical_geometry():
    """A page drawn on the canonical geometry sits (about) where its pulses say; the same page shrunk
    onto a larger sheet sits tens of mm off; a page without pulses says nothing."""
    fs = 250
    img, _ = render_page(synthesize_ecg(rng=3, fs=fs), fs, PAGE, RenderStyle(grid="none", labels=True), rng=3)
    assert pulses_offset_mm(img, PAGE) < 1.5
    h, w = img.shape[:2]
    sheet = np.full_like(img, 255)
    sheet[int(0.2 * h):int(0.2 * h) + int(0.75 * h), int(0.1 * w):int(0.1 * w) + int(0.75 * w)] = cv2.resize(
        img, (int(0.75 * w), int(0.75 * h)), interpolation=cv2.INTER_AREA)
    assert pulses_offset_mm(sheet, PAGE) > 10.0
    assert pulses_offset_mm(np.full_like(img, 255), PAGE) is None


def test_the_coarse_search_finds_the_pulses_the_full_resolution_search_finds():
    """A tall picture is searched on a coarser map (PulseParams.min_match_height_px); each match is then
    measured on the full-resolution ink, so the pulses are where the search at full resolution puts them."""
    page = Page(dpi=300)
    img, _ = render_page(synthesize_ecg(rng=4, fs=250), 250, page, RenderStyle(grid="red", labels=True), rng=4)
    top, bottom = int(page.baseline_y(0) - 2.5 * page.px_per_mv), int(page.baseline_y(N_ROWS - 1) + 1.5 * page.px_per_mv)
    crop = img[top:bottom, int(page.time_to_x(-0.3)):int(page.time_to_x(10.2))]
    assert PulseParams().min_height * crop.shape[0] >= 2 * PulseParams().min_match_height_px  # searched coarse
    coarse = find_pulses(crop)
    full = find_pulses(crop, PulseParams(min_match_height_px=10 ** 6))
    assert len(coarse) == len(full) == N_ROWS
    np.testing.assert_allclose(coarse, full, atol=1.0)
