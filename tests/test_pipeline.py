"""Pipeline, Result API, `ecgtrace digitize` batches with bad files, `ecgtrace predict` submissions."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pandas as pd
import pytest

import ecgtrace
from ecgtrace import paper
from ecgtrace.cli import main
from ecgtrace.data.render import RenderStyle, render_page
from ecgtrace.data.signals import synthesize_ecg
from ecgtrace.errors import EcgTraceError
from ecgtrace.paper import CANONICAL


@pytest.fixture(scope="module")
def page_png(tmp_path_factory):
    fs = 500.0
    signals = synthesize_ecg(np.random.default_rng(5), fs=fs)
    img, _ = render_page(signals, fs, page=CANONICAL, style=RenderStyle(), rng=np.random.default_rng(0))
    path = tmp_path_factory.mktemp("pages") / "page one.png"
    cv2.imwrite(str(path), img)
    return path


@pytest.fixture(scope="module")
def result(page_png):
    return ecgtrace.digitize(page_png, fs=500, classical=True)  # the classical path, whatever ships


def test_result_api(result, tmp_path):
    import wfdb

    df = result.signals
    assert isinstance(df, pd.DataFrame) and list(df.columns) == list(paper.LEADS)
    assert len(df) == 5000 and result.fs == 500.0
    assert df["II"].notna().all() and df["aVR"].notna().sum() == 1250
    assert np.nanmax(np.abs(df.to_numpy())) < 5.0  # mV, not pixels
    rep = result.report
    for key in ("orientation", "orientation_confidence", "grid_error_px", "lead_quality", "method", "timing_s"):
        assert key in rep, key
    assert set(rep["timing_s"]) >= {"stage0", "stage1", "stage2"}
    assert rep["method"]["stage2"] == "classical"
    json.dumps(rep)  # serialisable as is
    back = pd.read_csv(result.to_csv(tmp_path / "s.csv"))
    assert list(back.columns) == ["time_s", *paper.LEADS] and len(back) == 5000
    result.to_wfdb(tmp_path, "rec")
    rec = wfdb.rdrecord(str(tmp_path / "rec"))
    assert rec.sig_name == list(paper.LEADS) and rec.p_signal.shape == (5000, 12)
    fig = result.plot(tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 0 and len(fig.axes) == 12


def test_overlay_lands_on_the_trace(result, tmp_path):
    """Overlay points mapped back to the photo sit on dark ink (the picture is the original)."""
    img = result.overlay(tmp_path / "ov.png")
    assert img.shape == result.image.shape and (tmp_path / "ov.png").exists()
    grey = cv2.cvtColor(result.image, cv2.COLOR_BGR2GRAY)
    for key, pts in result.traces_original().items():
        xi = np.clip(np.round(pts[:, 0]).astype(int), 0, grey.shape[1] - 1)
        yi = np.clip(np.round(pts[:, 1]).astype(int), 0, grey.shape[0] - 1)
        # darkest pixel within 2 px of each point
        dark = np.min([grey[np.clip(yi + d, 0, grey.shape[0] - 1), xi] for d in range(-2, 3)], axis=0)
        assert np.mean(dark < 128) > 0.8, key


def test_digitize_accepts_arrays_and_rejects_bad_fs(page_png):
    img = cv2.imread(str(page_png))
    with pytest.raises(EcgTraceError, match="sampling rate"):
        ecgtrace.digitize(img, fs=-1)


def test_digitize_batch_skips_bad_files(page_png, tmp_path, capsys):
    bad = tmp_path / "in"
    bad.mkdir()
    (bad / "empty.png").write_bytes(b"")
    cv2.imwrite(str(bad / "small.png"), np.full((50, 50, 3), 255, np.uint8))
    (bad / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    yy, xx = np.mgrid[0:900, 0:1200]
    photo = np.stack([xx * 0.1 + 60, yy * 0.15 + 80, 120 + 40 * np.sin(xx / 90.0)], -1).astype(np.uint8)
    cv2.imwrite(str(bad / "landscape.jpg"), photo)  # a smooth non-ECG picture
    out = tmp_path / "out"
    rc = main(["digitize", str(page_png), str(bad), "--output", str(out), "--classical"])
    text = capsys.readouterr()
    assert rc == 0, text
    name = "page_one"  # file-safe (a WFDB record name cannot hold spaces)
    for suffix in (".csv", ".hea", ".dat", ".json", "_overlay.png"):
        assert (out / f"{name}{suffix}").exists(), suffix
    for f in ("empty.png", "small.png", "broken.jpg", "landscape.jpg"):
        assert f"FAILED {bad / f}" in text.out, (f, text.out)
    assert "digitized 1 of 5" in text.out
    # all bad -> non-zero exit
    assert main(["digitize", str(bad / "empty.png"), "--output", str(tmp_path / "o2"), "--classical"]) == 1


def test_predict_writes_a_valid_submission(tmp_path, capsys):
    from ecgtrace.data.dataset import write_dataset
    from ecgtrace.submission import read_submission, read_test_csv, validate_submission

    data = tmp_path / "ds"
    write_dataset(data, n=0, n_test=1, variants=("0001",), seed=3, fs=256.0, progress=False)
    sub_path = tmp_path / "sub.csv"
    rc = main(["predict", "--data", str(data), "--output", str(sub_path), "--classical"])
    assert rc == 0, capsys.readouterr()
    sub = read_submission(sub_path)
    rep = validate_submission(sub, read_test_csv(data / "test.csv"))
    assert rep.ok, rep.problems
    assert np.isfinite(sub["value"]).all() and sub["value"].abs().max() < 10
    assert main(["evaluate", "--pred", str(sub_path), "--truth", str(data), "--no-plot"]) in (0, None)
    ev = json.loads((tmp_path / "sub.eval.json").read_text())
    assert ev["score_db"] > 5.0  # a clean page, classical path


def test_a_page_with_an_unsure_lattice_is_read_on_it_when_nothing_else_reads(page_png, monkeypatch):
    """Stage 1 passes a page through when its lattice is unsure; if the page as it is gives (almost) no
    trace, stage 2 reads it on that lattice, and such a page (a grid was found) is never refused."""
    from ecgtrace.pipeline import Pipeline
    from ecgtrace.stages.base import LeadSignals
    from ecgtrace.stages.stage2 import Stage2

    pipe = Pipeline(classical=True)
    pipe.stage1.min_confidence = 1.01  # every lattice is unsure
    real, seen, blind = Stage2.__call__, [], {"calls": 1}

    def reader(self, image, fs, **kw):  # the first `blind["calls"]` reads of a picture see a blank page
        seen.append(image)
        out = real(self, image, fs, **kw)
        if len(seen) > blind["calls"]:
            return out
        return LeadSignals(signals=out.signals, fs=out.fs, traces_px={}, method=out.method,
                           quality={k: "no trace found" for k in out.quality})

    monkeypatch.setattr(Stage2, "__call__", reader)
    res = pipe(page_png, fs=500.0)
    assert len(seen) == 2 and res.rectified.ok and res.rectified.method == "classical"
    assert any("read on the unsure lattice" in w for w in res.report["warnings"])
    seen.clear()
    blind["calls"] = 2  # nothing on the lattice either: the rows' calibration pulses register the page
    res = pipe(page_png, fs=500.0)
    assert len(seen) == 3 and res.rectified.method == "pulses" and not res.rectified.ok
    assert any("calibration pulses" in w for w in res.report["warnings"])
    seen.clear()
    blind["calls"] = 3  # nothing anywhere: still not refused (a grid was found), a best estimate
    res = pipe(page_png, fs=500.0)
    assert len(seen) == 3 and not res.rectified.ok and res.rectified.method != "pulses"
    assert any("best estimate" in w for w in res.report["warnings"])
