"""Fusion of the learned and the classical reader's paths (ecgtrace.stages.trace.fusion)."""

from __future__ import annotations

import numpy as np

from ecgtrace.paper import N_COLUMNS, N_ROWS, ROW_KEYS, Page
from ecgtrace.stages.trace.fusion import CLASSICAL, MODEL, fuse_rows, is_clean, off_ink_share, stray_ink
from ecgtrace.stages.trace.path import RowTrace

PAGE = Page(dpi=50)


def _rows(dy_by_col: dict[int, float], page: Page = PAGE) -> dict[str, RowTrace]:
    """A path on every row's baseline, moved by dy px in the given lead windows."""
    h, w = page.size
    x0, x1 = page.signal_columns(w)
    xs = np.arange(x0, x1 + 1)
    out = {}
    for r in range(N_ROWS):
        y = np.full(xs.size, page.baseline_y(r))
        for col, dy in dy_by_col.items():
            y[(xs >= page.column_x(col)) & (xs < page.column_x(col + 1))] += dy
        out[ROW_KEYS[r]] = RowTrace(key=ROW_KEYS[r], row=r, x=xs.astype(np.float64), y=y,
                                    ink=np.ones(xs.size), clipped=np.zeros(xs.size, bool))
    return out


def _ink(rows: dict[str, RowTrace], page: Page = PAGE) -> np.ndarray:
    prob = np.zeros(page.size, np.float32)
    for tr in rows.values():
        prob[np.round(tr.y).astype(int), tr.x.astype(int)] = 1.0
    return prob


def test_each_lead_window_takes_the_path_on_the_ink():
    truth = _rows({})
    prob = _ink(truth)
    model = _rows({1: 8.0})  # the network strays off the ink in window 1 ...
    classical = _rows({3: -8.0})  # ... the classical reader in window 3
    fused = fuse_rows(model, classical, prob, PAGE)
    for key in ROW_KEYS:
        picks = fused.choice[key]
        assert len(picks) == N_COLUMNS
        assert picks[1] == CLASSICAL and picks[3] == MODEL, picks
        # the fused path lies on the ink everywhere
        np.testing.assert_allclose(fused.rows[key].y, truth[key].y)
        np.testing.assert_allclose(fused.rows[key].x, truth[key].x)


def test_the_classical_path_wins_only_where_the_network_believes_it():
    """A classical path on more ink (a shadow's edge) but off what the network reads keeps the network's path,
    unless the network's own path is on no ink."""
    classical = _rows({})  # the classical path on the darker ink (a shadow's edge, say) ...
    model = _rows({2: 6.0})  # ... the network's on fainter ink 6 px away in window 2
    prob = np.maximum(_ink(classical), 0.8 * _ink(model))

    def belief(row, tr):  # ... and the network believes its own path only, everywhere
        return (np.abs(tr.y - model[ROW_KEYS[row]].y) < 1).astype(float)

    assert fuse_rows(model, classical, prob, PAGE).choice[ROW_KEYS[0]][2] == CLASSICAL  # ink alone
    fused = fuse_rows(model, classical, prob, PAGE, belief=belief)
    assert all(fused.choice[key][2] == MODEL for key in ROW_KEYS)

    def half(row, tr):  # the network spreads its belief over both paths: the ink decides again
        return np.full(tr.x.size, 0.5 if np.abs(tr.y - model[ROW_KEYS[row]].y).max() > 1 else 1.0)

    assert fuse_rows(model, classical, prob, PAGE, belief=half).choice[ROW_KEYS[0]][2] == CLASSICAL
    # a network path off all ink (a picture it cannot read) has no say: the classical path's ink wins
    lost = _rows({c: -6.0 for c in range(N_COLUMNS)})

    def own(row, tr):
        return np.full(tr.x.size, float(tr is lost[ROW_KEYS[row]]))

    fused = fuse_rows(lost, classical, prob, PAGE, belief=own)
    assert all(pick == CLASSICAL for key in ROW_KEYS for pick in fused.choice[key])


def test_a_clean_page_is_the_classical_readers_and_a_noisy_one_is_not():
    rows = _rows({})
    prob = _ink(rows)
    assert stray_ink(prob, rows, PAGE) == 0.0
    assert is_clean(prob, rows, PAGE)
    noisy = prob.copy()
    rng = np.random.default_rng(0)
    noisy[rng.random(noisy.shape) < 0.01] = 1.0  # speckle noise: stray ink everywhere
    assert stray_ink(noisy, rows, PAGE) > 0.005
    assert not is_clean(noisy, rows, PAGE)


