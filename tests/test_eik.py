"""ECG-Image-Kit output layout: the reader (data/eik.py) and ``ecgtrace evaluate --data`` on a tiny folder.

The folder is written here the way the generator writes it: ``R.hea/.dat`` (12 leads, NaN where a
lead is not plotted), ``R-0.png`` (drawn by our own renderer from the same signals, so the truth
matches the picture) and ``R-0.json`` with the generator's keys (``plotted_pixels`` as [row, col]).
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from ecgtrace.cli import main
from ecgtrace.data.eik import find_eik_pages, find_pages, is_eik_folder, normalize_lead, traces_from_meta
from ecgtrace.data.render import RenderStyle, render_page
from ecgtrace.data.signals import synthesize_ecg
from ecgtrace.errors import EcgTraceError
from ecgtrace.paper import CANONICAL, LAYOUT_3X4, LEADS, RHYTHM_KEY, csv_rows, window_indices

FS = 500


def write_record(folder, name, signals, fs, names=LEADS):
    """A WFDB record of the plotted samples only: lead II full, the others their 2.5 s window."""
    import wfdb

    n = len(signals["II"])
    sig = np.full((n, 12), np.nan)
    for j, lead in enumerate(LEADS):
        i0, i1 = csv_rows(lead, fs, n)
        sig[i0:i1, j] = signals[lead][i0:i1]
    wfdb.wrsamp(name, fs=fs, units=["mV"] * 12, sig_name=list(names), p_signal=sig, fmt=["16"] * 12,
                adc_gain=[1000.0] * 12, baseline=[0] * 12, write_dir=str(folder))


def page_json(gt, fs, n, **flags):
    """The generator's page description for a page our renderer drew (ground-truth traces as plotted_pixels)."""
    leads = []
    for key in [lead for row in LAYOUT_3X4 for lead in row] + [RHYTHM_KEY]:
        lead = "II" if key == RHYTHM_KEY else key
        i0, i1 = window_indices(key, fs, n)
        xy = gt.traces[key]
        leads.append({"lead_name": lead, "start_sample": int(i0), "end_sample": int(i1),
                      "plotted_pixels": [[round(float(y), 2), round(float(x), 2)] for x, y in xy],
                      "lead_bounding_box": {"0": [0, 0], "1": [0, 1], "2": [1, 1], "3": [1, 0]}})
    h, w = gt.image_size
    meta = {"sampling_frequency": float(fs), "width": int(w), "height": int(h), "x_grid": 39.37, "y_grid": 39.37,
            "resolution": 200, "pad_inches": 0, "crop": 0, "rotate": 0, "leads": leads}
    meta.update(flags)
    return meta


@pytest.fixture(scope="module")
def eik_folder(tmp_path_factory):
    """clean/dev00.{hea,dat}, dev00-0.png + dev00-0.json, and dev00-1.png without a JSON (same record)."""
    root = tmp_path_factory.mktemp("eik")
    clean = root / "clean"
    clean.mkdir()
    signals = synthesize_ecg(np.random.default_rng(11), fs=FS)
    img, gt = render_page(signals, FS, page=CANONICAL, style=RenderStyle(), rng=np.random.default_rng(1))
    write_record(clean, "dev00", signals, FS)
    cv2.imwrite(str(clean / "dev00-0.png"), img)
    cv2.imwrite(str(clean / "dev00-1.png"), img)
    (clean / "dev00-0.json").write_text(json.dumps(page_json(gt, FS, len(signals["II"]))))
    return root, signals, gt


