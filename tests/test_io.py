"""io: picture reading errors, CSV/WFDB/JSON writers, mapping rectified points back to the photo."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pandas as pd
import pytest

from ecgtrace import geometry, io, paper
from ecgtrace.errors import EcgTraceError
from ecgtrace.pipeline import signals_frame


def test_read_image_errors(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(EcgTraceError, match="empty file"):
        io.read_image(empty)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"this is not a picture at all" * 10)
    with pytest.raises(EcgTraceError, match="not a readable image"):
        io.read_image(junk)
    tiny = tmp_path / "tiny.png"
    cv2.imwrite(str(tiny), np.full((50, 50, 3), 255, np.uint8))
    with pytest.raises(EcgTraceError, match="50x50"):
        io.read_image(tiny)
    with pytest.raises(EcgTraceError, match="not found"):
        io.read_image(tmp_path / "missing.png")
    with pytest.raises(EcgTraceError, match="folder"):
        io.read_image(tmp_path)


def test_huge_image_is_refused_from_its_header(tmp_path, monkeypatch):
    """The size check reads the header only, before decoding (a 1-bit PNG keeps the test file tiny)."""
    from PIL import Image

    big = tmp_path / "big.png"
    Image.new("1", (12000, 9000), 1).save(big)
    monkeypatch.setattr(io, "MAX_PIXELS", 50_000_000)
    with pytest.raises(EcgTraceError, match="MP"):
        io.read_image(big)


def test_check_image_converts_grey_and_alpha():
    grey = np.full((300, 400), 200, np.uint8)
    assert io.check_image(grey).shape == (300, 400, 3)
    bgra = np.full((300, 400, 4), 200, np.uint8)
    assert io.check_image(bgra).shape == (300, 400, 3)
    f = np.full((300, 400, 3), 0.5, np.float32)
    assert io.check_image(f).dtype == np.uint8


def _frame(fs: float = 250.0) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    leads = {}
    for lead in paper.LEADS:
        i0, i1 = io_lead_range(lead, fs)
        leads[lead] = rng.normal(scale=0.5, size=i1 - i0)
    return signals_frame(leads, fs)


def io_lead_range(lead: str, fs: float) -> tuple[int, int]:
    from ecgtrace.stages.trace_classical import lead_indices

    return lead_indices(lead, fs)


def test_signals_frame_is_competition_style():
    df = _frame(250.0)
    assert list(df.columns) == list(paper.LEADS)
    assert len(df) == 2500 and df.index.name == "time_s"
    assert df["II"].notna().all()
    assert df["I"].iloc[:625].notna().all() and df["I"].iloc[625:].isna().all()
    assert df["V6"].iloc[:1875].isna().all() and df["V6"].iloc[1875:].notna().all()


def test_csv_and_wfdb_round_trip(tmp_path):
    import wfdb

    df = _frame(500.0)
    p = io.write_signals_csv(df, tmp_path / "a.csv")
    back = pd.read_csv(p)
    assert list(back.columns) == ["time_s", *paper.LEADS]
    np.testing.assert_allclose(back["II"].to_numpy(), df["II"].to_numpy(), atol=1e-5)
    assert back["V1"].isna().sum() == df["V1"].isna().sum()
    io.write_wfdb(df, 500.0, tmp_path / "rec", "my record")
    rec = wfdb.rdrecord(str(tmp_path / "rec" / "my_record"))
    assert rec.fs == 500 and rec.sig_name == list(paper.LEADS) and rec.units == ["mV"] * 12
    got = rec.p_signal
    assert np.array_equal(np.isnan(got), df.isna().to_numpy())  # outside each window -> NaN
    np.testing.assert_allclose(got[~np.isnan(got)], df.to_numpy()[~np.isnan(got)], atol=1e-3)
    assert not list((tmp_path / "rec").glob(".wfdb*"))  # temp folder cleaned up
    j = io.write_json({"a": np.float32(1.5), "b": np.arange(3)}, tmp_path / "r.json")
    assert json.loads(j.read_text()) == {"a": 1.5, "b": [0, 1, 2]}


def test_signals_csv_is_what_pandas_writes_byte_for_byte(tmp_path):
    """The column-wise CSV writer gives pandas' to_csv text (float_format %.6g, empty cells for NaN) for signal
    tables, edge values included; other tables (a float32 column, a name to quote, duplicates) go to pandas."""
    rng = np.random.default_rng(4)
    n = 600
    data = rng.normal(size=(n, 12)) * np.array([1e-9, 1e-3, 1, 1e5, 1e12, 1, 1, 1, 1, 1, 1, 1])
    data[rng.random((n, 12)) < 0.5] = np.nan
    data[:6, :6] = np.diag([-0.0, np.inf, -np.inf, 1e-320, 123456789.0, 0.1 + 0.2])
    frames = [pd.DataFrame(data, index=np.arange(n) / 257.5, columns=list(paper.LEADS)), _frame(500.0)]
    odd = frames[0].copy()
    frames += [odd.astype({"I": "float32"}), odd.rename(columns={"V6": "V,6"}), odd.set_axis(["I"] * 12, axis=1)]

    def by_pandas(df: pd.DataFrame) -> str:
        out = df.copy()
        out.insert(0, "time_s", np.round(df.index.to_numpy(dtype=np.float64), 9))
        return out.to_csv(index=False, float_format="%.6g")

    for k, df in enumerate(frames):
        assert io.signals_csv_text(df) == by_pandas(df), k
    assert io.write_signals_csv(frames[1], tmp_path / "a.csv").read_text() == by_pandas(frames[1])


def test_wfdb_files_are_what_wfdb_writes_byte_for_byte(tmp_path):
    """Our WFDB writer against wfdb.wrsamp with the same fields: header and samples identical, for missing samples,
    values at the clip, -0, half-unit values and sampling rates that are and are not whole numbers."""
    import wfdb

    rng = np.random.default_rng(6)
    for trial, fs in enumerate((500.0, 250.0, 257.5, 1000.0 / 3, 499.99999999)):
        n = int(rng.integers(4, 1500))
        sig = np.clip(rng.normal(size=(n, 12)) * rng.choice([0.001, 1.0, 40.0], size=12), -32.0, 32.0)
        sig[rng.random((n, 12)) < 0.5] = np.nan
        sig[:4, :4] = np.diag([-0.0, 0.0005, -0.0005, 32.0])
        wfdb.wrsamp("rec", fs=fs, units=["mV"] * 12, sig_name=list(paper.LEADS), p_signal=sig.copy(), fmt=["16"] * 12,
                    adc_gain=[1000.0] * 12, baseline=[0] * 12, comments=["one", "two words"], write_dir=str(tmp_path))
        header, samples = io.wfdb_record_bytes(sig, fs, "rec", list(paper.LEADS), ["one", "two words"])
        assert header == (tmp_path / "rec.hea").read_text(), trial
        assert samples == (tmp_path / "rec.dat").read_bytes(), trial


def test_points_map_back_through_a_known_homography():
    """rectified px -> stage-1 map -> inverse stage-0 homography == the original point."""
    rng = np.random.default_rng(1)
    H = np.array([[0.9, 0.05, 30.0], [-0.04, 1.1, -12.0], [1e-5, -2e-5, 1.0]])  # original -> normalized
    h, w = 170, 220
    # stage-1 map: rectified pixel (x, y) sits at (x + 3 + 0.01 y, y - 2) of the normalized page
    xx, yy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    map_xy = np.stack([xx + 3 + 0.01 * yy, yy - 2], axis=-1)
    orig = rng.uniform([20, 20], [180, 140], size=(50, 2))
    norm = geometry.apply_homography(H, orig)
    # the rectified point whose map value is `norm`: invert the simple map analytically
    rect = np.stack([norm[:, 0] - 3 - 0.01 * (norm[:, 1] + 2), norm[:, 1] + 2], axis=1)
    back = geometry.rectified_to_original(rect, map_xy, H)
    np.testing.assert_allclose(back, orig, atol=1e-3)


def test_draw_overlay_marks_the_trace():
    img = np.full((300, 400, 3), 255, np.uint8)
    pts = np.stack([np.linspace(10, 390, 50), np.full(50, 150.0)], axis=1)
    out = io.draw_overlay(img, {"row0": pts}, {"I": (np.array([20.0, 40.0]), "row0")})
    assert (out[150, 200] != 255).any() and (img == 255).all()


def test_blank_check_std_is_numpys():
    """check_image's fast spread (OpenCV's per-channel moments) equals ``img.std()`` over all channels."""
    import numpy as np

    from ecgtrace.io import _std

    rng = np.random.default_rng(4)
    tinted = np.dstack([np.full((40, 50), v, np.uint8) for v in (10, 200, 90)])  # flat channels, different levels
    for img in (rng.integers(0, 256, (30, 70, 3), dtype=np.uint8), tinted, np.full((20, 20, 3), 7, np.uint8)):
        assert abs(_std(img) - float(img.std())) < 1e-6
