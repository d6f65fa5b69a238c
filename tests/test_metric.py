"""The competition score: published toy values, hand-computed cases, a plain
per-lead reference implementation of the rule, and hypothesis properties."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.optimize
import scipy.signal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ecgtrace.errors import EcgTraceError
from ecgtrace.metric import (
    CEILING_DB,
    PERFECT_SNR,
    ParticipantVisibleError,
    ScoreError,
    align_segments,
    fit_length,
    max_shift_samples,
    mean_score_db,
    score,
    score_breakdown,
    snr_for_image,
    truth_from_frame,
)
from ecgtrace.paper import LEADS

# --------------------------------------------------------------------------- toy example
TOY_ORDER = ["I", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
TOY_VALUES = [0.1, 0.3, 0.4, 0.6, 0.6, 0.4, 0.2, 0.3, 0.4, 0.5, 0.2, 0.7, 0.2, 0.3, 0.4, 0.8, 0.6, 0.7,
              0.2, 0.3, -0.1, 0.5, 0.6, 0.7, 0.2, 0.9, 0.4, 0.5, 0.6, 0.7, 0.1, 0.3, 0.4,
              0.6, 0.6, 0.4, 0.2, 0.3, 0.4, 0.5, 0.2, 0.7, 0.2, 0.3, 0.4]


def toy_solution() -> pd.DataFrame:
    ids = [f"343_{r}_{lead}" for lead in TOY_ORDER for r in range(3)] + [f"343_{r}_II" for r in range(12)]
    return pd.DataFrame({"id": ids, "fs": 1, "value": TOY_VALUES})


def test_toy_reference_values():
    sol = toy_solution()
    sub = sol[["id", "value"]].copy()
    assert round(score(sol, sub, "id"), 4) == 25.8433
    sub.loc[sub["id"] == "343_0_I", "value"] = 0.9
    assert round(score(sol, sub, "id"), 4) == 13.6291
    sub.loc[sub["id"] == "343_1_III", "value"] = 0.3
    assert round(score(sol, sub, "id"), 4) == 13.0576
    # all-zero truth: signal 0 -> SNR 0 -> floor; all-zero truth and prediction: noise 0 -> ceiling
    zero = sol.assign(value=0.0)
    assert score(zero, sub, "id") == -384.0
    assert round(score(zero, zero[["id", "value"]], "id"), 4) == 25.8433


def test_toy_by_hand():
    """13.6291 by hand: lead I residual after the offset, over the whole image's signal power."""
    sig = float(np.sum(np.square(TOY_VALUES)))
    lab, pred = np.array([0.1, 0.3, 0.4]), np.array([0.9, 0.3, 0.4])
    v = np.mean(pred - lab)
    noise = float(np.sum((lab - (pred - v)) ** 2))
    assert score_breakdown(toy_solution(), toy_solution().assign(value=[0.9] + TOY_VALUES[1:])).score_db == \
        pytest.approx(10 * np.log10(sig / noise), abs=1e-9)
    assert round(10 * np.log10(sig / noise), 4) == 13.6291


# --------------------------------------------------------------------------- helpers
def make_solution(signals: list[dict[str, np.ndarray]], fs: float, names: list[str] | None = None) -> pd.DataFrame:
    rows = []
    for i, sig in enumerate(signals):
        img = names[i] if names else str(100 + i)
        for lead in LEADS:
            v = sig[lead]
            rows.append(pd.DataFrame({"id": [f"{img}_{r}_{lead}" for r in range(v.size)], "fs": fs, "value": v}))
    return pd.concat(rows, ignore_index=True)


def random_ecgish(rng: np.random.Generator, fs: float, margin: int = 0) -> dict[str, np.ndarray]:
    """Sum of random bumps per lead, zero within ``margin`` samples of each end."""
    out = {}
    for lead in LEADS:
        n = int(fs * (10 if lead == "II" else 2.5))
        t = np.arange(n)
        v = np.zeros(n)
        for _ in range(4):
            c = rng.uniform(margin + 0.1 * n, n - margin - 0.1 * n)
            w = rng.uniform(0.01, 0.04) * n
            v += rng.uniform(-1.5, 1.5) * np.exp(-0.5 * ((t - c) / w) ** 2)
        if margin:
            v[:margin] = 0
            v[n - margin:] = 0
        out[lead] = v
    return out


