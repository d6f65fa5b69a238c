"""Stage 2: classical trace reading, lead cutting and resampling, Einthoven switch, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ecgtrace import paper
from ecgtrace.data.render import RenderStyle, render_page
from ecgtrace.data.signals import synthesize_ecg
from ecgtrace.errors import EcgTraceError
from ecgtrace.metric import snr_for_image
from ecgtrace.paper import CANONICAL, csv_rows
from ecgtrace.stages import trace_classical as tc
from ecgtrace.stages.base import LeadSignals, StageError
from ecgtrace.stages.stage2 import Stage2, einthoven_correct

FS_ALL = (250.0, 256.0, 500.0, 512.0, 1000.0, 1025.0)


def _truth(signals: dict[str, np.ndarray], fs: float) -> dict[str, np.ndarray]:
    n = len(signals["II"])
    return {lead: np.asarray(signals[lead])[slice(*csv_rows(lead, fs, n))] for lead in paper.LEADS}


@pytest.fixture(scope="module")
def clean_page():
    """One clean canonical page (standard 0.75 pt trace on a red grid) and its signals."""
    fs = 500.0
    signals = synthesize_ecg(np.random.default_rng(11), fs=fs)
    img, gt = render_page(signals, fs, page=CANONICAL, style=RenderStyle(), rng=np.random.default_rng(1))
    return img, gt, signals, fs


def test_classical_clean_page_scores_15db(clean_page):
    img, gt, signals, fs = clean_page
    out = Stage2()(img, fs)
    assert isinstance(out, LeadSignals) and out.method == "classical"
    assert list(out.signals) == list(paper.LEADS)
    score = snr_for_image(_truth(signals, fs), out.signals, fs)
    assert score.db >= 15.0, f"classical stage 2 on a clean page: {score.db:.2f} dB ({score.lead_db})"
    assert all(q == "ok" for q in out.quality.values()), out.quality


def test_paths_follow_the_drawn_traces(clean_page):
    """Median distance from the drawn polyline is sub-pixel on every row."""
    img, gt, _, _ = clean_page
    res = tc.trace_rows(img)
    for r, key in enumerate(tc.ROW_KEYS):
        leads = paper.LAYOUT_3X4[r] if r < 3 else (paper.RHYTHM_KEY,)
        gx = np.concatenate([gt.traces[k][:, 0] for k in leads])
        gy = np.concatenate([gt.traces[k][:, 1] for k in leads])
        o = np.argsort(gx, kind="stable")
        tr = res.rows[key]
        err = np.abs(tr.y - np.interp(tr.x, gx[o], gy[o]))
        assert np.median(err) < 0.6, f"{key}: median error {np.median(err):.2f} px"


@pytest.mark.parametrize("fs", FS_ALL)
def test_lead_lengths_match_competition_windows(fs):
    """Every lead gets exactly the samples the competition files hold for it, at every fs."""
    t = CANONICAL.x_to_time(np.arange(int(CANONICAL.time_to_x(0)) + 1, int(CANONICAL.time_to_x(10))))
    rows = {k: (t, np.sin(2 * np.pi * 1.3 * t)) for k in tc.ROW_KEYS}
    leads = tc.cut_leads(rows, fs)
    n = int(round(10 * fs))
    assert list(leads) == list(paper.LEADS)
    for lead, v in leads.items():
        i0, i1 = csv_rows(lead, fs, n)
        assert len(v) == i1 - i0, (lead, fs, len(v), i1 - i0)
        # and the samples sit at their own times: compare with the analytic signal
        tt = np.arange(i0, i1) / fs
        inner = (tt > tt[0] + 0.02) & (tt < tt[-1] - 0.02)
        assert np.max(np.abs(v[inner] - np.sin(2 * np.pi * 1.3 * tt[inner]))) < 2e-3
    # n_samples overrides (test.csv number_of_rows)
    over = tc.cut_leads(rows, fs, {"V1": 17, "II": 33})
    assert len(over["V1"]) == 17 and len(over["II"]) == 33


def test_resampling_is_band_limited():
    """A 25 Hz wave sampled at the page's column rate (~197 Hz) comes back at 1000 Hz within 1 %."""
    dt = 1.0 / CANONICAL.px_per_s
    t = np.arange(0, 2.5, dt)
    f = lambda x: np.sin(2 * np.pi * 25 * x) + 0.5 * np.cos(2 * np.pi * 7 * x)  # noqa: E731
    out = tc.resample_window(t, f(t), 0.0, 1000.0, 2400)
    tq = np.arange(2400) / 1000.0
    inner = (tq > 0.1) & (tq < 2.3)
    err = np.max(np.abs(out[inner] - f(tq[inner])))
    lin = np.max(np.abs(np.interp(tq, t, f(t))[inner] - f(tq[inner])))
    assert err < 0.015 and err < lin / 3, (err, lin)



