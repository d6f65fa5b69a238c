"""``ecgtrace evaluate``: score a submission against the truth, or run the pipeline on a folder of pages and score it.

Two modes:

- ``--pred FILE --truth TRUTH``: score a submission. Prints the competition score in dB, a
  table per lead and per image variant, and the worst images; writes ``<pred stem>.eval.json``
  and ``<pred stem>.eval.png`` (SNR by lead, SNR by variant) next to the predictions.
- ``--data FOLDER``: digitize every page of a folder in ECG-Image-Kit's output layout
  (``R.hea/.dat`` + ``R-k.png`` [+ ``R-k.json``], see :mod:`ecgtrace.data.eik`; a competition
  data set works too) and score each against its record: per sub-folder and overall, per-lead
  medians, refused/crashed pages, stage-0/1 doubts, time per page. Writes
  ``<out>/evaluate_<folder name>.json``. :func:`evaluate_data` is the one loop, also used by
  ``bench/bench_transfer.py``.

Per-lead and per-variant figures are diagnostics, not the official score: a lead's SNR is its
own signal over its own noise (the rule sums the 12 leads of an image first); a variant's (or
sub-folder's) score is the rule applied to that variant's images.
"""

from __future__ import annotations

import argparse
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ecgtrace.commands.models import add_weights_options
from ecgtrace.errors import EcgTraceError
from ecgtrace.io import atomic_write, write_json


def register(subparsers) -> None:
    """Add the ``evaluate`` subcommand."""
    p = subparsers.add_parser(
        "evaluate",
        help="score a submission against the truth, or digitize and score a folder of pages (--data)",
        description="Score predictions with the competition metric (dB; ceiling 25.84) and report it per lead, "
                    "per image variant and for the worst images; writes <pred>.eval.json and <pred>.eval.png "
                    "next to the predictions. With --data FOLDER instead: run the pipeline on every page of an "
                    "ECG-Image-Kit output folder (R.hea/.dat + R-k.png [+ R-k.json]; sub-folders are scored "
                    "separately) and score it against the records; writes <out>/evaluate_<folder>.json.",
    )
    p.add_argument("--pred", help="submission file, .csv or .parquet with columns id,value (with --truth)")
    p.add_argument("--truth",
                   help="solution file (id,fs,value), a synthetic data-set folder (test_solution.csv), or with "
                        "--split train a competition-layout folder (train.csv + train/{id}/{id}.csv)")
    p.add_argument("--split", choices=("test", "train"), default="test",
                   help="which truth in a folder: test (test_solution.csv) or train (per-record CSVs; image ids "
                        "may be {record}-{NNNN} to score each variant image). Default test")
    p.add_argument("--worst", type=int, default=10, help="how many of the worst images to list (default 10)")
    p.add_argument("--only-predicted", action="store_true", dest="only_predicted",
                   help="score only the truth images the submission predicts (always so for --split train)")
    p.add_argument("--no-plot", action="store_true", dest="no_plot", help="do not write the PNG")
    g = p.add_argument_group("digitize and score a folder of pages (instead of --pred/--truth)")
    g.add_argument("--data", help="folder in ECG-Image-Kit's output layout (or a folder of such folders, or a "
                                  "competition data set): every picture is digitized and scored against its record")
    add_weights_options(g)
    g.add_argument("--device", default="cpu", help="torch device for the models (default cpu)")
    g.add_argument("--out", default=".", help="where evaluate_<folder name>.json goes (default: current folder)")
    g.add_argument("--fs-from-record", action="store_true", dest="fs_from_record",
                   help="ask the pipeline for the record's sampling rate (.hea) instead of the page JSON's "
                        "sampling_frequency (the score is always at the record's rate)")
    g.add_argument("--variants", default=None, help="comma-separated sub-folders to run, e.g. clean,bw (default all)")
    g.add_argument("--limit", type=int, default=0, help="at most N pages per sub-folder (0 = all)")
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
    """Score, print the report, write the JSON and PNG next to the predictions (or run --data)."""
    if args.data is not None:
        if args.pred is not None or args.truth is not None:
            raise EcgTraceError("give either --data FOLDER (digitize and score pages) or --pred FILE --truth TRUTH "
                                "(score a submission), not both")
        return run_data(args)
    if args.pred is None or args.truth is None:
        raise EcgTraceError("nothing to score: give --pred FILE --truth TRUTH to score a submission, or --data FOLDER "
                            "to digitize and score a folder of ECG-Image-Kit pages")
    pred = Path(args.pred)
    if not pred.exists():
        raise EcgTraceError(f"predictions {pred} do not exist; give the submission file (.csv or .parquet)")
    rep = evaluate(pred, args.truth, split=args.split, worst=args.worst, only_predicted=args.only_predicted)
    print(format_report(rep))
    json_path, png_path = _out_paths(pred)
    try:
        write_json(rep, json_path)
        written = [str(json_path)]
        if not args.no_plot:
            plot_report(rep, png_path)
            written.append(str(png_path))
    except OSError as e:
        raise EcgTraceError(f"cannot write the report next to {pred}: {e.strerror or e}; copy the predictions "
                            f"somewhere writable") from e
    print("\nwrote " + ", ".join(written))
    return 0


