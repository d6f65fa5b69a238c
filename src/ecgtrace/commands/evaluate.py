"""``ecgtrace evaluate``: score a submission against the truth, with a report.

Prints the competition score in dB, a table per lead and per image variant,
and the worst images; writes ``<pred stem>.eval.json`` and
``<pred stem>.eval.png`` (SNR by lead, SNR by variant) next to the predictions.
Per-lead and per-variant figures are diagnostics, not the official score: a
lead's SNR is its own signal over its own noise (the rule sums the 12 leads of
an image first); a variant's score is the rule applied to that variant's images.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from ecgtrace.errors import EcgTraceError
from ecgtrace.io import atomic_write


def register(subparsers) -> None:
    """Add the ``evaluate`` subcommand."""
    p = subparsers.add_parser(
        "evaluate",
        help="score a submission (id,value) against the truth with the competition metric",
        description="Score predictions with the competition metric (dB; ceiling 25.84) and report it per lead, "
                    "per image variant and for the worst images. Writes <pred>.eval.json and <pred>.eval.png "
                    "next to the predictions.",
    )
    p.add_argument("--pred", required=True, help="submission file, .csv or .parquet with columns id,value")
    p.add_argument("--truth", required=True,
                   help="solution file (id,fs,value), a synthetic data-set folder (test_solution.csv), or with "
                        "--split train a competition-layout folder (train.csv + train/{id}/{id}.csv)")
    p.add_argument("--split", choices=("test", "train"), default="test",
                   help="which truth in a folder: test (test_solution.csv) or train (per-record CSVs; image ids "
                        "may be {record}-{NNNN} to score each variant image). Default test")
    p.add_argument("--worst", type=int, default=10, help="how many of the worst images to list (default 10)")
    p.add_argument("--only-predicted", action="store_true", dest="only_predicted",
                   help="score only the truth images the submission predicts (always so for --split train)")
    p.add_argument("--no-plot", action="store_true", dest="no_plot", help="do not write the PNG")
    p.set_defaults(func=run)


# --------------------------------------------------------------------------- report
def _variant_table(per_image: pd.DataFrame) -> pd.DataFrame:
    from ecgtrace.metric import to_db

    g = per_image.groupby("variant", sort=True)
    return pd.DataFrame({
        "score_db": g["snr"].mean().map(lambda v: float(to_db(v))),
        "median_db": g["snr_db"].median(),
        "n_images": g.size(),
    })


def build_report(breakdown, variants: dict[str, str] | None, worst: int = 10) -> dict:
    """Everything ``evaluate`` prints and saves, as plain data."""
    per_image = breakdown.per_image.copy()
    per_image["variant"] = per_image["image_id"].map(variants or {}).fillna("unknown")
    pl = breakdown.per_lead
    worst_lead = pl.loc[pl.groupby("image_id")["snr_db"].idxmin(), ["image_id", "lead", "snr_db"]]
    worst_lead = worst_lead.set_index("image_id")
    lead_t = breakdown.lead_table()
    var_t = _variant_table(per_image)
    low = per_image.nsmallest(max(0, worst), "snr_db")
    return {
        "score_db": round(breakdown.score_db, 4),
        "n_images": int(len(per_image)),
        "ceiling_db": 25.8433,
        "per_lead": {lead: {"snr_db": round(float(r.snr_db), 3), "median_db": round(float(r.median_db), 3),
                            "mean_abs_shift": round(float(r.mean_abs_shift), 2)} for lead, r in lead_t.iterrows()},
        "per_variant": {v: {"score_db": round(float(r.score_db), 3), "median_db": round(float(r.median_db), 3),
                            "n_images": int(r.n_images)} for v, r in var_t.iterrows()},
        "worst": [{"image_id": str(r.image_id), "variant": str(r.variant), "snr_db": round(float(r.snr_db), 3),
                   "worst_lead": str(worst_lead.loc[r.image_id, "lead"]),
                   "worst_lead_db": round(float(worst_lead.loc[r.image_id, "snr_db"]), 3)}
                  for r in low.itertuples()],
        "per_image": [{"image_id": str(r.image_id), "variant": str(r.variant), "fs": float(r.fs),
                       "snr_db": round(float(r.snr_db), 4)} for r in per_image.itertuples()],
        "note": "score_db is the official metric; per-lead and per-variant figures are diagnostics",
    }


def format_report(rep: dict) -> str:
    """The text ``evaluate`` prints."""
    lines = [f"score: {rep['score_db']:.4f} dB over {rep['n_images']} image(s)  (ceiling {rep['ceiling_db']:.2f} dB)",
             "", "per lead (diagnostic: the lead's own SNR, 10*log10 of the mean over images):",
             f"  {'lead':<5}{'SNR dB':>9}{'median':>9}{'|shift|':>9}"]
    for lead, r in rep["per_lead"].items():
        lines.append(f"  {lead:<5}{r['snr_db']:>9.2f}{r['median_db']:>9.2f}{r['mean_abs_shift']:>9.1f}")
    lines += ["", "per variant (the score over that variant's images):",
              f"  {'variant':<9}{'score dB':>9}{'median':>9}{'images':>8}"]
    for v, r in rep["per_variant"].items():
        lines.append(f"  {v:<9}{r['score_db']:>9.2f}{r['median_db']:>9.2f}{r['n_images']:>8}")
    if rep["worst"]:
        lines += ["", f"worst {len(rep['worst'])} image(s):",
                  f"  {'image':<16}{'variant':<9}{'SNR dB':>8}  worst lead"]
        for w in rep["worst"]:
            lines.append(f"  {w['image_id']:<16}{w['variant']:<9}{w['snr_db']:>8.2f}  "
                         f"{w['worst_lead']} ({w['worst_lead_db']:.2f} dB)")
    return "\n".join(lines)


def plot_report(rep: dict, path: Path) -> None:
    """Bar plots: SNR by lead, score by variant (matplotlib Agg), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [12, max(3, len(rep["per_variant"]))]})
    leads = list(rep["per_lead"])
    axes[0].bar(leads, [rep["per_lead"][k]["snr_db"] for k in leads], color="#4477aa")
    axes[0].set_title("SNR by lead (diagnostic)")
    variants = list(rep["per_variant"])
    axes[1].bar(variants, [rep["per_variant"][v]["score_db"] for v in variants], color="#cc6677")
    axes[1].set_title("score by variant")
    for ax in axes:
        ax.axhline(rep["ceiling_db"], color="grey", ls="--", lw=0.8)
        ax.axhline(rep["score_db"], color="black", lw=0.8)
        ax.set_ylabel("dB")
        ax.tick_params(axis="x", rotation=45)
    fig.suptitle(f"score {rep['score_db']:.2f} dB over {rep['n_images']} images (dashed: ceiling 25.84)")
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=90)
        plt.close(fig)