def test_a_classical_path_that_cuts_its_strokes_short_does_not_make_a_page_clean():
    """Faint QRS strokes are no strong ink: the page shows no stray ink, but the path crosses paper there."""
    rows = _rows({})
    prob = _ink(rows)
    skipped = {k: RowTrace(key=k, row=tr.row, x=tr.x, y=tr.y, clipped=tr.clipped,
                           ink=np.where(np.arange(tr.x.size) % 25 < 2, 0.0, 1.0))  # 8 % of the columns on paper
               for k, tr in rows.items()}
    assert stray_ink(prob, skipped, PAGE) == 0.0
    assert 0.07 < off_ink_share(skipped, PAGE, PAGE.size[1]) < 0.09
    assert is_clean(prob, rows, PAGE) and not is_clean(prob, skipped, PAGE)


def test_a_classical_path_that_runs_off_the_stroke_onto_a_shadow_takes_the_networks_path_there():
    """Window 1 goes to the classical path (the network strays onto paper in its first part), but further
    on the classical path leaves the thin trace for a broad shadow below it: that run is the network's."""
    truth = _rows({})
    prob = _ink(truth)
    xs = truth[ROW_KEYS[0]].x
    xa, xb = PAGE.column_x(1), PAGE.column_x(2)
    stray = (xs >= xa) & (xs < xa + 0.3 * (xb - xa))  # where the network is off the ink
    shadow = (xs >= xa + 0.6 * (xb - xa)) & (xs < xa + 0.8 * (xb - xa))  # where the classical path is
    model, classical = _rows({}), _rows({})
    for r, key in enumerate(ROW_KEYS):
        base = PAGE.baseline_y(r)
        cols = xs[shadow].astype(int)
        prob[round(base) + 5:round(base) + 15, cols.min() - 4:cols.max() + 5] = 1.0  # a broad dark blob just under the trace
        classical[key].y[shadow] = base + 9
        model[key].y[stray] = base - 6
    fused = fuse_rows(model, classical, prob, PAGE)
    for key in ROW_KEYS:
        assert fused.choice[key][1] == CLASSICAL
        np.testing.assert_allclose(fused.rows[key].y, truth[key].y)  # on the trace: the stray run is not spliced


def test_a_network_path_on_paper_beside_the_classical_ink_takes_the_classical_path_there():
    """Window 0 goes to the network (the classical path strays onto paper further on), but at the window's
    start the network runs on flat across paper while the trace climbs a wave: that run is the classical
    reader's. A parted run under a millimetre (the network's jump at a lead switch) is left alone."""
    page = Page(dpi=200)
    model, classical, truth = _rows({}, page), _rows({}, page), _rows({}, page)
    xs = model[ROW_KEYS[0]].x
    xa, xb = page.column_x(0), page.column_x(1)
    wave = (xs >= xa) & (xs < xa + 0.2 * (xb - xa))  # the trace's first wave, 2 mm above the baseline
    stray = (xs >= xa + 0.5 * (xb - xa)) & (xs < xa + 0.9 * (xb - xa))  # where the classical path is off the ink
    blip = np.flatnonzero(xs >= xa + 0.95 * (xb - xa))[:6]  # a 6-column parting: 0.76 mm
    for r, key in enumerate(ROW_KEYS):
        base = page.baseline_y(r)
        truth[key].y[wave] = base - 16
        classical[key].y[wave] = base - 16
        classical[key].y[stray] = base + 16
        model[key].y[blip] = base + 16
    prob = _ink(truth, page)
    fused = fuse_rows(model, classical, prob, page)
    for key in ROW_KEYS:
        assert fused.choice[key][0] == MODEL
        y = fused.rows[key].y
        np.testing.assert_allclose(y[wave], truth[key].y[wave])  # the wave, from the classical path
        np.testing.assert_allclose(y[stray], truth[key].y[stray])  # the network's own, on the ink
        np.testing.assert_allclose(y[blip], model[key].y[blip])  # the short parting stays the network's


def test_ink_on_another_rows_path_does_not_count_for_this_row():
    """Row 0 is drawn faint in window 1; there the classical path of row 0 drops onto row 1's bold trace.
    That ink is row 1's: the window is the network's, which stays on the faint trace."""
    truth = _rows({})
    prob = _ink(truth)
    xs = truth[ROW_KEYS[0]].x
    w1 = (xs >= PAGE.column_x(1)) & (xs < PAGE.column_x(2))
    y0 = np.round(truth[ROW_KEYS[0]].y[w1]).astype(int)
    prob[y0, xs[w1].astype(int)] = 0.3  # row 0's trace, faint in window 1
    model, classical = _rows({}), _rows({})
    classical[ROW_KEYS[0]].y[w1] = PAGE.baseline_y(1)  # on row 1's trace
    fused = fuse_rows(model, classical, prob, PAGE)
    assert fused.choice[ROW_KEYS[0]][1] == MODEL
    np.testing.assert_allclose(fused.rows[ROW_KEYS[0]].y, truth[ROW_KEYS[0]].y)
