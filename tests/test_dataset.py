"""Data set writer/reader in the competition layout, SyntheticPages, and the synth command."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

from ecgtrace.cli import main
from ecgtrace.data.dataset import PageSource, validate_dataset, write_dataset
from ecgtrace.data.synthetic import PageSample, SyntheticPages, check_variants
from ecgtrace.errors import EcgTraceError
from ecgtrace.paper import LEADS, Page, csv_rows

TINY = Page(dpi=50)


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    out = tmp_path_factory.mktemp("d") / "set"
    write_dataset(out, n=2, variants=("0001",), seed=3, workers=1, n_test=2, page=TINY, progress=False)
    return out


def test_layout_matches_competition(ds):
    train = pd.read_csv(ds / "train.csv")
    assert list(train.columns) == ["id", "fs", "sig_len"] and len(train) == 2
    for rid, fs, n in train.itertuples(index=False):
        assert fs in (250, 256, 500, 512, 1000, 1025) and n == round(10 * fs)
        folder = ds / "train" / str(rid)
        sig = pd.read_csv(folder / f"{rid}.csv")
        assert list(sig.columns) == list(LEADS) and len(sig) == n
        for lead in LEADS:
            i0, i1 = csv_rows(lead, fs, n)
            filled = sig[lead].notna().to_numpy()
            assert filled[i0:i1].all() and filled.sum() == i1 - i0, lead
        assert sig["II"].notna().all()
        assert (folder / f"{rid}-0001.png").exists() and (folder / f"{rid}-0001.gt.npz").exists()
    test = pd.read_csv(ds / "test.csv")
    assert list(test.columns) == ["id", "lead", "fs", "number_of_rows"] and len(test) == 2 * 12
    sol = pd.read_csv(ds / "test_solution.csv")
    assert list(sol.columns) == ["id", "fs", "value"]
    assert len(sol) == test["number_of_rows"].sum()
    for rid, fs, n in test.loc[test["lead"] == "II", ["id", "fs", "number_of_rows"]].itertuples(index=False):
        assert n == round(10 * fs) and (ds / "test" / f"{rid}.png").exists()
        assert (ds / "test_gt" / f"{rid}.gt.npz").exists()
        assert f"{rid}_{n - 1}_II" in set(sol["id"])
    assert set(pd.read_csv(ds / "test_variants.csv")["variant"]) == {1}
    assert not set(train["id"]) & set(test["id"])  # train and test records are different
    assert not list(ds.parent.glob(".set.tmp-*"))


def test_reader_round_trip(ds):
    src = PageSource(ds, "train")
    assert len(src) == 2
    s = src[0]
    assert isinstance(s, PageSample) and s.gt is not None and s.variant == "0001"
    assert s.image.shape == (*TINY.size, 3)
    # the rhythm-strip ground truth encodes the CSV's lead II
    np.testing.assert_allclose(s.gt.trace_mv["II_rhythm"], s.signals["II"].to_numpy(), atol=1e-4)
    t = PageSource(ds, "test")
    assert len(t) == 2
    st = t[1]
    assert st.signals is not None and st.signals["II"].notna().all() and st.variant == "0001"
    np.testing.assert_allclose(st.gt.trace_mv["V2"], st.signals["V2"].dropna().to_numpy(), atol=1e-4)


def test_reader_on_real_layout_without_sidecars(tmp_path, ds):
    """Competition data has no .gt.npz, no marker file, no test truth: the reader must not care."""
    import shutil

    real = tmp_path / "real"
    shutil.copytree(ds, real, ignore=shutil.ignore_patterns("*.gt.npz", "ecgtrace_synth.json", "test_*"))
    src = PageSource(real, "train", variants=["1"])
    assert len(src) == 2 and src[0].gt is None and src[0].signals is not None
    t = PageSource(real, "test")
    assert t[0].gt is None and t[0].signals is None and t[0].variant == "unknown"


def test_validate_says_what_is_missing(tmp_path, ds):
    with pytest.raises(EcgTraceError, match="does not exist"):
        validate_dataset(tmp_path / "nope")
    with pytest.raises(EcgTraceError, match="no train.csv"):
        validate_dataset(tmp_path)
    (tmp_path / "train.csv").write_text("id,fs,sig_len\n5,500,5000\n")
    with pytest.raises(EcgTraceError, match="no train/ folder"):
        validate_dataset(tmp_path)
    (tmp_path / "train").mkdir()
    with pytest.raises(EcgTraceError, match="record folders"):
        validate_dataset(tmp_path)
    (tmp_path / "train" / "5").mkdir()
    with pytest.raises(EcgTraceError, match="no images"):
        validate_dataset(tmp_path)
    with pytest.raises(EcgTraceError, match="no test.csv"):
        validate_dataset(tmp_path, "test")


def test_deterministic_and_worker_independent(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_dataset(a, n=2, seed=11, workers=1, page=TINY, progress=False)
    write_dataset(b, n=2, seed=11, workers=2, page=TINY, progress=False)
    ta, tb = pd.read_csv(a / "train.csv"), pd.read_csv(b / "train.csv")
    assert ta.equals(tb)
    for rid in ta["id"]:
        assert (a / "train" / str(rid) / f"{rid}.csv").read_bytes() == (b / "train" / str(rid) / f"{rid}.csv").read_bytes()
        assert (a / "train" / str(rid) / f"{rid}-0001.png").read_bytes() == \
            (b / "train" / str(rid) / f"{rid}-0001.png").read_bytes()
    # writing again replaces an earlier synthetic set
    write_dataset(a, n=1, seed=12, workers=1, page=TINY, progress=False)
    assert len(pd.read_csv(a / "train.csv")) == 1


def test_synthetic_pages_picklable_and_deterministic():
    pages = SyntheticPages(4, seed=5, page=TINY)
    clone = pickle.loads(pickle.dumps(pages))
    a, b = pages[2], clone[2]
    assert np.array_equal(a.image, b.image) and a.fs == b.fs
    assert not np.array_equal(pages[1].image, a.image)
    assert a.signals.shape[1] == 12 and a.gt.variant == "0001"
    with pytest.raises(IndexError):
        pages[4]


def test_variant_names():
    assert check_variants("1,0001") == ("0001",)
    with pytest.raises(EcgTraceError, match="valid variants are 0001, 0003"):
        check_variants("0001,0002")


def test_cli_errors(tmp_path, capsys):
    f = tmp_path / "file.txt"
    f.write_text("x")
    assert main(["synth", "--out", str(f), "--n", "1", "--dpi", "50"]) == 2
    err = capsys.readouterr().err.strip()
    assert "is a file" in err and len(err.splitlines()) == 1
    assert main(["synth", "--out", str(tmp_path / "o"), "--n", "1", "--variants", "0001,0042"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown variant '0042'" in err and "0012" in err
    assert not (tmp_path / "o").exists()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert main(["synth", "--out", str(tmp_path / "busy"), "--n", "1", "--dpi", "50"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def test_cli_bad_wfdb_leaves_nothing(tmp_path, capsys):
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "r1.hea").write_text("r1 12 500 5000\n")  # header without data
    out = tmp_path / "o"
    assert main(["synth", "--out", str(out), "--n", "1", "--dpi", "50", "--wfdb", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("ecgtrace: error: none of the 1 WFDB record(s)")
    assert not out.exists() and not list(tmp_path.glob(".o.*"))


def test_cli_synth_from_wfdb(tmp_path, capsys):
    wfdb = pytest.importorskip("wfdb")
    from ecgtrace.data.signals import synthesize_ecg

    (tmp_path / "w").mkdir()
    s = synthesize_ecg(1, fs=500)
    wfdb.wrsamp("rec", fs=500, units=["mV"] * 12, sig_name=[k.upper() for k in LEADS],
                p_signal=np.stack([s[k] for k in LEADS], axis=1), fmt=["16"] * 12, adc_gain=[1000.0] * 12,
                baseline=[0] * 12, write_dir=str(tmp_path / "w"))
    out = tmp_path / "o"
    assert main(["synth", "--out", str(out), "--n", "1", "--dpi", "50", "--fs", "500", "--workers", "1",
                 "--wfdb", str(tmp_path / "w")]) == 0
    assert "wrote 1 image(s)" in capsys.readouterr().out
    src = PageSource(out)
    np.testing.assert_allclose(src[0].signals["II"].to_numpy(), s["II"], atol=2e-3)