def _write_json(obj: dict, path: Path) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2))


def _out_paths(pred: Path) -> tuple[Path, Path]:
    stem = pred.name
    for suf in (".csv.gz", ".csv", ".parquet", ".pq"):
        if stem.lower().endswith(suf):
            stem = stem[: -len(suf)]
            break
    return pred.with_name(stem + ".eval.json"), pred.with_name(stem + ".eval.png")


# --------------------------------------------------------------------------- command
def evaluate(pred: str | Path, truth: str | Path, split: str = "test", worst: int = 10,
             only_predicted: bool = False) -> dict:
    """Score ``pred`` against ``truth``; returns the report dict (see :func:`build_report`)."""
    from loguru import logger

    from ecgtrace.metric import ScoreError, parse_ids, score_breakdown
    from ecgtrace.submission import (
        _ID_PATTERN,
        load_solution,
        match_solution_to_images,
        read_submission,
        validate_submission,
    )

    sub = read_submission(pred)
    if len(sub) == 0:
        raise EcgTraceError(f"submission {pred} has no rows")
    try:
        pred_images = list(parse_ids(sub["id"], what="submission").images)
    except EcgTraceError:  # malformed ids: report them all, against the truth, below
        ok = sub["id"].astype(str).str.match(_ID_PATTERN)
        pred_images = list(parse_ids(sub["id"][ok], what="submission").images) if ok.any() else []
    ids = None
    if split == "train":  # read only the records the submission predicts
        ids = sorted({i.rsplit("-", 1)[0] if i.rsplit("-", 1)[-1].isdigit() else i for i in pred_images} | set(pred_images))
    sol = load_solution(truth, split=split, ids=ids)
    ps = parse_ids(sol.frame["id"], what="solution")
    matched = match_solution_to_images(sol, pred_images, parsed=ps)
    if matched is not sol:  # per-variant copies of record truth: new ids
        sol, ps = matched, parse_ids(matched.frame["id"], what="solution")
    frame = sol.frame
    if only_predicted or split == "train":
        keep = np.isin(ps.images, pred_images)
        if not keep.any():
            raise EcgTraceError(f"none of the {len(pred_images)} predicted images ({', '.join(pred_images[:3])}) "
                                f"is in the truth {sol.source}")
        if not keep.all():
            logger.info(f"scoring the {int(keep.sum())} of {keep.size} truth images that the submission predicts")
            frame = frame[keep[ps.image]]
    try:
        breakdown = score_breakdown(frame, sub, "id")
    except ScoreError:  # say everything that is wrong at once, not just the first problem
        report = validate_submission(sub, frame)
        if report.ok:
            raise
        raise EcgTraceError(f"submission {pred} does not match the truth: {'; '.join(report.problems())}"
                            + ("" if only_predicted or split == "train" else
                               " (to score just the images it predicts, add --only-predicted)")) from None
    rep = build_report(breakdown, sol.variants, worst=worst)
    rep["pred"], rep["truth"], rep["split"] = str(pred), str(sol.source), split
    return rep


def run(args: argparse.Namespace) -> int:
    """Score, print the report, write the JSON and PNG next to the predictions."""
    pred = Path(args.pred)
    if not pred.exists():
        raise EcgTraceError(f"predictions {pred} do not exist; give the submission file (.csv or .parquet)")
    rep = evaluate(pred, args.truth, split=args.split, worst=args.worst, only_predicted=args.only_predicted)
    print(format_report(rep))
    json_path, png_path = _out_paths(pred)
    try:
        _write_json(rep, json_path)
        written = [str(json_path)]
        if not args.no_plot:
            plot_report(rep, png_path)
            written.append(str(png_path))
    except OSError as e:
        raise EcgTraceError(f"cannot write the report next to {pred}: {e.strerror or e}; copy the predictions "
                            f"somewhere writable") from e
    print("\nwrote " + ", ".join(written))
    return 0
