"""paper.py: the page geometry everyone relies on."""

import numpy as np
import pytest

from ecgtrace import paper
from ecgtrace.paper import CANONICAL, LEADS, MARKERS, Page


def test_canonical_page_numbers():
    assert CANONICAL.size == (1700, 2200)
    assert CANONICAL.px_per_mm == pytest.approx(7.874, abs=1e-3)
    assert CANONICAL.px_per_mv == pytest.approx(78.74, abs=1e-2)
    assert CANONICAL.px_per_s == pytest.approx(196.85, abs=1e-2)
    assert CANONICAL.width_s == pytest.approx(11.176)
    assert CANONICAL.height_mv == pytest.approx(21.59)
    assert CANONICAL.signal_x0 == pytest.approx(118.1, abs=0.1)  # 0.6 s


def test_lead_mapping_round_trip_every_lead():
    rng = np.random.default_rng(0)
    for page in (CANONICAL, Page(dpi=50), Page(dpi=300)):
        for lead in MARKERS:
            t0, t1 = paper.lead_window(lead)
            t = rng.uniform(t0, t1, 50)
            mv = rng.normal(0, 1, 50)
            x, y = page.lead_to_px(lead, t, mv)
            t2, mv2 = page.px_to_lead(lead, x, y)
            np.testing.assert_allclose(t2, t, atol=1e-9)
            np.testing.assert_allclose(mv2, mv, atol=1e-9)


def test_layout_windows_and_rows():
    assert paper.lead_window("aVR") == (2.5, 5.0)
    assert paper.lead_window("V6") == (7.5, 10.0)
    assert paper.lead_window(paper.RHYTHM_KEY) == (0.0, 10.0)
    assert paper.lead_row_col("V2") == (1, 2)
    assert paper.lead_row_col(paper.RHYTHM_KEY) == (3, 0)
    assert sorted(sum(paper.LAYOUT_3X4, ())) == sorted(LEADS)
    with pytest.raises(KeyError, match="unknown lead"):
        paper.lead_row_col("V7")
    # rows are ordered top to bottom and do not share a baseline
    ys = [CANONICAL.baseline_y(r) for r in range(paper.N_ROWS)]
    assert ys == sorted(ys) and len(set(ys)) == 4
    assert ys[0] == pytest.approx((21.59 - 12.59) * 78.74, abs=0.1)


def test_signal_start_and_column_starts():
    # signal time 0 is right after the 0.2 s calibration pulse that starts at 0.4 s
    pulse = CANONICAL.calibration_pulse(0)
    assert pulse[0, 0] == pytest.approx(0.4 * CANONICAL.px_per_s)
    assert pulse[-1, 0] == pytest.approx(CANONICAL.signal_x0)
    assert pulse[:, 1].min() == pytest.approx(CANONICAL.baseline_y(0) - CANONICAL.px_per_mv)
    assert CANONICAL.column_x(1) == pytest.approx(CANONICAL.time_to_x(2.5))
    # the rhythm strip ends inside the page
    assert CANONICAL.time_to_x(paper.DURATION_S) < CANONICAL.width_px


def test_grid_lattice_is_5mm_and_bottom_anchored():
    pts, idx = CANONICAL.grid_points()
    assert CANONICAL.n_hlines == 44 and CANONICAL.n_vlines == 56
    assert len(pts) == 44 * 56
    assert idx[:, 0].max() == 43 and idx[:, 1].max() == 55
    pitch = 5 * CANONICAL.px_per_mm
    assert np.diff(CANONICAL.vline_x(np.arange(3))) == pytest.approx([pitch, pitch])
    assert CANONICAL.hline_y(43) == pytest.approx(1700.0)  # the bottom edge is a major line
    assert 0 <= CANONICAL.hline_y(0) < pitch
    # every baseline lies inside the page and labels are distinct
    assert len({tuple(np.round(c, 3)) for c in CANONICAL.label_centers}) == len(MARKERS)
    assert all(0 < c[0] < 2200 and 0 < c[1] < 1700 for c in CANONICAL.label_centers)


def test_scaled_page_is_proportional():
    small = CANONICAL.scaled_to(550)
    assert small.size == (425, 550)
    np.testing.assert_allclose(small.label_centers, CANONICAL.label_centers / 4, atol=1e-9)