def test_a_row_start_follows_the_stroke_past_the_left_out_columns():
    """A steep stroke whose first two columns were left out: the first sample follows it (clipped), not held flat."""
    from ecgtrace.stages.trace.leads import START_CARRY_MV, carry_start

    dt = 1.0 / CANONICAL.px_per_s
    t = 2 * dt + np.arange(100) * dt
    v = 0.5 - 10.0 * t  # falling 10 mV/s: 0.1 mV over the two missing columns
    te, ve = carry_start(t, v, 0.0)
    assert te[0] == 0.0 and np.array_equal(te[1:], t) and ve[0] == pytest.approx(0.5)
    out = tc.resample_window(te, ve, 0.0, 1000.0, 20)
    assert abs(out[0] - 0.5) < 0.01 < abs(np.interp(0.0, t, v) - 0.5)  # held flat it would lag 0.1 mV
    steep = 0.5 - 1000.0 * t  # a QRS stroke: carried no more than START_CARRY_MV
    assert carry_start(t, steep, 0.0)[1][0] == pytest.approx(steep[0] + START_CARRY_MV)
    t2, v2 = carry_start(t, v, t[0])  # nothing left out: nothing added
    assert np.array_equal(t2, t) and np.array_equal(v2, v)
    rows = {paper.ROW_KEYS[0]: (np.r_[t, 2.4 + t], np.r_[v, v])}  # cut_leads carries lead I's start
    lead_i = tc.cut_leads(rows, 1000.0)["I"]
    assert abs(lead_i[0] - 0.5) < 0.01


def test_a_row_joined_from_two_column_steps_keeps_its_time():
    """A fused row: the classical reader's 1 px columns, then the network's 2 px columns; the beats stay put."""
    px = CANONICAL.px_per_s
    t = np.concatenate([np.arange(0, 1000) / px, (1000 + 2 * np.arange(0, 480)) / px])  # 0..~9.9 s
    f = lambda x: np.sin(2 * np.pi * 1.3 * x) + 0.3 * np.sin(2 * np.pi * 9 * x)  # noqa: E731
    out = tc.resample_window(t, f(t), 0.0, 500.0, 4900)
    tq = np.arange(4900) / 500.0
    inner = (tq > 0.1) & (tq < t[-1] - 0.1)
    assert np.max(np.abs(out[inner] - f(tq[inner]))) < 0.02  # read as evenly spaced: off by up to 2 units

def test_einthoven_switch_reduces_the_residual():
    rng = np.random.default_rng(0)
    n = 1250
    i, iii = rng.normal(size=n), rng.normal(size=n)
    avr, avl = rng.normal(size=n), rng.normal(size=n)
    sig = {"I": i + 0.1 * rng.normal(size=n), "II": np.concatenate([i + iii, rng.normal(size=3750)]),
           "III": iii, "aVR": avr, "aVL": avl, "aVF": -(avr + avl) + 0.1 * rng.normal(size=n)}
    out = einthoven_correct(sig, alpha=0.33)
    before = np.abs(sig["I"] + sig["III"] - sig["II"][:n]).mean()
    after = np.abs(out["I"] + out["III"] - out["II"][:n]).mean()
    assert after < 0.8 * before
    assert np.array_equal(out["II"][n:], sig["II"][n:])  # the rest of the rhythm strip is untouched
    s_before = np.abs(sig["aVR"] + sig["aVL"] + sig["aVF"]).mean()
    s_after = np.abs(out["aVR"] + out["aVL"] + out["aVF"]).mean()
    assert s_after < 0.8 * s_before


def test_bad_input_is_a_clear_error():
    with pytest.raises(StageError):
        Stage2()(np.zeros((20, 20, 3), np.uint8), 500)
    with pytest.raises(StageError, match="rectif"):
        Stage2()(np.full((1700, 1000, 3), 255, np.uint8), 500)  # wrong aspect: not a rectified page
    with pytest.raises(EcgTraceError, match="sampling rate"):
        Stage2()(np.full((850, 1100, 3), 255, np.uint8), 0)
    with pytest.raises(EcgTraceError, match="not found"):
        Stage2(checkpoint="/nonexistent/stage2_best.pth")


def test_blank_page_flags_missing_traces():
    out = Stage2()(np.full((850, 1100, 3), 255, np.uint8), 250)
    assert all(q.startswith("no trace") for q in out.quality.values()), out.quality


def test_learned_targets_decode_exactly_and_loss_prefers_them():
    """Two-pixel column targets decode back to the fractional y; the coordinate loss ranks them first."""
    import torch

    from ecgtrace.config import load_config
    from ecgtrace.models.stage2 import TRACE_HEAD, decode_columns
    from ecgtrace.train.stage2 import TASK, collate

    cfg = load_config(2, overrides={"MODEL.INPUT_SIZE": [850, 1100], "DATA.VARIANTS": ["0001"],
                                    "DATA.SYNTHETIC_PER_EPOCH": 2, "TRAIN.VAL_FRACTION": 0.0})
    train, val = TASK.build_datasets(cfg)
    assert val is None and len(train) == 2
    batch = collate([train[0]])
    n, _, h, w = batch["image"].shape
    assert n == 4 and batch["ty"].shape == (4, w) and batch["valid"].float().mean() > 0.9
    ty = batch["ty"]
    y0 = ty.floor().long()
    f = ty - y0
    logits = torch.full((n, 1, h, w), -30.0)
    p0, p1 = (1 - f).clamp_min(1e-6).log(), f.clamp_min(1e-6).log()
    logits[:, 0].scatter_(1, y0[:, None], p0[:, None])
    logits[:, 0].scatter_(1, (y0 + 1).clamp(max=h - 1)[:, None], p1[:, None])
    for k in range(n):
        y, _ = decode_columns(logits[k, 0])
        v = batch["valid"][k].numpy()
        assert np.max(np.abs(y - ty[k].numpy())[v]) < 0.05
    good, _ = TASK.loss({TRACE_HEAD: logits}, batch)
    bad, _ = TASK.loss({TRACE_HEAD: torch.randn(n, 1, h, w)}, batch)
    assert good.item() < 0.8 < bad.item()
    assert TASK.metrics({TRACE_HEAD: logits}, batch)["y_err_px"] < 0.05