def reference_image_snr(truth: dict, pred: dict, fs: float) -> float:
    """The rule written plainly, one lead at a time, with scipy's correlate and minimize_scalar."""
    sig = noi = 0.0
    for lead in LEADS:
        lab, p = np.asarray(truth[lead], float), np.asarray(pred[lead], float)
        n, kmax = lab.size, int(fs * 0.2)
        corr = scipy.signal.correlate(lab - lab.mean(), p - p.mean(), mode="full", method="direct")
        lags = scipy.signal.correlation_lags(n, n, mode="full")
        ok = np.abs(lags) <= kmax
        best = corr[ok].max()
        cand = np.flatnonzero(ok & (corr >= best - 1e-9))
        k = int(lags[min(cand, key=lambda i: abs(lags[i]))])
        aligned = np.full(n, np.nan)
        if k >= 0:
            aligned[k:] = p[: n - k]
        else:
            aligned[:k] = p[-k:]
        res = scipy.optimize.minimize_scalar(lambda v: np.nansum((lab - (aligned - v)) ** 2), method="brent")
        aligned = aligned - res.x
        aligned[~np.isfinite(aligned)] = 0
        sig += np.sum(lab ** 2)
        noi += np.sum((lab - aligned) ** 2)
    if noi == 0:
        return PERFECT_SNR
    return 0.0 if sig == 0 else min(sig / noi, PERFECT_SNR)


def frames(truths, preds, fs):
    sol = make_solution(truths, fs)
    sub = make_solution(preds, fs)[["id", "value"]]
    return sol, sub


# --------------------------------------------------------------------------- hand-computed cases
def test_identical_is_ceiling():
    rng = np.random.default_rng(0)
    t = [random_ecgish(rng, 50)]
    assert score(*frames(t, t, 50), "id") == pytest.approx(CEILING_DB)
    assert round(CEILING_DB, 4) == 25.8433


def test_pure_shift_within_window_is_ceiling_beyond_is_lower():
    fs, margin = 100, 40
    rng = np.random.default_rng(1)
    t = random_ecgish(rng, fs, margin=margin)
    kmax = max_shift_samples(fs)  # 20
    for d in (-kmax, -7, 3, kmax):
        p = {lead: np.roll(v, d) for lead, v in t.items()}
        assert score(*frames([t], [p], fs), "id") == pytest.approx(CEILING_DB, abs=1e-9), d
    p = {lead: np.roll(v, kmax + 8) for lead, v in t.items()}
    assert score(*frames([t], [p], fs), "id") < CEILING_DB - 3


def test_constant_offset_is_ceiling():
    rng = np.random.default_rng(2)
    t = random_ecgish(rng, 50)
    p = {lead: v + (0.7 if i % 2 else -2.5) for i, (lead, v) in enumerate(t.items())}
    assert score(*frames([t], [p], 50), "id") == pytest.approx(CEILING_DB)


def test_all_zero_prediction_is_signal_over_variance():
    """A constant prediction: shift 0 (every lag ties at 0), offset = -mean, so noise = power around the mean."""
    rng = np.random.default_rng(3)
    t = random_ecgish(rng, 50)
    t = {k: v + 0.3 for k, v in t.items()}  # non-zero means make the point
    sig = sum(np.sum(v ** 2) for v in t.values())
    noise = sum(np.sum((v - v.mean()) ** 2) for v in t.values())
    expected = 10 * np.log10(min(sig / noise, 384))
    for const in (0.0, 0.3, -1.7):  # 0.3 - mean(0.3, ...) is 5.6e-17, not 0: still a tie at every lag
        p = {k: np.full_like(v, const) for k, v in t.items()}
        got = score_breakdown(*frames([t], [p], 50))
        assert got.score_db == pytest.approx(expected, abs=1e-9)
        assert (got.per_lead["shift"] == 0).all()
        assert got.score_db > -384  # not zero: the offset absorbs the mean


