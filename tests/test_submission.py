"""Submission files: round trips, building from lead signals, validation messages, solutions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ecgtrace.errors import EcgTraceError
from ecgtrace.metric import CEILING_DB, score
from ecgtrace.paper import LEADS
from ecgtrace.submission import (
    build_submission,
    load_solution,
    match_solution_to_images,
    read_submission,
    read_test_csv,
    row_ids,
    validate_submission,
    write_submission,
)

FS = 20


def make_test_df(images=("7", "42"), fs=FS) -> pd.DataFrame:
    rows = [(img, lead, fs, fs * 10 if lead == "II" else fs * 5 // 2) for img in images for lead in LEADS]
    return pd.DataFrame(rows, columns=["id", "lead", "fs", "number_of_rows"])


def make_preds(test_df: pd.DataFrame, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, np.ndarray]] = {}
    for img, lead, n in zip(test_df["id"], test_df["lead"], test_df["number_of_rows"]):
        out.setdefault(img, {})[lead] = np.cumsum(rng.normal(0, 0.1, n))
    return out


def solution_from(test_df, preds) -> pd.DataFrame:
    sub = build_submission(test_df, preds)
    fs = dict(zip(test_df["id"], test_df["fs"]))
    return sub.assign(fs=sub["id"].str.rsplit("_", n=2).str[0].map(fs))[["id", "fs", "value"]]


def test_ids_and_build_order():
    assert row_ids("62", "I", 3) == ["62_0_I", "62_1_I", "62_2_I"]
    t = make_test_df()
    p = make_preds(t)
    sub = build_submission(t, p)
    assert list(sub.columns) == ["id", "value"]
    assert len(sub) == t["number_of_rows"].sum()
    assert sub["id"].iloc[0] == "7_0_I" and sub["id"].iloc[-1] == f"42_{FS * 5 // 2 - 1}_V6"
    np.testing.assert_array_equal(sub["value"].iloc[:50].to_numpy(), p["7"]["I"])
    assert validate_submission(sub, t).ok


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".csv.gz"])
def test_round_trip(tmp_path, suffix):
    t = make_test_df()
    sub = build_submission(t, make_preds(t))
    path = write_submission(sub, tmp_path / f"sub{suffix}")
    back = read_submission(path)
    assert list(back["id"]) == list(sub["id"])
    if suffix == ".parquet":
        np.testing.assert_array_equal(back["value"].to_numpy(), sub["value"].to_numpy())
    else:  # rounded to 1e-6 mV
        np.testing.assert_allclose(back["value"].to_numpy(), sub["value"].to_numpy(), rtol=0, atol=5.1e-7)
        if suffix == ".csv":
            head = path.read_text().splitlines()[:2]
            assert head[0] == "id,value" and head[1].startswith("7_0_I,")
    assert not list(tmp_path.glob(".*tmp*"))  # nothing half-written left behind
    # the round-tripped file scores the ceiling against its own solution
    assert score(solution_from(t, make_preds(t)), back, "id") == pytest.approx(CEILING_DB)


def test_build_fits_lengths_fills_gaps_and_takes_lead_objects():
    t = make_test_df(images=("1",))
    p = make_preds(t)
    p["1"]["I"] = np.r_[p["1"]["I"], 0.5]  # one sample too many -> truncated
    p["1"]["V1"] = p["1"]["V1"][::2]  # half rate -> resampled
    p["1"]["V2"][3] = np.nan  # a hole -> interpolated
    del p["1"]["V6"]  # missing -> zeros

    class Signals:  # duck-typed ecgtrace.stages.base.LeadSignals
        signals = p["1"]

    sub = build_submission(t, {1: Signals()})  # int image key works too
    assert validate_submission(sub, t).ok
    v6 = sub[sub["id"].str.endswith("_V6")]["value"]
    assert (v6 == 0).all() and len(v6) == FS * 5 // 2
    with pytest.raises(EcgTraceError, match="no prediction for 1 image leads .*1/V6"):
        build_submission(t, {"1": p["1"]}, missing="error")


def test_validation_report_lists_every_problem():
    t = make_test_df()
    sub = build_submission(t, make_preds(t))
    bad = sub.drop(index=[0, 1]).copy()  # 2 missing
    bad = pd.concat([bad, sub.iloc[[5]], pd.DataFrame({"id": ["7_999_I", "bogus", "99_0_I"], "value": [0, 0, 0]})])
    bad["value"] = bad["value"].astype(object)
    bad.iloc[3, 1] = "abc"
    bad.iloc[4, 1] = np.nan
    rep = validate_submission(bad, t)
    assert not rep.ok
    assert (rep.missing, rep.duplicates, rep.malformed, rep.extra, rep.non_numeric, rep.non_finite) == (2, 1, 1, 2, 1, 1)
    assert "7_0_I" in rep.examples["missing"]
    assert set(rep.examples["extra"]) == {"7_999_I", "99_0_I"}
    text = rep.summary()
    for phrase in ("2 missing ids", "1 duplicate ids", "1 malformed ids", "2 ids not asked for", "1 non-numeric",
                   "1 NaN/inf"):
        assert phrase in text
    assert rep.one_line().startswith("submission invalid:")
    with pytest.raises(EcgTraceError, match="is invalid: 2 missing ids"):
        rep.raise_if_invalid()
    # missing columns
    rep2 = validate_submission(sub.rename(columns={"value": "mv"}), t)
    assert rep2.missing_columns == ["value"] and not rep2.ok
    # validating against a solution table instead of test.csv
    assert validate_submission(sub, solution_from(t, make_preds(t))).ok


def test_read_errors(tmp_path):
    with pytest.raises(EcgTraceError, match="does not exist"):
        read_submission(tmp_path / "nope.csv")
    (tmp_path / "x.txt").write_text("id,value\n")
    with pytest.raises(EcgTraceError, match="unknown submission format"):
        read_submission(tmp_path / "x.txt")
    (tmp_path / "w.csv").write_text("id,mv\n1_0_I,0.1\n")
    with pytest.raises(EcgTraceError, match="lacks column.*value"):
        read_submission(tmp_path / "w.csv")
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(EcgTraceError, match="cannot read submission"):
        read_submission(tmp_path / "junk.parquet")


def test_load_solution_forms(tmp_path):
    t = make_test_df()
    sol = solution_from(t, make_preds(t))
    ds = tmp_path / "ds"
    ds.mkdir()
    t.to_csv(ds / "test.csv", index=False)
    sol.to_csv(ds / "test_solution.csv", index=False)
    pd.DataFrame({"id": [7, 42], "variant": [1, 5]}).to_csv(ds / "test_variants.csv", index=False)
    s = load_solution(ds)
    assert s.variants == {"7": "0001", "42": "0005"} and len(s.frame) == len(sol)
    assert sorted(s.image_ids) == ["42", "7"]
    # a bare solution file without fs gets fs from test.csv beside it
    sol.drop(columns="fs").to_parquet(ds / "nofs.parquet")
    s2 = load_solution(ds / "nofs.parquet")
    assert (s2.frame["fs"] == FS).all()
    assert read_test_csv(ds)["id"].tolist()[:1] == ["7"]
    with pytest.raises(EcgTraceError, match="no test_solution.csv"):
        load_solution(tmp_path)
    with pytest.raises(EcgTraceError, match="no train.csv"):
        load_solution(ds, split="train")


def test_train_split_solution_and_variant_images(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "comp"
    (root / "train").mkdir(parents=True)
    fs = 10
    pd.DataFrame({"id": [5, 6], "fs": [fs, fs], "sig_len": [100, 100]}).to_csv(root / "train.csv", index=False)
    windows = {}
    for rid in ("5", "6"):
        frame = pd.DataFrame({lead: np.full(100, np.nan) for lead in LEADS})
        for lead in LEADS:
            if lead == "II":
                frame[lead] = rng.normal(size=100)
            else:
                col = [c for row in (("I", "aVR", "V1", "V4"), ("II", "aVL", "V2", "V5"), ("III", "aVF", "V3", "V6"))
                       for c in row].index(lead) % 4
                frame.loc[col * 25: col * 25 + 24, lead] = rng.normal(size=25)
        (root / "train" / rid).mkdir()
        frame.to_csv(root / "train" / rid / f"{rid}.csv", index=False)
        windows[rid] = frame
    s = load_solution(root, split="train")
    assert len(s.frame) == 2 * (11 * 25 + 100)
    np.testing.assert_allclose(s.frame[s.frame["id"].str.startswith("6_") & s.frame["id"].str.endswith("_V4")]["value"],
                               windows["6"]["V4"].dropna().to_numpy())
    m = match_solution_to_images(s, ["5-0003", "5-0010", "6"])
    assert m.variants == {"5-0003": "0003", "5-0010": "0010"}
    imgs = set(m.frame["id"].str.rsplit("_", n=2).str[0])
    assert imgs == {"5-0003", "5-0010", "6"}
    assert len(m.frame) == 3 * (11 * 25 + 100)