def test_stage2_loads_a_checkpoint_and_reads_with_the_model(tmp_path):
    """A stage2_*.pth in the engine's format drives Stage2 (untrained weights: shapes and plumbing only)."""
    import torch

    from ecgtrace.config import load_config
    from ecgtrace.train.checkpoint import save_checkpoint
    from ecgtrace.train.stage2 import TASK

    torch.manual_seed(0)
    cfg = load_config(2, overrides={"MODEL.INPUT_SIZE": [850, 1100], "MODEL.DECODER_CHANNELS": [16, 16, 8, 8, 8]})
    model = TASK.build_model(cfg)
    path = tmp_path / "stage2_best.pth"
    save_checkpoint({"model_state_dict": model.state_dict(), "arch": model.arch, "config": cfg.to_dict(),
                     "stage": 2, "epoch": 1}, path)
    st = Stage2(checkpoint=path, fuse=False)
    assert st.method == "model"
    page = np.full((850, 1100, 3), 255, np.uint8)
    out = st(page, 500.0)
    assert out.method == "model" and list(out.signals) == list(paper.LEADS)
    assert len(out.signals["II"]) == 5000 and len(out.signals["V6"]) == 1250
    assert all(np.isfinite(v).all() for v in out.signals.values())
    with pytest.raises(EcgTraceError, match="not a stage-2"):
        bad = tmp_path / "stage2_bad.pth"
        from ecgtrace.models.stage1 import stage1_unet

        m1 = stage1_unet(decoder_channels=[16, 16, 8, 8])
        save_checkpoint({"model_state_dict": m1.state_dict(), "arch": m1.arch, "config": cfg.to_dict(), "stage": 2}, bad)
        Stage2(checkpoint=bad)


def test_long_straight_lines_are_erased_not_read(clean_page):
    """A scanner streak / page edge (straight, slightly bent after rectification) is never taken for a trace."""
    import cv2

    img, gt, signals, fs = clean_page
    dirty = img.copy()
    y_rhythm = CANONICAL.baseline_y(3) + 1.2 * CANONICAL.px_per_mv  # inside the rhythm row's band
    xs = np.arange(0, dirty.shape[1], 20)
    ys = y_rhythm + 6.0 * (xs / xs[-1]) ** 2  # gently bent, as after a rectification
    cv2.polylines(dirty, [np.stack([xs, ys], 1).astype(np.int32).reshape(-1, 1, 2)], False, (20, 20, 20), 3)
    cv2.line(dirty, (2120, 0), (2165, 1699), (20, 20, 20), 3)  # a slanted near-vertical edge line
    prob = tc.trace_probability(dirty)
    on_line = prob[np.round(ys).astype(int)[5:-5], xs[5:-5]]
    assert on_line.max() < 0.2, on_line.max()
    score_clean = snr_for_image(_truth(signals, fs), Stage2()(img, fs).signals, fs).db
    score_dirty = snr_for_image(_truth(signals, fs), Stage2()(dirty, fs).signals, fs).db
    assert score_dirty >= score_clean - 1.0, (score_clean, score_dirty)


def test_path_decoding_stays_on_its_trace_where_a_neighbour_intrudes():
    """A neighbouring row's peak holding more probability than this row's trace: the column mode jumps to
    it, the path decode stays; at a lead switch (a free column) the path follows a real jump."""
    from ecgtrace.models.stage2 import decode_columns
    from ecgtrace.stages.trace.network import decode_path

    h, w = 128, 60
    logits = np.full((h, w), -20.0, np.float32)
    logits[70, :30] = 0.0  # this row's trace ...
    logits[95, 30:] = 0.0  # ... which switches lead (jumps) at column 30
    logits[10, 10:14] = 1.0  # a tall intruding peak, 2.7x as probable as the trace in its 4 columns
    mode, _ = decode_columns(logits)
    assert np.allclose(mode[10:14], 10.0, atol=0.01)  # the column-wise decode is fooled
    y, conf = decode_path(logits, free_cols=(30,))
    assert np.allclose(y[:30], 70.0, atol=0.01) and np.allclose(y[31:], 95.0, atol=0.01), y
    assert conf[:10].min() > 0.99 and conf[10:14].max() < 0.5  # the contested columns are marked uncertain
    y_nofree, _ = decode_path(logits)
    assert np.allclose(y_nofree[33:], 95.0, atol=0.01)  # a lasting jump is followed even where it is not free