# --------------------------------------------------------------------------- --data: digitize and score a folder
def pred_on_truth(pred: dict[str, np.ndarray], pred_fs: float, truth: dict[str, np.ndarray],
                  truth_fs: float) -> tuple[dict[str, np.ndarray], int]:
    """Full-length predictions (NaN outside each lead's window) -> the truth's plotted samples, per lead.

    Each lead's prediction is read at the truth's finite positions: by index when both are at one
    rate (a record a few samples longer or shorter than 10 s is fitted: samples beyond the
    prediction count as gaps), by time interpolation when the pipeline ran at another rate.
    Gaps (NaN inside the window, or beyond the prediction) are filled by linear interpolation
    from the lead's own values, as a submission writer fills them; a lead with no value is all
    zeros. Returns the arrays (each as long as the lead's finite truth) and the number of filled
    samples.
    """
    out: dict[str, np.ndarray] = {}
    filled = 0
    for lead, t in truth.items():
        t = np.asarray(t, dtype=np.float64)
        idx = np.flatnonzero(np.isfinite(t))
        v = np.asarray(pred.get(lead, np.array([])), dtype=np.float64).ravel()
        if v.size == 0 or idx.size == 0:
            out[lead] = np.zeros(idx.size)
            filled += idx.size
            continue
        if abs(float(pred_fs) - float(truth_fs)) < 1e-9:
            p = np.full(idx.size, np.nan)
            inside = idx < v.size
            p[inside] = v[idx[inside]]
        else:
            fin = np.isfinite(v)
            ti = idx / float(truth_fs)
            p = np.full(idx.size, np.nan)
            if fin.any():  # times beyond the prediction's own samples are gaps, filled below
                tp = np.flatnonzero(fin) / float(pred_fs)
                within = (ti >= tp[0] - 0.5 / pred_fs) & (ti <= tp[-1] + 0.5 / pred_fs)
                p[within] = np.interp(ti[within], tp, v[fin])
        bad = ~np.isfinite(p)
        if bad.any():
            filled += int(bad.sum())
            p = np.interp(np.arange(p.size), np.flatnonzero(~bad), p[~bad]) if (~bad).any() else np.zeros(p.size)
        out[lead] = p
    return out, filled


def evaluate_page(pipe, page, fs_from_record: bool = False) -> dict[str, Any]:
    """Digitize one page and score it against its truth; a refusal or crash scores as all-zero predictions.

    Returns a JSON-ready row: subset, image_id, status (``ok`` / ``refused`` / ``crashed``),
    message, linear and dB image SNR, per-lead SNR (dB), stage-0/1 ``ok`` flags (None when the
    pipeline did not say), warnings, methods, seconds.
    """
    from ecgtrace.metric import snr_for_image

    fs_run = float(page.fs if fs_from_record else page.page_fs)
    row: dict[str, Any] = {"subset": page.subset, "image_id": page.image_id, "image": str(page.image),
                           "fs": float(page.fs), "fs_run": fs_run, "status": "ok", "message": "",
                           "stage0_ok": None, "stage1_ok": None, "warnings": [], "methods": None,
                           "has_json": page.meta is not None, "trace_px": page.traces_px is not None}
    t0 = time.perf_counter()
    pred: dict[str, np.ndarray] = {}
    try:
        res = pipe(page.image, fs=fs_run, name=page.image_id)
        pred = {lead: res.signals[lead].to_numpy() for lead in res.signals.columns}
        row["warnings"] = list(res.report.get("warnings", []))
        row["methods"] = res.report.get("method")
        row["stage0_ok"] = bool(res.normalized.ok) if res.normalized is not None else None
        row["stage1_ok"] = bool(res.rectified.ok) if res.rectified is not None else None
    except EcgTraceError as e:  # StageError included: the pipeline's clear refusal
        row.update(status="refused", message=str(e).replace("\n", " "))
    except Exception as e:  # noqa: BLE001 - a crash on one page must not stop the run; it is counted
        row.update(status="crashed", message=f"{type(e).__name__}: {e}".replace("\n", " "),
                   trace=traceback.format_exc(limit=6))
    row["seconds"] = round(time.perf_counter() - t0, 3)
    if row["status"] != "ok":  # what the refusal says about stages 0/1
        msg = row["message"]
        row["stage0_ok"] = False if "stage 0 unsure" in msg else None
        row["stage1_ok"] = False if "stage 1 unsure" in msg else None
    aligned, filled = pred_on_truth(pred, fs_run, page.truth, page.fs)
    sc = snr_for_image(page.truth, aligned, page.fs)
    row.update(snr=float(sc.snr), snr_db=round(sc.db, 4), pred_filled=int(filled),
               lead_db={k: round(v, 3) for k, v in sc.lead_db.items()})
    return row