def test_nan_padding_costs_label_power():
    """Shift forced to +2: the two padded samples become 0 after the offset, costing label^2 there."""
    lab = np.array([0.5, 0.0, 1.0, 2.0, 1.0, 0.0, 0.0, 0.0])
    pred = np.array([1.0, 2.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]) + 3.0  # shifted by 2, offset 3
    res = align_segments(lab, pred, np.array([0]), np.array([8]), np.array([3]))
    assert res.shift[0] == 2
    aligned = np.r_[np.nan, np.nan, pred[:6]]
    v = np.nanmean(aligned - lab)
    assert res.offset[0] == pytest.approx(v)
    assert res.noise[0] == pytest.approx(0.5 ** 2 + np.nansum((lab - (aligned - v))[2:] ** 2))


def test_tie_between_plus_and_minus_k_goes_to_minus_k():
    # correlations at lags -1, 0, +1 are -0.2, -1.0, -0.2 (exactly, in real arithmetic)
    lab = np.array([0, 0, 0, 0, 1.0])
    pred = np.array([0, 2, 2, 1, 0.0])
    res = align_segments(lab, pred, np.array([0]), np.array([5]), np.array([1]))
    assert res.shift[0] == -1


def test_offset_matches_minimize_scalar():
    rng = np.random.default_rng(4)
    for _ in range(5):
        lab = rng.normal(size=60)
        pred = np.roll(lab, 3) + rng.normal(0.4, 0.3, size=60)
        res = align_segments(lab, pred, np.array([0]), np.array([60]), np.array([10]))
        k = int(res.shift[0])
        aligned = np.full(60, np.nan)
        aligned[k:] = pred[: 60 - k] if k >= 0 else np.nan
        if k < 0:
            aligned[:k] = pred[-k:]
        brent = scipy.optimize.minimize_scalar(lambda v: np.nansum((lab - (aligned - v)) ** 2), method="brent").x
        assert res.offset[0] == pytest.approx(brent, rel=1e-6, abs=1e-8)


@pytest.mark.parametrize("fs", [25, 100])  # 25: direct lags (kmax 5); 100: FFT (kmax 20)
def test_matches_plain_reference_implementation(fs):
    rng = np.random.default_rng(fs)
    truths, preds = [], []
    for i in range(4):
        t = random_ecgish(rng, fs)
        shifts = rng.integers(-int(fs * 0.3), int(fs * 0.3), size=12)
        p = {lead: np.roll(v, s) * rng.uniform(0.7, 1.2) + rng.normal(0, 0.05 * (i + 1), v.size) + rng.normal()
             for (lead, v), s in zip(t.items(), shifts)}
        truths.append(t)
        preds.append(p)
    expected = 10 * np.log10(np.mean([reference_image_snr(t, p, fs) for t, p in zip(truths, preds)]))
    sol, sub = frames(truths, preds, fs)
    assert score(sol, sub, "id") == pytest.approx(expected, abs=1e-7)
    # row order of the submission, or of the solution, does not matter
    assert score(sol, sub.sample(frac=1.0, random_state=0), "id") == pytest.approx(expected, abs=1e-7)
    assert score(sol.sample(frac=1.0, random_state=1), sub, "id") == pytest.approx(expected, abs=1e-7)
    shuffled = sol.sample(frac=1.0, random_state=2)
    assert score(shuffled, shuffled[["id", "value"]], "id") == pytest.approx(CEILING_DB)
    # the dict helper gives the same image SNRs
    assert mean_score_db([snr_for_image(t, p, fs) for t, p in zip(truths, preds)]) == pytest.approx(expected, abs=1e-7)


# --------------------------------------------------------------------------- properties
bump_params = st.lists(
    st.tuples(st.floats(0.2, 0.8), st.floats(0.01, 0.05), st.floats(0.3, 2.0) | st.floats(-2.0, -0.3)),
    min_size=1, max_size=4,
)