def test_path_decoding_does_not_jump_to_the_next_lead_before_the_switch_column():
    """The column before a lead switch holds some belief at the next lead's level (its ink bleeds back): the
    jump is free on the switch column and after it, not before, so this lead keeps its last sample."""
    from ecgtrace.stages.trace.network import decode_path

    h, w = 128, 60
    logits = np.full((h, w), -20.0, np.float32)
    logits[70, :30] = 0.0  # this lead ...
    logits[95, 30:] = 0.0  # ... the next one from the switch column 30
    logits[95, 29] = 1.0  # the column before: the next lead's level looks likelier than this lead's
    y, _ = decode_path(logits, free_cols=(30,))
    assert abs(y[29] - 70.0) < 0.5 and np.allclose(y[30:], 95.0, atol=0.01), y[27:33]


def test_path_decoding_reads_the_middle_of_a_steep_stroke():
    """On a steep stroke the network spreads its belief along the stroke: the decode takes the mean over
    the path's span in that column (the mode sits at one end); on a flat stretch the window stays narrow."""
    from ecgtrace.stages.trace.network import decode_path

    h, w = 64, 9
    logits = np.full((h, w), -30.0, np.float32)
    logits[50, :4] = 0.0  # flat at y = 50 ...
    logits[20:51, 4] = 0.0  # ... a stroke up through column 4 (uniform belief over y = 20..50) ...
    logits[20, 4] = 0.5  # (its mode at the top end)
    logits[20, 5:] = 0.0  # ... flat at y = 20
    logits[35, 7] = -1.0  # a faint second trace 15 px off on the flat stretch
    y, _ = decode_path(logits)
    assert abs(y[4] - 35.0) < 1.5, y[4]  # the stroke's middle, not its mode (20)
    assert abs(y[7] - 20.0) < 0.05 and abs(y[1] - 50.0) < 0.05, y