def _score_db(rows: list[dict]) -> float | None:
    from ecgtrace.metric import mean_score_db

    return round(mean_score_db([r["snr"] for r in rows]), 4) if rows else None


def summarize_rows(rows: list[dict]) -> dict[str, Any]:
    """Figures of a set of page rows: score (dB, the rule), counts, per-lead medians, the loss breakdown."""
    from ecgtrace.paper import LEADS

    ok = [r for r in rows if r["status"] == "ok"]
    handled = [r for r in ok if r["stage0_ok"] and r["stage1_ok"]]
    lead_med = {}
    for lead in LEADS:
        vals = [r["lead_db"][lead] for r in rows if lead in r.get("lead_db", {})]
        lead_med[lead] = round(float(np.median(vals)), 3) if vals else None
    secs = [r["seconds"] for r in rows]
    return {
        "n_pages": len(rows),
        "score_db": _score_db(rows),
        "median_db": round(float(np.median([r["snr_db"] for r in rows])), 3) if rows else None,
        "refused": sum(r["status"] == "refused" for r in rows),
        "crashed": sum(r["status"] == "crashed" for r in rows),
        "stage0_unsure": sum(r["stage0_ok"] is False for r in rows),
        "stage1_unsure": sum(r["stage1_ok"] is False for r in rows),
        "warned": sum(bool(r["warnings"]) for r in rows),
        "score_digitized_db": _score_db(ok),
        "n_handled": len(handled),
        "score_handled_db": _score_db(handled),
        "lead_median_db": lead_med,
        "s_per_page": round(float(np.mean(secs)), 2) if secs else None,
    }


def evaluate_data(folder: str | Path, checkpoints: str | Path | None = None, device: str = "cpu",
                  fs_from_record: bool = False, variants: list[str] | None = None, limit: int = 0,
                  progress: bool = True, pages=None, classical: bool = False, backend: str = "torch") -> dict[str, Any]:
    """Digitize and score every page of ``folder`` (ECG-Image-Kit layout, or a competition data set).

    Weights per stage: ``checkpoints``, else the shipped ones, else classical; ``classical=True`` forces classical;
    ``backend`` runs the networks with torch or onnxruntime.

    ``variants`` keeps only those sub-folders; ``limit`` keeps the first N pages of each. ``pages``
    (from :func:`ecgtrace.data.eik.find_pages`) skips reading the folder again. Returns the report:
    ``per_subset`` and ``overall`` (see :func:`summarize_rows`), ``pages`` (one row per page, see
    :func:`evaluate_page`), the settings and the wall time. Pages the pipeline refuses or crashes on
    score as all-zero predictions and never stop the run.
    """
    from loguru import logger
    from tqdm import tqdm

    from ecgtrace.data.eik import find_pages
    from ecgtrace.pipeline import Pipeline

    folder = Path(folder)
    pages = list(pages) if pages is not None else find_pages(folder)
    if variants:
        have = sorted({p.subset for p in pages})
        unknown = [v for v in variants if v not in have]
        if unknown:
            raise EcgTraceError(f"no sub-folder {', '.join(unknown)} in {folder}; it has {', '.join(have)}")
        pages = [p for p in pages if p.subset in variants]
    if limit and limit > 0:
        count: dict[str, int] = {}
        kept = []
        for p in pages:
            count[p.subset] = count.get(p.subset, 0) + 1
            if count[p.subset] <= limit:
                kept.append(p)
        pages = kept
    pipe = Pipeline(checkpoints, device=device, classical=classical, backend=backend)
    t0 = time.perf_counter()
    rows = []
    bar = tqdm(pages, desc=f"evaluate {folder.name}", unit="page", disable=not progress)
    for page in bar:
        row = evaluate_page(pipe, page, fs_from_record=fs_from_record)
        rows.append(row)
        bar.set_postfix_str(f"{page.subset}/{page.image_id} {row['snr_db']:.1f} dB {row['status']}")
        if row["status"] == "crashed":
            logger.warning(f"{page.image}: pipeline crashed: {row['message']}")
    subsets = list(dict.fromkeys(r["subset"] for r in rows))
    return {
        "data": str(folder),
        "checkpoints": str(checkpoints) if checkpoints else None,
        "weights": {k: w.to_dict() for k, w in pipe.weights.items()},
        "methods": rows[0]["methods"] if rows and rows[0]["methods"] else None,
        "fs_from_record": bool(fs_from_record),
        "n_pages": len(rows),
        "per_subset": {s: summarize_rows([r for r in rows if r["subset"] == s]) for s in subsets},
        "overall": summarize_rows(rows),
        "pages": rows,
        "seconds": round(time.perf_counter() - t0, 1),
        "ceiling_db": 25.8433,
        "note": "score_db: 10*log10 of the mean linear image SNR (the competition rule) over the pages; refused "
                "or crashed pages count as all-zero predictions; score_handled_db: only pages digitized with "
                "stages 0 and 1 both sure",
    }