def bumps_signal(params, n: int, margin: int) -> np.ndarray:
    t = np.arange(n)
    v = np.zeros(n)
    for c, w, a in params:
        v += a * np.exp(-0.5 * ((t - (margin + c * (n - 2 * margin))) / (w * n)) ** 2)
    v[:margin] = 0
    v[n - margin:] = 0
    return v


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(params=bump_params, d=st.integers(-10, 10), offset=st.floats(-5, 5))
def test_property_shift_and_offset_invariance(params, d, offset):
    fs, n, margin = 50, 125, 14  # kmax = 10 samples
    lab = bumps_signal(params, n, margin)
    pred = np.roll(lab, d) + offset
    res = align_segments(lab, pred, np.array([0]), np.array([n]), np.array([max_shift_samples(fs)]))
    assert res.shift[0] == -d  # pred[n] = lab[n - d], so aligned[n] = pred[n + d] = lab[n]
    assert res.offset[0] == pytest.approx(offset, abs=1e-9)
    assert res.signal[0] / max(res.noise[0], 1e-300) >= PERFECT_SNR


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), noise=st.floats(0.0, 3.0), n_img=st.integers(1, 3))
def test_property_cap_and_bounds(seed, noise, n_img):
    rng = np.random.default_rng(seed)
    truths = [random_ecgish(rng, 10) for _ in range(n_img)]
    preds = [{k: v + rng.normal(0, noise, v.size) for k, v in t.items()} for t in truths]
    b = score_breakdown(*frames(truths, preds, 10))
    assert (b.per_image["snr"] <= PERFECT_SNR).all() and (b.per_image["snr"] >= 0).all()
    assert b.score_db <= CEILING_DB + 1e-12
    if noise < 1e-4:  # tiny noise -> capped, exactly the ceiling
        assert b.score_db == pytest.approx(CEILING_DB)


# --------------------------------------------------------------------------- bad input
def test_errors_are_clear():
    sol = toy_solution()
    sub = sol[["id", "value"]].copy()
    assert issubclass(ParticipantVisibleError, EcgTraceError)
    with pytest.raises(ScoreError, match="1 missing ids .*343_2_V6"):
        score(sol, sub[sub["id"] != "343_2_V6"], "id")
    with pytest.raises(ScoreError, match="not in the solution .*343_3_I"):
        score(sol, pd.concat([sub, pd.DataFrame({"id": ["343_3_I"], "value": [0.0]})]), "id")
    with pytest.raises(ScoreError, match="not in the solution .*343_-1_II"):
        score(sol, sub.replace({"343_1_aVR": "343_-1_II"}), "id")
    with pytest.raises(ScoreError, match="not in the solution .*999_0_I"):
        score(sol, pd.concat([sub, pd.DataFrame({"id": ["999_0_I"], "value": [0.0]})]), "id")
    with pytest.raises(ScoreError, match="duplicate ids .*343_0_I"):
        score(sol, pd.concat([sub, sub.iloc[:1]]), "id")
    with pytest.raises(ScoreError, match="non-numeric"):
        score(sol, sub.assign(value=["x"] + TOY_VALUES[1:]), "id")
    with pytest.raises(ScoreError, match="NaN/inf"):
        score(sol, sub.assign(value=[np.nan] + TOY_VALUES[1:]), "id")
    with pytest.raises(ScoreError, match="NaN/inf"):
        score(sol, sub.assign(value=[np.inf] + TOY_VALUES[1:]), "id")
    with pytest.raises(ScoreError, match="unknown lead"):
        score(sol, sub.assign(id=sub["id"].str.replace("_V6", "_V7")), "id")
    with pytest.raises(ScoreError, match="not of the form"):
        score(sol, sub.assign(id=sub["id"].str.replace("343_", "343-")), "id")
    with pytest.raises(ScoreError, match="'row_id' column not found"):
        score(sol, sub, "row_id")
    with pytest.raises(ScoreError, match="lead II must hold 10 s"):
        score(sol.assign(fs=2), sub, "id")
    with pytest.raises(ScoreError, match="missing V6"):
        s2 = sol[~sol["id"].str.endswith("_V6")]
        score(s2, s2[["id", "value"]], "id")