def test_model_read_maps_pixel_centres_back_to_the_page():
    """A model that runs on a page half the canonical size: column c covers input px [2c, 2c + 2), so its
    reading belongs to x = 2c + 0.5 (not 2c); likewise y. A 0.5 px error is 2.5 ms, a sample at 500 Hz."""
    import torch

    from ecgtrace.models.stage2 import TRACE_HEAD, Stage2Model, row_strip, strip_height
    from ecgtrace.stages.trace.network import read_rows

    half = CANONICAL.scaled_to(CANONICAL.width_px // 2)
    sh = strip_height(half)
    k = sh // 3

    class Fixed(torch.nn.Module):
        def forward(self, x):
            out = torch.full((x.shape[0], 1, x.shape[2], x.shape[3]), -30.0)
            out[:, 0, k] = 0.0  # every column at strip row k exactly
            return {TRACE_HEAD: out}

    m = Stage2Model(Fixed(), (half.height_px, half.width_px))
    img = np.full((CANONICAL.height_px, CANONICAL.width_px, 3), 255, np.uint8)
    rows = read_rows(m, img)
    for r, (key, tr) in enumerate(rows.items()):
        _, top = row_strip(np.zeros((half.height_px, half.width_px, 3), np.uint8), half, r)
        c = (tr.x + 0.5) / 2.0 - 0.5
        assert np.allclose(c, np.round(c)), key  # x = 2c + 0.5 for integer model columns c
        assert np.allclose(tr.y, (k + top + 0.5) * 2.0 - 0.5), key


def test_stage2_command_writes_signals_that_match_the_page(clean_page, tmp_path):
    """`ecgtrace stage2` on a rectified page: the CSV holds the page's leads (scored against the truth)."""
    import cv2
    import pandas as pd

    from ecgtrace.cli import main

    img, _, signals, fs = clean_page
    page = tmp_path / "rect.png"
    cv2.imwrite(str(page), img)
    out = tmp_path / "out"
    assert main(["stage2", "--image", str(page), "--output", str(out), "--fs", str(fs), "--classical"]) == 0
    for name in ("signals.csv", "trace_overlay.png", "signals.png"):
        assert (out / name).is_file(), name
    df = pd.read_csv(out / "signals.csv")
    assert list(df.columns) == ["time_s", *paper.LEADS] and len(df) == int(round(paper.DURATION_S * fs))
    pred = {lead: df[lead].dropna().to_numpy() for lead in paper.LEADS}
    assert snr_for_image(_truth(signals, fs), pred, fs).db >= 15.0
    assert main(["stage2", "--image", str(tmp_path / "missing.png"), "--output", str(out)]) == 2
    assert main(["stage2", "--image", str(page), "--output", str(out), "--fs", "0"]) == 2


def test_classical_reads_thin_trace_on_black_grid():
    """A thin trace on a black grid: QRS strokes cross in-painted grid-line columns and must not be cut there."""
    fs = 500.0
    signals = synthesize_ecg(np.random.default_rng(11), fs=fs)
    img, _ = render_page(signals, fs, page=CANONICAL, style=RenderStyle(grid="bw", trace_width_pt=0.4),
                         rng=np.random.default_rng(1))
    score = snr_for_image(_truth(signals, fs), Stage2()(img, fs).signals, fs)
    assert score.db >= 14.0, f"black grid, 0.4 pt trace: {score.db:.2f} dB ({score.lead_db})"


def test_ink_near_path_tells_a_path_on_the_trace_from_one_beside_it(clean_page):
    """The model path is judged by the page's ink near it: on the drawn trace it is inked, 0.5 mV off it is not."""
    img, gt, _, _ = clean_page
    prob = tc.trace_probability(img)
    res = tc.trace_rows(img)
    tr = res.rows[tc.ROW_KEYS[1]]
    on = tc.ink_near_path(prob, tr.x, tr.y, radius=2.0)
    off = tc.ink_near_path(prob, tr.x, tr.y - 0.5 * CANONICAL.px_per_mv, radius=2.0)
    weak = tc.ClassicalParams().weak_ink
    assert np.mean(on < weak) < 0.02, f"{np.mean(on < weak):.1%} of on-trace columns read as without ink"
    assert np.mean(off < weak) > 0.8, f"only {np.mean(off < weak):.1%} of off-trace columns read as without ink"


def test_two_rows_on_one_trace_flag_the_row_it_does_not_belong_to(clean_page):
    """A page read one row off puts two rows on one trace: the row farther from it is flagged, not "ok"."""
    img, _, _, _ = clean_page
    res = tc.trace_rows(img)
    assert all(q == "ok" for q in tc.quality_flags(res, CANONICAL).values())
    res.rows["row1"].y = res.rows["row2"].y.copy()
    flags = tc.quality_flags(res, CANONICAL)
    for lead in ("aVL", "V2", "V5"):
        assert flags[lead].startswith("no trace found"), (lead, flags[lead])
    for lead in ("III", "aVF", "V3", "V6"):
        assert flags[lead] == "ok", (lead, flags[lead])


def test_blind_columns_bridge_only_ink_a_stroke_could_join():
    """A move through an in-painted grid-line column is cheap only between ink either side (a stroke), not
    from a trace down to text below it (what let the path drop onto ECG-Image-Kit's '10mm/mV' footer)."""
    from ecgtrace.stages.trace.params import ClassicalParams
    from ecgtrace.stages.trace_classical import _blind_step_cost

    blind = np.array([False, False, True, False, False])
    p = ClassicalParams()
    text = np.zeros((120, 5), np.float32)
    text[10, [0, 1, 3, 4]] = 1.0  # a flat trace at y 10 either side of blind column 2 ...
    text[100, :] = 1.0  # ... and text 90 px below it
    cost = _blind_step_cost(text, blind, p)[:, 0]
    assert cost.shape == (120,)
    assert cost[8:13].max() == pytest.approx(p.blind_step_cost)  # along the trace: bridged
    assert cost[31:80].min() > 0.5 * p.step_ink_cost  # between trace and text: as dear as paper
    stroke = np.zeros((120, 5), np.float32)
    stroke[30:61, 1] = 1.0  # a steep stroke: y 30-60 left of the blind column, 61-90 right of it
    stroke[61:91, 3] = 1.0
    assert _blind_step_cost(stroke, blind, p)[45:75, 0].max() == pytest.approx(p.blind_step_cost)
    # with an unbounded reach all between inked rows would be bridged (the old behaviour)
    loose = _blind_step_cost(text, blind, ClassicalParams(blind_bridge_slope=1e4))[:, 0]
    assert loose.max() == pytest.approx(p.blind_step_cost)
    # a band that is blind everywhere has no clean column to bridge from: every move costs as on paper
    everywhere = _blind_step_cost(text, np.ones(5, bool), p)
    assert everywhere.shape == (120, 5)
    np.testing.assert_allclose(everywhere, p.blind_step_cost + p.step_ink_cost)


def test_a_black_stroke_down_a_grey_grid_line_keeps_its_ink():
    """An in-painted grey line column keeps ink clearly darker than the line; a black line hides it."""
    from ecgtrace.stages.trace.ink import _remove_lines

    score = np.zeros((60, 7), np.float32)
    score[:, 3] = 0.5  # a grey vertical grid line ...
    score[10:40, 3] = 1.0  # ... with a steep black stroke running down it (not in columns 2 or 4)
    score[25, :] = 1.0  # a flat trace crossing everything
    level = np.median(score, axis=0)
    out = _remove_lines(score, level)
    assert out[10:40, 3].min() == pytest.approx(1.0)  # the stroke is kept
    assert out[45:, 3].max() == pytest.approx(0.0)  # the line itself is gone
    assert out[25, 3] == pytest.approx(1.0)  # the crossing trace is in-painted as before
    black = score.copy()
    black[:, 3] = 1.0  # a line as dark as the trace: nothing to tell apart, only the in-painting is left
    out = _remove_lines(black, np.median(black, axis=0))
    assert out[10:20, 3].max() == pytest.approx(0.0) and out[25, 3] == pytest.approx(1.0)


EIK_BW = Path(__file__).resolve().parents[1].parent / "shared" / "eik-dev" / "bw"


def _eik_classical(folder: Path, image_id: str):
    """One eik-dev page read by the classical path: (the page, the prediction on its truth's samples)."""
    from ecgtrace.commands.evaluate import pred_on_truth
    from ecgtrace.data.eik import find_pages
    from ecgtrace.pipeline import Pipeline

    page = next(p for p in find_pages(folder) if p.image_id == image_id)
    res = Pipeline(classical=True)(page.image, fs=page.page_fs)
    pred = {lead: res.signals[lead].to_numpy() for lead in res.signals.columns}
    return page, pred_on_truth(pred, page.page_fs, page.truth, page.fs)[0]


def _eik_bw_classical(image_id: str):
    """The classical path's competition score of one black-and-white eik-dev page (SnrResult)."""
    from ecgtrace.metric import snr_for_image

    page, aligned = _eik_classical(EIK_BW, image_id)
    return snr_for_image(page.truth, aligned, page.fs)


@pytest.mark.skipif(not (EIK_BW / "dev01-0.png").is_file(), reason="../shared/eik-dev not found")
def test_rhythm_strip_is_not_read_into_the_footer_text_of_a_grey_grid_page():
    """ECG-Image-Kit's black-and-white page dev01: the classical rhythm strip once dropped onto '10mm/mV' (1 dB)."""
    lead_db = _eik_bw_classical("dev01-0").lead_db
    assert lead_db["II"] > 20.0, lead_db


@pytest.mark.skipif(not (EIK_BW / "dev00-0.png").is_file(), reason="../shared/eik-dev not found")
def test_r_waves_whose_down_stroke_falls_on_a_grey_major_line_are_read():
    """ECG-Image-Kit's black-and-white page dev00, classical: 21.7 dB while grey line columns were in-painted
    whole (lead I lost the R wave before its lead switch), 24.9 dB with the stroke's ink kept."""
    assert 10 * np.log10(_eik_bw_classical("dev00-0").snr) > 24.0


@pytest.mark.skipif(not (EIK_BW.parent / "clean" / "dev00-0.png").is_file(), reason="../shared/eik-dev not found")
def test_the_classical_reader_keeps_time_on_a_clean_ecg_image_kit_page():
    """Per lead, the fractional time shift that best fits the truth: +1.25 ms (median of 12 leads) on clean/dev00
    before the reader's column lag was taken out, about 1 ms on every clean page; now within half a millisecond."""
    page, aligned = _eik_classical(EIK_BW.parent / "clean", "dev00-0")
    best = []
    for lead, pred in aligned.items():
        truth = np.asarray(page.truth[lead], dtype=np.float64)
        truth = truth[np.isfinite(truth)]
        n = np.arange(len(truth), dtype=np.float64)
        shifts = np.arange(-4.0, 4.01, 0.25)  # ms; shifted[n] = pred[n - s fs]
        err = [np.var(np.interp(n - s * page.fs / 1000.0, n, pred) - truth) for s in shifts]
        best.append(shifts[int(np.argmin(err))])
    assert abs(float(np.median(best))) <= 0.5, best


def test_a_row_start_merged_with_the_pulse_edge_is_read_at_the_end_outside_the_pulse():
    """The trace leaves the pulse's falling edge from 1.5 mV: the first column's long run is read at its top."""
    from ecgtrace.stages.trace.path import RowTrace
    from ecgtrace.stages.trace.row_start import read_past_pulse_edge

    page = paper.Page(dpi=100)
    prob = np.zeros(page.size, np.float32)
    x0 = int(round(page.time_to_x(0.0)))
    base, mv = page.baseline_y(0), page.px_per_mv
    edge = slice(int(round(base - 1.0 * mv)), int(round(base)) + 1)  # the pulse edge: 1 mV down to the baseline
    prob[edge, x0] = 1.0
    start = int(round(base - 1.5 * mv))
    prob[start:edge.start, x0] = 1.0  # the trace's first stroke, above the pulse, in the same column
    xs = np.arange(x0, x0 + 20)
    y = np.full(xs.size, base)
    y[0] = base - 0.7 * mv  # the reading in the middle of the merged run
    rows = {"row0": RowTrace(key="row0", row=0, x=xs, y=y.copy(), ink=np.ones(xs.size), clipped=np.zeros(xs.size, bool))}
    out = read_past_pulse_edge(rows, prob, page)["row0"]
    assert abs(out.y[0] - start) <= 1.5, (out.y[0], start)
    np.testing.assert_array_equal(out.y[1:], y[1:])  # only the columns at the edge move
    np.testing.assert_array_equal(rows["row0"].y, y)  # the input is not changed
    # a trace that starts inside the pulse's span is hidden by it: the visible stroke's line is carried back
    prob[start:edge.start, x0] = 0.0
    line = base - (0.4 - 0.02 * (xs - x0)) * mv  # falling 0.02 mV per column from 0.4 mV at the edge
    hidden = line.copy()
    hidden[0] = base - 0.7 * mv
    rows["row0"].y = hidden
    out = read_past_pulse_edge(rows, prob, page)["row0"]
    assert abs(out.y[0] - line[0]) <= 1e-6 * mv, ((base - out.y[0]) / mv, 0.4)
    np.testing.assert_array_equal(out.y[1:], hidden[1:])
    # ... but never outside the pulse's span, which hides it
    steep = base - (1.3 - 0.3 * (xs - x0)) * mv  # its line would start above the pulse top
    steep[0] = base
    rows["row0"].y = steep
    assert read_past_pulse_edge(rows, prob, page)["row0"].y[0] == pytest.approx(base - paper.CAL_PULSE_MV * mv)
    # the trace's first point drawn just left of the edge (ECG-Image-Kit): the hidden stroke runs from it
    first = int(round(base - 0.8 * mv))
    prob[first - 1:first + 2, x0 - 1] = 1.0
    edge2 = prob.copy()
    edge2[edge, x0 + 1] = 1.0  # the edge two columns wide: both hidden
    rows["row0"].y = line.copy()
    rows["row0"].y[:2] = base - 0.7 * mv
    out = read_past_pulse_edge(rows, edge2, page)["row0"]
    want = np.interp(xs[:2], [x0 - 1, xs[2]], [first, line[2]])
    np.testing.assert_allclose(out.y[:2], want, atol=1e-6)
    np.testing.assert_array_equal(out.y[2:], line[2:])
    prob[int(round(base - 0.3 * mv)), x0 - 1] = 1.0  # two bumps in the column: neither is trusted
    rows["row0"].y = hidden
    assert abs(read_past_pulse_edge(rows, prob, page)["row0"].y[0] - line[0]) <= 1e-6 * mv


def _switch_page():
    """A 100 dpi ink map with a bar 0.7 mV tall, 3 columns wide, at row 0's first lead switch."""
    page = paper.Page(dpi=100)
    prob = np.zeros(page.size, np.float32)
    xb = int(np.ceil(page.column_x(1)))  # the new lead's first column
    base, mv = page.baseline_y(0), page.px_per_mv
    prob[int(round(base - 0.35 * mv)):int(round(base + 0.35 * mv)) + 1, xb - 1:xb + 2] = 1.0
    return page, prob, xb, base, mv


def test_the_columns_beside_a_lead_switch_mark_are_read_on_the_stroke_and_carried_under_the_mark():
    """The next lead rises from 0.2 mV at the switch; the path ran flat on in-painted ghost ink beside the bar."""
    from ecgtrace.stages.trace.path import RowTrace
    from ecgtrace.stages.trace.switch_marks import read_beside_switch_marks

    page, prob, xb, base, mv = _switch_page()
    xs = np.arange(xb - 20, xb + 21)
    truth = np.where(xs < xb, base - 0.1 * mv, base - (0.2 + 0.03 * (xs - xb)) * mv)
    for x, yt in zip(xs, truth):
        if abs(x - xb) > 1:  # the bar hides the trace in its own columns
            prob[int(round(yt)), x] = 1.0
    read = truth.copy()
    read[(xs >= xb - 1) & (xs <= xb + 4)] = base - 0.1 * mv  # flat through the in-painted columns
    rows = {"row0": RowTrace(key="row0", row=0, x=xs.astype(np.float64), y=read.copy(), ink=np.ones(xs.size),
                             clipped=np.zeros(xs.size, bool))}
    out = read_beside_switch_marks(rows, prob, page)["row0"]
    after = xs >= xb
    np.testing.assert_allclose((base - out.y[after]) / mv, (base - truth[after]) / mv, atol=0.02)
    # the old lead's visible columns are read on their ink (drawn whole-pixel here)
    np.testing.assert_allclose(out.y[xs < xb - 1], truth[xs < xb - 1], atol=0.5)
    np.testing.assert_array_equal(rows["row0"].y, read)  # the input is not changed
    # ink joining the bar's top in one of its columns lengthens that run: it is still the bar, as tall as before
    prob[int(round(base - 0.6 * mv)):int(round(base - 0.35 * mv)), xb] = 1.0
    joined = read_beside_switch_marks(rows, prob, page)["row0"]
    np.testing.assert_allclose(joined.y[xs > xb], out.y[xs > xb])
    # no mark drawn at the switch: the rows come back as they were
    prob[:, xb - 1:xb + 2] = 0.0
    assert read_beside_switch_marks(rows, prob, page)["row0"] is rows["row0"]


def test_network_precision_is_chosen_and_can_be_forced(monkeypatch):
    """bf16 autocast only where the CPU computes bfloat16 natively (auto), fp32 for ONNX sessions, and
    ECGTRACE_PRECISION overrides the default; an unknown name is one clear error."""
    from ecgtrace.errors import EcgTraceError
    from ecgtrace.models import stage2 as s2

    monkeypatch.delenv("ECGTRACE_PRECISION", raising=False)
    assert s2.resolve_precision(None, "cpu", True) == ("bf16" if s2.cpu_has_bf16() else "fp32")
    assert s2.resolve_precision("bf16", "cpu", False) == "fp32"  # an ONNX session runs as exported
    monkeypatch.setenv("ECGTRACE_PRECISION", "fp32")
    assert s2.resolve_precision(None, "cpu", True) == "fp32"
    assert s2.resolve_precision("bf16", "cpu", True) == "bf16"  # an explicit argument wins
    monkeypatch.setenv("ECGTRACE_PRECISION", "half")
    with pytest.raises(EcgTraceError, match="unknown precision 'half'"):
        s2.resolve_precision(None, "cpu", True)


def test_bf16_reading_is_float32_and_close_to_fp32():
    """The bf16 pass returns float32 logits whose column distributions match the fp32 pass closely."""
    import torch

    from ecgtrace.models.stage2 import Stage2Model, stage2_unet

    torch.manual_seed(0)
    net = stage2_unet(encoder_name="test_efficientnet", decoder_channels=[16, 8, 8, 8, 8]).eval()
    half = CANONICAL.scaled_to(CANONICAL.width_px // 4)
    size = (half.height_px, half.width_px)
    page = np.random.default_rng(3).integers(0, 255, (size[0], size[1], 3), dtype=np.uint8)
    got = {p: Stage2Model(net, size, precision=p).row_logits(page).logits for p in ("fp32", "bf16")}
    assert got["bf16"].dtype == torch.float32
    p32, p16 = (torch.softmax(got[k], 1) for k in ("fp32", "bf16"))
    assert float((p32 - p16).abs().max()) < 0.05
    assert not torch.equal(got["fp32"], got["bf16"])  # it did compute in bf16


def test_bad_precision_setting_stops_the_stage_instead_of_dropping_its_weights(monkeypatch):
    """A typo in ECGTRACE_PRECISION is one clear error when a stage would run a network, not a silent
    fall back to the classical reader as if the weights file were broken; the classical path ignores it."""
    from ecgtrace.errors import EcgTraceError
    from ecgtrace.models.shipped import resolve_weights
    from ecgtrace.stages.stage2 import Stage2

    monkeypatch.setenv("ECGTRACE_PRECISION", "half")
    src = resolve_weights(2, None)
    assert src.uses_network  # the shipped stage-2 weights
    with pytest.raises(EcgTraceError, match="unknown precision 'half'"):
        Stage2(checkpoint=src)
    assert Stage2(checkpoint=resolve_weights(2, None, classical=True)).model is None


@pytest.mark.skipif(not (EIK_BW.parent / "clean" / "dev10-0.png").is_file(), reason="../shared/eik-dev not found")
def test_thin_r_wave_tips_are_followed_up_on_a_clean_ecg_image_kit_page():
    """ECG-Image-Kit's clean page dev10, classical: 22.2 dB while a vertical move was free only from 0.4 of ink
    on (the path cut under the faint tips of the R waves), 25.8 dB from 0.2 on (ClassicalParams.step_ink_full)."""
    from ecgtrace.metric import snr_for_image

    page, aligned = _eik_classical(EIK_BW.parent / "clean", "dev10-0")
    assert 10 * np.log10(snr_for_image(page.truth, aligned, page.fs).snr) > 24.5


def test_strips_read_in_chunks_give_the_logits_of_one_pass_and_the_mirrored_average(monkeypatch):
    """The CPU reads a page's strips a few at a time: the same logits as one pass of all of them, and the
    mirrored read still averages the column distributions of each strip and its time-reversed copy."""
    import torch

    from ecgtrace.models import stage2 as s2

    torch.manual_seed(0)
    net = s2.stage2_unet(encoder_name="test_efficientnet", decoder_channels=[16, 8, 8, 8, 8]).eval()
    half = CANONICAL.scaled_to(CANONICAL.width_px // 4)
    size = (half.height_px, half.width_px)
    page = np.random.default_rng(5).integers(0, 255, (size[0], size[1], 3), dtype=np.uint8)
    got = {}
    for n in (1, 3, 8):
        monkeypatch.setattr(s2, "CPU_STRIPS_PER_PASS", n)
        got[n] = s2.Stage2Model(net, size, precision="fp32").row_logits(page).logits
    assert got[1].shape[0] == s2.N_ROWS
    # a convolution may pick another kernel for another batch size: the same to float rounding (the
    # shipped weights under bf16 read the same to the bit: bench/bench_network.py checks that)
    assert float((got[1] - got[8]).abs().max()) < 1e-5 and float((got[3] - got[8]).abs().max()) < 1e-5
    plain = s2.Stage2Model(net, size, precision="fp32", tta=False)
    one = plain.row_logits(page).logits
    strips = torch.stack([torch.from_numpy(s2.to_chw(s2.row_strip(page, half, r)[0], plain.mean, plain.std))
                          for r in range(s2.N_ROWS)])
    with torch.no_grad():
        mirrored = plain._forward(torch.flip(strips, [3]).contiguous(memory_format=torch.channels_last)).flip(-1)
    want = torch.log((torch.softmax(one, 1) + torch.softmax(mirrored, 1)) / 2 + 1e-12)
    assert float((got[8] - want).abs().max()) < 1e-4
    assert float((got[8] - one).abs().max()) > 1e-3  # the mirrored read did change the reading
