"""Transfer: the end-to-end score on pages drawn by ECG-Image-Kit (not by ecgtrace's own renderer), per sub-folder.

Runs the whole pipeline on every page of ../shared/eik-dev (clean, bw, aug, wrinkle, header: the
generator's own output layout, see its README) or any folder of that layout (--data), once with the
classical paths, once with the shipped weights (when any ship: the default path of a fresh install)
and once per --checkpoints model set, and scores each page against its WFDB record
with the competition rule. Besides the score per sub-folder it says where the loss comes from:
pages refused or crashed (scored as zeros), pages where stage 0 or stage 1 was unsure, the score of
only the pages both stages handled, and the per-lead median SNR. The loop is
``ecgtrace.commands.evaluate.evaluate_data``, the same as ``ecgtrace evaluate --data``.

    PYTHONPATH=src OMP_NUM_THREADS=1 python bench/bench_transfer.py [--data DIR] [--checkpoints DIR[,DIR]]...
        [--variants clean,bw] [--limit N] [--fs-from-record] [--name NAME]

Writes bench/results/<name>.json (default transfer.json): per model set the full report (per
sub-folder, overall, one row per page).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ecgtrace.commands.evaluate import evaluate_data, format_data_report  # noqa: E402
from ecgtrace.data.eik import find_pages  # noqa: E402
from ecgtrace.io import write_json  # noqa: E402
from ecgtrace.models.shipped import read_manifest  # noqa: E402

#: checkpoints value of the two built-in sets (the classical paths; the shipped weights)
CLASSICAL, SHIPPED = "<classical>", "<shipped>"


def model_sets(values: list[str]) -> list[tuple[str, str | None]]:
    """(label, checkpoints folder) for the classical path, the shipped weights (if any ship) and every
    --checkpoints folder given."""
    sets: list[tuple[str, str | None]] = [("classical", CLASSICAL)]
    if read_manifest().weights:
        sets.append(("shipped", SHIPPED))
    for v in values:
        for d in (x.strip() for x in v.split(",")):
            if d:
                p = Path(d)
                if not p.is_dir():
                    raise SystemExit(f"bench_transfer: checkpoint folder {p} not found")
                label = p.name or str(p)
                while label in {s[0] for s in sets}:
                    label += "'"
                sets.append((label, str(p)))
    return sets


def loss_lines(label: str, rep: dict) -> list[str]:
    """Where the loss comes from, per sub-folder: refusals, stage-0/1 doubts, weakest leads."""
    out = [f"where the loss comes from ({label}):"]
    for name, r in list(rep["per_subset"].items()) + [("overall", rep["overall"])]:
        leads = {k: v for k, v in r["lead_median_db"].items() if v is not None}
        weak = sorted(leads, key=leads.get)[:3]
        dig = r["score_digitized_db"]
        hdl = r["score_handled_db"]
        out.append(
            f"  {name:<9} {r['score_db']:6.2f} dB all; "
            f"{'-' if dig is None else f'{dig:6.2f}'} dB without the {r['refused'] + r['crashed']} refused/crashed; "
            f"{'-' if hdl is None else f'{hdl:6.2f}'} dB on the {r['n_handled']}/{r['n_pages']} pages stages 0-1 "
            f"handled (s0 unsure {r['stage0_unsure']}, s1 unsure {r['stage1_unsure']}); weakest leads "
            + ", ".join(f"{k} {leads[k]:.1f}" for k in weak))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "eik-dev"),
                    help="folder in ECG-Image-Kit's output layout (default ../shared/eik-dev)")
    ap.add_argument("--checkpoints", action="append", default=[],
                    help="folder of stage{K}_*.pth; repeat or comma-separate for several model sets "
                         "(the classical path always runs too)")
    ap.add_argument("--no-classical", action="store_true", dest="no_classical",
                    help="skip the classical path (measure only the shipped and --checkpoints sets)")
    ap.add_argument("--no-shipped", action="store_true", dest="no_shipped",
                    help="skip the shipped weights (measure only the classical path and --checkpoints sets)")
    ap.add_argument("--device", default="cpu", help="torch device for the models (default cpu)")
    ap.add_argument("--variants", default=None, help="comma-separated sub-folders, e.g. clean,bw (default all)")
    ap.add_argument("--limit", type=int, default=0, help="at most N pages per sub-folder (0 = all)")
    ap.add_argument("--fs-from-record", action="store_true", dest="fs_from_record",
                    help="ask the pipeline for the .hea rate instead of the JSON's sampling_frequency")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--name", default="transfer", help="results file stem (default transfer)")
    args = ap.parse_args()
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING", format="{message}")
    sets = model_sets(args.checkpoints)
    if args.no_classical:
        sets = [s for s in sets if s[1] != CLASSICAL] or sys.exit("bench_transfer: --no-classical needs --checkpoints DIR")
    if args.no_shipped:
        sets = [s for s in sets if s[1] != SHIPPED] or sys.exit("bench_transfer: nothing left to measure")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants else None
    t0 = time.perf_counter()
    pages = find_pages(args.data)
    results = {}
    for label, ckpt in sets:
        rep = evaluate_data(args.data, checkpoints=None if ckpt in (CLASSICAL, SHIPPED) else ckpt,
                            device=args.device, fs_from_record=args.fs_from_record, variants=variants,
                            limit=args.limit, pages=pages, classical=ckpt == CLASSICAL)
        results[label] = rep
        print(f"\n=== {label} ===")
        print(format_data_report(rep))
        print()
        print("\n".join(loss_lines(label, rep)))
    summary = {
        "data": str(args.data), "variants": variants, "limit": args.limit, "fs_from_record": args.fs_from_record,
        "seconds": round(time.perf_counter() - t0, 1),
        "scores_db": {label: {**{s: r["score_db"] for s, r in rep["per_subset"].items()},
                              "overall": rep["overall"]["score_db"]} for label, rep in results.items()},
        "sets": results,
    }
    if len(results) > 1:
        print("\nscore per folder (dB) by model set:")
        subs = list(next(iter(results.values()))["per_subset"]) + ["overall"]
        print(f"  {'set':<16}" + "".join(f"{s:>10}" for s in subs))
        for label, sc in summary["scores_db"].items():
            print(f"  {label:<16}" + "".join(f"{sc[s]:>10.2f}" for s in subs))
    path = write_json(summary, Path(args.out) / f"{args.name}.json")
    print(f"\nwrote {path}  ({summary['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