def test_image_ids_with_underscores_and_breakdown_tables():
    rng = np.random.default_rng(5)
    t = [random_ecgish(rng, 10), random_ecgish(rng, 10)]
    p = [{k: v * 0.9 for k, v in x.items()} for x in t]
    sol = make_solution(t, 10, names=["rec_1-0003", "rec_2-0001"])
    sub = make_solution(p, 10, names=["rec_1-0003", "rec_2-0001"])[["id", "value"]]
    b = score_breakdown(sol, sub)
    assert set(b.per_image["image_id"]) == {"rec_1-0003", "rec_2-0001"}
    assert len(b.per_lead) == 24
    # scaling by 0.9: the offset takes -0.1*mean, so noise = 0.01 * (power around the mean), exactly
    lin = [sum(np.sum(v ** 2) for v in x.values()) / (0.01 * sum(np.sum((v - v.mean()) ** 2) for v in x.values()))
           for x in t]
    assert b.score_db == pytest.approx(10 * np.log10(np.mean(lin)), abs=1e-9)
    table = b.lead_table()
    assert list(table.index) == list(LEADS)
    for lead in LEADS:
        per = [np.sum(x[lead] ** 2) / (0.01 * np.sum((x[lead] - x[lead].mean()) ** 2)) for x in t]
        assert table.loc[lead, "snr_db"] == pytest.approx(10 * np.log10(np.mean(per)), abs=1e-9)


# --------------------------------------------------------------------------- dict helpers
def test_snr_for_image_helpers():
    rng = np.random.default_rng(6)
    fs = 20
    t = random_ecgish(rng, fs)
    # competition-style frame: NaN outside each lead's window
    frame = pd.DataFrame({lead: np.full(fs * 10, np.nan) for lead in LEADS})
    for i, lead in enumerate(LEADS):
        if lead == "II":
            frame[lead] = t[lead]
        else:
            start = (i % 4) * fs * 5 // 2
            frame.loc[start:start + t[lead].size - 1, lead] = t[lead]
    truth = truth_from_frame(frame)
    assert all(np.array_equal(truth[k], t[k]) for k in LEADS)
    perfect = snr_for_image(frame.to_dict("series"), frame.to_dict("series"), fs)  # full-length columns with NaN
    assert perfect.snr == PERFECT_SNR and perfect.db == pytest.approx(CEILING_DB)
    pred = dict(t)
    del pred["V6"]
    s = snr_for_image(truth, pred, fs)
    assert s.missing == ["V6"] and s.snr < PERFECT_SNR
    assert s.lead_db["I"] == pytest.approx(CEILING_DB)
    # a prediction one sample short is padded (warning), a half-rate one resampled
    short = {k: v[:-1] for k, v in t.items()}
    assert snr_for_image(truth, short, fs).db > 15
    assert fit_length(np.arange(10.0), 20).size == 20
    assert np.array_equal(fit_length(np.array([1.0, np.nan, 3.0]), 3), [1.0, 2.0, 3.0])


def test_arrow_backed_chunked_ids():
    """Arrow-backed id columns made of several chunks (as parquet reads them) score the same."""
    import pyarrow as pa

    sol = toy_solution()
    ids = pa.chunked_array([pa.array(sol["id"][:20].tolist()), pa.array(sol["id"][20:].tolist())])
    sub = pd.DataFrame({"id": pd.Series(ids, dtype=pd.ArrowDtype(pa.string())), "value": sol["value"]})
    sub.loc[0, "value"] = 0.9
    assert round(score(sol, sub, "id"), 4) == 13.6291
    assert round(score(sub.assign(fs=1), sub, "id"), 4) == 25.8433


def test_rows_with_gaps_are_ordered_like_the_rule():
    """The rule only sorts rows; a lead numbered 0, 1, 5 is three samples in that order."""
    sol = toy_solution()
    sol["id"] = sol["id"].replace({"343_2_I": "343_5_I"})
    sub = sol[["id", "value"]].iloc[::-1].copy()
    sub.loc[sub["id"] == "343_0_I", "value"] = 0.9
    assert round(score(sol, sub, "id"), 4) == 13.6291
    with pytest.raises(ScoreError, match="missing ids .*343_5_I.*not in the solution .*343_2_I"):
        score(sol, sub.replace({"343_5_I": "343_2_I"}), "id")
    with pytest.raises(ScoreError, match="solution has 1 duplicate ids .*343_1_I"):
        dup = sol.replace({"343_5_I": "343_1_I"})
        score(dup, sub, "id")