def test_reader_finds_pages_truth_and_pixels(eik_folder):
    root, signals, gt = eik_folder
    assert is_eik_folder(root) and is_eik_folder(root / "clean")
    pages = find_eik_pages(root)
    assert [p.image_id for p in pages] == ["dev00-0", "dev00-1"]  # several images of one record: all pages
    p0, p1 = pages
    assert p0.subset == "clean" and p0.fs == FS and p0.page_fs == FS and p0.n_samples == 10 * FS
    assert list(p0.truth) == list(LEADS)
    assert np.isfinite(p0.truth["II"]).all()
    for lead in LEADS:
        fin = np.isfinite(p0.truth[lead])
        i0, i1 = csv_rows(lead, FS, 10 * FS)
        assert fin.sum() == (10 * FS if lead == "II" else FS * 5 // 2) and fin[i0:i1].all(), lead
        np.testing.assert_allclose(p0.truth[lead][i0:i1], signals[lead][i0:i1], atol=6e-4)  # 1 uV steps
    # trace pixels: [row, col] in the JSON -> x, y here; the rhythm strip under its own key
    assert set(p0.traces_px) == set(LEADS) | {RHYTHM_KEY}
    np.testing.assert_allclose(p0.traces_px["V4"], gt.traces["V4"], atol=0.01)
    np.testing.assert_allclose(p0.traces_px[RHYTHM_KEY], gt.traces[RHYTHM_KEY], atol=0.01)
    assert p0.trace_samples[RHYTHM_KEY] == (0, 10 * FS) and p0.traces_note == ""
    assert p1.meta is None and p1.traces_px is None and "no page JSON" in p1.traces_note


def test_untrustworthy_pixels_are_dropped_with_the_reason(eik_folder):
    _, signals, gt = eik_folder
    meta = page_json(gt, FS, len(signals["II"]))
    size = (gt.image_size[1], gt.image_size[0])
    assert traces_from_meta(meta, size)[0] is not None
    for flags, word in (({"pad_inches": 1}, "padding"), ({"crop": 0.01}, "crop"), ({}, "JSON says")):
        m = {**meta, **flags}
        traces, note, _ = traces_from_meta(m, size if flags else (size[0] + 10, size[1]))
        assert traces is None and word in note, note
    no_bbox = {**meta, "rotate": 5, "leads": [{k: v for k, v in e.items() if k != "lead_bounding_box"}
                                              for e in meta["leads"]]}
    assert "rotat" in traces_from_meta(no_bbox, size)[1]
    assert normalize_lead(" AVR ") == "aVR" and normalize_lead("v6") == "V6" and normalize_lead("X") is None


def test_evaluate_data_scores_the_clean_page(eik_folder, tmp_path, capsys):
    root, _, _ = eik_folder
    rc = main(["evaluate", "--data", str(root), "--out", str(tmp_path), "--classical"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "clean" in out and "overall" in out and "per-lead median" in out
    rep = json.loads((tmp_path / f"evaluate_{root.name}.json").read_text())
    assert rep["n_pages"] == 2 and rep["overall"]["refused"] == 0 and rep["overall"]["crashed"] == 0
    rows = {r["image_id"]: r for r in rep["pages"]}
    assert rows["dev00-1"]["has_json"] is False and rows["dev00-1"]["status"] == "ok"  # no JSON: still scored
    assert rows["dev00-0"]["stage0_ok"] is not None and rows["dev00-0"]["seconds"] > 0
    assert rep["per_subset"]["clean"]["score_db"] >= 15.0, rep["per_subset"]["clean"]
    assert set(rep["overall"]["lead_median_db"]) == set(LEADS)


def test_refused_page_scores_as_zeros_and_the_run_goes_on(tmp_path, capsys):
    """A blank page: the pipeline refuses it; it is counted and scored as all-zero predictions."""
    from ecgtrace.commands.evaluate import evaluate_data

    signals = synthesize_ecg(np.random.default_rng(2), fs=250)
    write_record(tmp_path, "r1", signals, 250, names=[x.upper() for x in LEADS])  # "AVR" etc. are normalised
    cv2.imwrite(str(tmp_path / "r1-0.png"), np.full((850, 1100, 3), 255, np.uint8))
    rep = evaluate_data(tmp_path, progress=False, classical=True)
    row = rep["pages"][0]
    assert row["status"] in ("refused", "crashed") and row["message"]
    assert rep["overall"]["refused"] + rep["overall"]["crashed"] == 1
    assert rep["overall"]["score_db"] < 3.0 and rep["overall"]["n_handled"] == 0


def test_corrupt_dat_names_the_file(tmp_path, capsys):
    signals = synthesize_ecg(np.random.default_rng(3), fs=250)
    write_record(tmp_path, "r2", signals, 250)
    cv2.imwrite(str(tmp_path / "r2-0.png"), np.full((300, 400, 3), 255, np.uint8))
    dat = tmp_path / "r2.dat"
    dat.write_bytes(dat.read_bytes()[:1000])
    with pytest.raises(EcgTraceError, match="r2.dat is truncated"):
        find_eik_pages(tmp_path)
    rc = main(["evaluate", "--data", str(tmp_path), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "r2.dat" in err and len(err.strip().splitlines()) == 1, err
    # same size, bytes changed: the checksum says so
    write_record(tmp_path, "r2", signals, 250)
    raw = bytearray(dat.read_bytes())
    raw[100:110] = b"\x11" * 10
    dat.write_bytes(bytes(raw))
    with pytest.raises(EcgTraceError, match="r2.dat is corrupt"):
        find_pages(tmp_path)


def test_folders_without_pages_give_one_line(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("nothing here")
    rc = main(["evaluate", "--data", str(empty)])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "ECG-Image-Kit" in err and "competition" in err
    cv2.imwrite(str(empty / "lonely-0.png"), np.full((300, 400, 3), 255, np.uint8))
    signals = synthesize_ecg(np.random.default_rng(4), fs=250)
    write_record(empty, "other", signals, 250)
    with pytest.raises(EcgTraceError, match="lonely-0.png has no record"):
        find_eik_pages(empty)
    assert not is_eik_folder(tmp_path / "missing")


def test_evaluate_needs_a_mode(capsys):
    assert main(["evaluate"]) == 2
    err = capsys.readouterr().err
    assert "--pred" in err and "--data" in err
    assert main(["evaluate", "--data", "x", "--pred", "y"]) == 2
    assert "not both" in capsys.readouterr().err
