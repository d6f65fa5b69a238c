"""Synthetic signals, resampling and WFDB reading (ecgtrace.data.signals)."""

from __future__ import annotations

import numpy as np
import pytest

from ecgtrace.data.signals import FS_CHOICES, load_wfdb_folder, n_samples, resample, synthesize_ecg
from ecgtrace.errors import EcgTraceError
from ecgtrace.paper import LEADS, csv_rows, window_indices


@pytest.mark.parametrize("fs", FS_CHOICES)
def test_synth_shape_and_einthoven(fs):
    s = synthesize_ecg(np.random.default_rng(fs), fs=fs)
    assert list(s) == list(LEADS)
    n = n_samples(fs)
    assert all(len(v) == n and np.isfinite(v).all() for v in s.values())
    i, ii = s["I"], s["II"]
    np.testing.assert_allclose(s["III"], ii - i, atol=1e-12)
    np.testing.assert_allclose(s["aVR"], -(i + ii) / 2, atol=1e-12)
    np.testing.assert_allclose(s["aVL"], i - ii / 2, atol=1e-12)
    np.testing.assert_allclose(s["aVF"], ii - i / 2, atol=1e-12)


def test_synth_is_deterministic_and_varied():
    a = synthesize_ecg(7, fs=500)
    b = synthesize_ecg(7, fs=500)
    c = synthesize_ecg(8, fs=500)
    assert all(np.array_equal(a[k], b[k]) for k in LEADS)
    assert not np.allclose(a["II"], c["II"])


def test_synth_morphology_is_plausible():
    """Over many records: II mostly upright with mV-sized QRS, aVR mostly inverted, V1 mostly negative QRS."""
    up_ii = inv_avr = neg_v1 = 0
    for seed in range(30):
        s = synthesize_ecg(seed, fs=250)
        ptp = np.ptp(s["II"])
        assert 0.2 < ptp < 6.0
        up_ii += s["II"].max() > -s["II"].min()
        inv_avr += -s["aVR"].min() > s["aVR"].max()
        neg_v1 += -s["V1"].min() > s["V1"].max()
    assert up_ii >= 22 and inv_avr >= 22 and neg_v1 >= 18


def test_heart_rate_is_honoured():
    s = synthesize_ecg(3, fs=500, hr=60.0)
    ii = s["II"] - np.median(s["II"])
    peaks = np.flatnonzero((ii[1:-1] > ii[:-2]) & (ii[1:-1] >= ii[2:]) & (ii[1:-1] > 0.5 * ii.max()))
    assert 8 <= len(peaks) <= 12  # 10 beats in 10 s, give or take an ectopic beat


def test_windows_partition_the_record():
    for fs in FS_CHOICES:
        n = n_samples(fs)
        spans = [window_indices(lead, fs, n) for lead in ("I", "aVR", "V1", "V4")]
        assert spans[0][0] == 0 and spans[-1][1] == n
        assert all(spans[k][1] == spans[k + 1][0] for k in range(3))
        assert csv_rows("II", fs, n) == (0, n)
        assert window_indices("II", fs, n) == spans[0]
    assert window_indices("V1", 500, 5000) == (2500, 3750)


def test_resample_band_limited():
    fs_in, fs_out = 500, 1025
    t = np.arange(5000) / fs_in
    x = np.sin(2 * np.pi * 7 * t)
    y = resample(x, fs_in, fs_out)
    assert len(y) == 10250
    t2 = np.arange(10250) / fs_out
    err = y[200:-200] - np.sin(2 * np.pi * 7 * t2[200:-200])
    assert np.abs(err).max() < 1e-3
    # a tone above the new Nyquist is removed, not aliased
    z = resample(np.sin(2 * np.pi * 200 * t), fs_in, 250)
    assert np.abs(z[100:-100]).max() < 0.05


def _write_record(folder, name, fs=500, n=5000, names=None, seed=0):
    wfdb = pytest.importorskip("wfdb")
    s = synthesize_ecg(seed, fs=fs)
    names = names or [lead.upper() if lead.startswith("aV") else lead for lead in LEADS]  # PTB-XL spells AVR
    sig = np.stack([s[lead][:n] for lead in LEADS], axis=1)
    wfdb.wrsamp(name, fs=fs, units=["mV"] * 12, sig_name=names, p_signal=sig, fmt=["16"] * 12,
                adc_gain=[1000.0] * 12, baseline=[0] * 12, write_dir=str(folder))
    return s


def test_wfdb_folder_reads_and_skips_broken(tmp_path):
    s = _write_record(tmp_path, "rec1", fs=500)
    (tmp_path / "broken.hea").write_text("this is not a header\n")
    recs = load_wfdb_folder(tmp_path)
    assert [r.name for r in recs] == ["rec1"]
    r = recs[0]
    assert r.fs == 500 and list(r.signals) == list(LEADS)
    np.testing.assert_allclose(r.signals["aVR"], s["aVR"], atol=1e-3)
    out = r.to_fs(250)
    assert all(len(v) == 2500 for v in out.values())


def test_wfdb_errors(tmp_path):
    with pytest.raises(EcgTraceError, match="does not exist"):
        load_wfdb_folder(tmp_path / "nope")
    with pytest.raises(EcgTraceError, match="no WFDB records"):
        load_wfdb_folder(tmp_path)
    (tmp_path / "bad.hea").write_text("garbage\n")
    (tmp_path / "bad2.hea").write_text("bad2 12 500 5000\n")  # header promises a .dat that is not there
    with pytest.raises(EcgTraceError, match="none of the 2") as e:
        load_wfdb_folder(tmp_path)
    assert "\n" not in str(e.value)


def test_neurokit2_option_is_einthoven_consistent():
    pytest.importorskip("neurokit2")
    s = synthesize_ecg(np.random.default_rng(0), fs=250, method="neurokit2")
    assert all(len(v) == 2500 and np.isfinite(v).all() for v in s.values())
    np.testing.assert_allclose(s["aVF"], s["II"] - s["I"] / 2, atol=1e-12)
    with pytest.raises(EcgTraceError, match="unknown synthesis method"):
        synthesize_ecg(0, method="magic")
