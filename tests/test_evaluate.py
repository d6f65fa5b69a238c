"""``ecgtrace evaluate`` end to end on a tiny solution and submission."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ecgtrace.cli import main
from ecgtrace.metric import CEILING_DB, score
from ecgtrace.paper import LEADS

FS = 20


def write_dataset(root, n_images=3, seed=0):
    """A synthetic-style test split: test.csv, test_solution.csv, test_variants.csv."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows, sol = [], []
    for k in range(n_images):
        img = str(1000 + k)
        for lead in LEADS:
            n = FS * 10 if lead == "II" else FS * 5 // 2
            rows.append((img, lead, FS, n))
            sol.append(pd.DataFrame({"id": [f"{img}_{r}_{lead}" for r in range(n)], "fs": FS,
                                     "value": np.cumsum(rng.normal(0, 0.1, n))}))
    pd.DataFrame(rows, columns=["id", "lead", "fs", "number_of_rows"]).to_csv(root / "test.csv", index=False)
    sol = pd.concat(sol, ignore_index=True)
    sol.to_csv(root / "test_solution.csv", index=False)
    pd.DataFrame({"id": [1000 + k for k in range(n_images)],
                  "variant": ["0001", "0003", "0001"][:n_images]}).to_csv(root / "test_variants.csv", index=False)
    return sol


def test_evaluate_end_to_end(tmp_path, capsys):
    sol = write_dataset(tmp_path / "ds")
    rng = np.random.default_rng(1)
    sub = sol[["id", "value"]].copy()
    noisy = sub["id"].str.startswith("1001_")  # the 0003 image gets noise, the others are exact
    sub.loc[noisy, "value"] += rng.normal(0, 0.3, int(noisy.sum()))
    pred = tmp_path / "out" / "pred.parquet"
    pred.parent.mkdir()
    sub.to_parquet(pred)
    rc = main(["evaluate", "--pred", str(pred), "--truth", str(tmp_path / "ds"), "--worst", "2"])
    out = capsys.readouterr().out
    assert rc == 0
    expected = score(sol, sub, "id")
    assert f"score: {expected:.4f} dB over 3 image(s)" in out
    assert "per lead" in out and "per variant" in out and "worst 2 image(s)" in out
    rep = json.loads((tmp_path / "out" / "pred.eval.json").read_text())
    assert rep["score_db"] == pytest.approx(expected, abs=1e-4)
    assert set(rep["per_variant"]) == {"0001", "0003"}
    assert rep["per_variant"]["0001"]["score_db"] == pytest.approx(CEILING_DB, abs=1e-3)
    assert rep["per_variant"]["0003"]["score_db"] < CEILING_DB - 3
    assert rep["worst"][0]["image_id"] == "1001" and rep["worst"][0]["variant"] == "0003"
    assert list(rep["per_lead"]) == list(LEADS)
    png = tmp_path / "out" / "pred.eval.png"
    assert png.exists() and png.read_bytes()[:4] == b"\x89PNG"


def test_evaluate_solution_file_and_only_predicted(tmp_path, capsys):
    sol = write_dataset(tmp_path / "ds")
    part = sol[sol["id"].str.startswith("1002_")]
    pred = tmp_path / "part.csv"
    part[["id", "value"]].to_csv(pred, index=False)
    # two of three images missing: one clear line that says what to do
    assert main(["evaluate", "--pred", str(pred), "--truth", str(tmp_path / "ds" / "test_solution.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "missing ids" in err and "--only-predicted" in err
    assert main(["evaluate", "--pred", str(pred), "--truth", str(tmp_path / "ds" / "test_solution.csv"),
                 "--only-predicted", "--no-plot"]) == 0
    assert "over 1 image(s)" in capsys.readouterr().out
    assert (tmp_path / "part.eval.json").exists() and not (tmp_path / "part.eval.png").exists()


def test_evaluate_bad_input_is_one_line(tmp_path, capsys):
    write_dataset(tmp_path / "ds", n_images=1)
    cases = []
    cases.append(["--pred", str(tmp_path / "missing.csv"), "--truth", str(tmp_path / "ds")])
    (tmp_path / "junk.csv").write_text("id,value\n1000_0_I,abc\n1000_0_XX,1\n")
    cases.append(["--pred", str(tmp_path / "junk.csv"), "--truth", str(tmp_path / "ds")])
    (tmp_path / "ok.csv").write_text("id,value\n1000_0_I,1\n")
    cases.append(["--pred", str(tmp_path / "ok.csv"), "--truth", str(tmp_path / "nowhere")])
    cases.append(["--pred", str(tmp_path / "ok.csv"), "--truth", str(tmp_path)])
    for args in cases:
        assert main(["evaluate", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("ecgtrace: error:") and len(err.splitlines()) == 1, err
    assert not list(tmp_path.glob("*.eval.json"))