def _fmt(v, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def format_data_report(rep: dict) -> str:
    """The table ``evaluate --data`` (and the transfer bench) prints."""
    from ecgtrace.paper import LEADS

    head = (f"  {'folder':<12}{'pages':>6}{'score dB':>10}{'median':>8}{'refused':>8}{'crash':>6}{'s0?':>5}"
            f"{'s1?':>5}{'handled':>8}{'hdl dB':>8}{'s/page':>8}")
    from ecgtrace.pipeline import weights_title

    weights = weights_title(rep.get("weights")) or ("checkpoints " + (rep["checkpoints"] or "none (classical)"))
    lines = [f"{rep['data']}: {rep['n_pages']} page(s), weights {weights}",
             "", "score per folder (dB, competition rule; s0?/s1? = stage 0/1 unsure; handled = both sure):", head]
    items = list(rep["per_subset"].items()) + [("overall", rep["overall"])]
    for name, r in items:
        lines.append(f"  {name:<12}{r['n_pages']:>6}{_fmt(r['score_db']):>10}{_fmt(r['median_db']):>8}"
                     f"{r['refused']:>8}{r['crashed']:>6}{r['stage0_unsure']:>5}{r['stage1_unsure']:>5}"
                     f"{r['n_handled']:>8}{_fmt(r['score_handled_db']):>8}{_fmt(r['s_per_page'], '.1f'):>8}")
    lines += ["", "per-lead median SNR (dB, diagnostic):",
              f"  {'folder':<12}" + "".join(f"{lead:>6}" for lead in LEADS)]
    for name, r in items:
        lines.append(f"  {name:<12}" + "".join(f"{_fmt(r['lead_median_db'][lead], '.1f'):>6}" for lead in LEADS))
    bad = [r for r in rep["pages"] if r["status"] != "ok"]
    if bad:
        lines += ["", f"{len(bad)} page(s) not digitized (scored as zeros):"]
        lines += [f"  {r['subset']}/{r['image_id']}: {r['status']}: {r['message'][:160]}" for r in bad]
    return "\n".join(lines)


def run_data(args: argparse.Namespace) -> int:
    """``evaluate --data``: digitize and score the folder, print the table, write the JSON."""
    data = Path(args.data)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants else None
    rep = evaluate_data(data, checkpoints=args.checkpoints, device=args.device, fs_from_record=args.fs_from_record,
                        variants=variants, limit=args.limit, classical=args.classical, backend=args.backend)
    print(format_data_report(rep))
    name = data.resolve().name or "data"
    path = Path(args.out) / f"evaluate_{name}.json"
    try:
        write_json(rep, path)
    except OSError as e:
        raise EcgTraceError(f"cannot write {path}: {e.strerror or e}; pass --out with a writable folder") from e
    print(f"\nwrote {path}")
    return 0
