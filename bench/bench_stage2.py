"""Stage 2 / end-to-end score (competition rule, dB) on a held-out synthetic test split, per variant.

Modes (each scored with ``ecgtrace.metric`` through a real submission):

- ``e2e``: the whole pipeline on the test pictures (stage 0 -> 1 -> 2: per stage --checkpoints,
  else the shipped weights, else classical; --classical for the classical paths only);
- ``gt_rect``: stage 2 alone on the pictures rectified with their *ground-truth* geometry,
  so the difference to ``e2e`` is what stages 0/1 lose;
- ``gt_rect_einthoven``: the same with the soft Einthoven correction, to measure the switch;
- ``model_gt_rect`` / ``model_e2e``: with a stage-2 checkpoint (--stage2-checkpoint; without one, the
  shipped stage-2 weights: ``model_e2e`` is then ``e2e`` with stages 0 and 1 as that mode has them);
  ``model_gt_rect_einthoven``: the model on GT-rectified pictures with the Einthoven switch on.

Usage:
    PYTHONPATH=src python bench/bench_stage2.py [--per-variant 2] [--variants 0001,0003,...]
        [--modes e2e,gt_rect,gt_rect_einthoven] [--stage2-checkpoint PATH] [--name NAME]
Writes bench/results/<name>.json (default bench_stage2.json). The GT-rectified modes also
report whether the per-lead quality flags are worth trusting: the lead SNR of leads flagged
"ok" against those flagged otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ecgtrace.commands.evaluate import evaluate  # noqa: E402
from ecgtrace.data.groundtruth import GroundTruth  # noqa: E402
from ecgtrace.paper import CANONICAL  # noqa: E402
from ecgtrace.submission import build_submission, read_test_csv, write_submission  # noqa: E402

ALL = "0001,0003,0004,0005,0006,0009,0010,0011,0012"


def make_data(out: Path, variants: list[str], per_variant: int, seed: int) -> Path:
    """A held-out test split (seed far from every training seed), rendered once and reused."""
    from ecgtrace.data.dataset import write_dataset

    marker = out / "bench_args.json"
    args = {"variants": variants, "per_variant": per_variant, "seed": seed}
    if marker.exists() and json.loads(marker.read_text()) == args:
        return out
    write_dataset(out, n=0, n_test=per_variant * len(variants), variants=tuple(variants), seed=seed,
                  workers=1, progress=True)
    marker.write_text(json.dumps(args))
    return out


def gt_rect_predictions(data: Path, stage2, ids: list[str], test_df) -> tuple[dict, dict, float]:
    """Stage 2 alone on GT-rectified test pictures: signals and per-lead quality flags per image."""
    import cv2

    from ecgtrace.train.stage2 import gt_rectify

    preds, flags, t_total = {}, {}, 0.0
    for image_id in ids:
        rows = test_df[test_df["id"] == image_id]
        fs = float(rows["fs"].iloc[0])
        n_samples = {str(k): int(n) for k, n in zip(rows["lead"], rows["number_of_rows"])}
        img = cv2.imread(str(data / "test" / f"{image_id}.png"))
        gt = GroundTruth.load(data / "test_gt" / f"{image_id}.gt.npz")
        rect = gt_rectify(img, gt, CANONICAL.size)
        t = time.perf_counter()
        out = stage2(rect, fs, n_samples=n_samples)
        preds[image_id], flags[image_id] = out.signals, out.quality
        t_total += time.perf_counter() - t
    return preds, flags, t_total / max(1, len(ids))


def flag_report(data: Path, test_df, preds: dict, flags: dict) -> dict:
    """Do the per-lead quality flags tell good reads from bad? Lead SNR (dB) of "ok" leads vs flagged ones."""
    import pandas as pd

    from ecgtrace.metric import snr_for_image

    sol = pd.read_csv(data / "test_solution.csv", dtype={"id": str})
    parts = sol["id"].str.split("_", expand=True)
    groups = {"ok": [], "flagged": []}
    for image_id, pred in preds.items():
        mine = sol[parts[0] == image_id]
        leads = parts.loc[mine.index, 2]
        truth = {lead: mine["value"].to_numpy()[(leads == lead).to_numpy()] for lead in dict.fromkeys(leads)}
        fs = float(test_df[test_df["id"] == image_id]["fs"].iloc[0])
        for lead, db in snr_for_image(truth, pred, fs).lead_db.items():
            groups["ok" if flags[image_id].get(lead) == "ok" else "flagged"].append(db)
    return {k: {"n": len(v), "median_db": float(np.median(v)) if v else None,
                "p10_db": float(np.percentile(v, 10)) if v else None} for k, v in groups.items()}


def score(data: Path, test_df, preds: dict, tag: str, out_dir: Path) -> dict:
    sub = build_submission(test_df, preds, missing="zeros")
    path = write_submission(sub, out_dir / f"submission_{tag}.csv")
    rep = evaluate(path, data, split="test", worst=3)
    return {"score_db": rep["score_db"], "per_variant": {v: r["score_db"] for v, r in rep["per_variant"].items()},
            "per_lead": {k: r["snr_db"] for k, r in rep["per_lead"].items()}, "n_images": rep["n_images"]}


def stage2_model_weights(checkpoint: str | None):
    """The stage-2 weights of the ``model_*`` modes: ``checkpoint``, else the shipped file (said in one line);
    neither is one line saying what to pass."""
    from ecgtrace.models.shipped import resolve_weights

    if checkpoint:
        if not Path(checkpoint).is_file():
            raise SystemExit(f"--stage2-checkpoint {checkpoint}: no such file")
        return checkpoint
    src = resolve_weights(2)
    if not src.uses_network:
        raise SystemExit("the model_* modes need stage-2 weights: none ship with this checkout "
                         "(src/ecgtrace/weights); pass --stage2-checkpoint PATH")
    print(f"model_* modes: the shipped stage-2 weights ({src.name})", flush=True)
    return src


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default=ALL)
    ap.add_argument("--per-variant", type=int, default=2)
    ap.add_argument("--seed", type=int, default=424242)
    ap.add_argument("--modes", default="e2e,gt_rect,gt_rect_einthoven")
    ap.add_argument("--checkpoints", default=None, help="stage 0/1/2 checkpoints folder for the e2e mode "
                                                        "(default: the shipped weights, else classical)")
    ap.add_argument("--classical", action="store_true", help="e2e mode: the classical paths, not the shipped weights")
    ap.add_argument("--stage2-checkpoint", default=None, help="a stage2_*.pth for the model_* modes")
    ap.add_argument("--name", default="bench_stage2")
    ap.add_argument("--work", default=str(ROOT / "outputs" / "bench_stage2"))
    args = ap.parse_args()

    from ecgtrace.commands.predict import predict_split
    from ecgtrace.stages.stage2 import Stage2

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    work = Path(args.work)
    data = make_data(work / f"data_{'-'.join(variants)}_{args.per_variant}_{args.seed}", variants,
                     args.per_variant, args.seed)
    test_df = read_test_csv(data / "test.csv")
    ids = list(dict.fromkeys(test_df["id"].astype(str)))
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if args.stage2_checkpoint and not any(m.startswith("model") for m in modes):
        modes += ["model_gt_rect", "model_e2e"]
    model_weights = stage2_model_weights(args.stage2_checkpoint) if any(m.startswith("model") for m in modes) else None
    results: dict = {"variants": variants, "per_variant_images": args.per_variant, "n_images": len(ids),
                     "seed": args.seed, "cpu_threads": os.environ.get("OMP_NUM_THREADS", "default"), "modes": {}}
    for mode in modes:
        t0 = time.time()
        if mode == "e2e":
            out = predict_split(data, "test", checkpoints=args.checkpoints, progress=True, classical=args.classical)
            path = write_submission(out.submission, work / "submission_e2e.csv")
            rep = evaluate(path, data, split="test", worst=3)
            res = {"score_db": rep["score_db"], "per_variant": {v: r["score_db"] for v, r in rep["per_variant"].items()},
                   "per_lead": {k: r["snr_db"] for k, r in rep["per_lead"].items()}, "n_images": rep["n_images"],
                   "failed": out.failed, "s_per_image": out.seconds / max(1, out.n_images)}
        elif mode == "model_e2e":
            tmp = None  # the shipped stage-2 weights are the pipeline's default
            if args.stage2_checkpoint:
                tmp = work / "ckpts_model_e2e"
                tmp.mkdir(parents=True, exist_ok=True)
                for old in tmp.glob("stage2_bench.*"):  # one at a time: a .pth left over would be found first
                    old.unlink()
                # its own suffix (.pth, .safetensors, .onnx), by which the pipeline reads it
                link = tmp / f"stage2_bench{Path(args.stage2_checkpoint).suffix.lower()}"
                link.symlink_to(Path(args.stage2_checkpoint).resolve())
            out = predict_split(data, "test", checkpoints=tmp, progress=True)
            path = write_submission(out.submission, work / "submission_model_e2e.csv")
            rep = evaluate(path, data, split="test", worst=3)
            res = {"score_db": rep["score_db"], "per_variant": {v: r["score_db"] for v, r in rep["per_variant"].items()},
                   "n_images": rep["n_images"], "failed": out.failed, "s_per_image": out.seconds / max(1, out.n_images)}
        elif mode in ("gt_rect", "gt_rect_einthoven", "model_gt_rect", "model_gt_rect_einthoven"):
            st = Stage2(checkpoint=model_weights if mode.startswith("model") else None,
                        einthoven=mode.endswith("einthoven"))
            preds, flags, spi = gt_rect_predictions(data, st, ids, test_df)
            res = score(data, test_df, preds, mode, work)
            res["stage2_s_per_image"] = spi
            res["flags"] = flag_report(data, test_df, preds, flags)
        else:
            raise SystemExit(f"unknown mode {mode}")
        res["seconds"] = round(time.time() - t0, 1)
        results["modes"][mode] = res
        pv = "  ".join(f"{v}:{s:.2f}" for v, s in res["per_variant"].items())
        print(f"{mode:>20}: {res['score_db']:.2f} dB overall | {pv}", flush=True)
        if "flags" in res:
            print(" " * 22 + "lead SNR by quality flag: " + "; ".join(
                f"{k} {r['n']} leads, median {r['median_db']:.1f} dB, p10 {r['p10_db']:.1f} dB"
                for k, r in res["flags"].items() if r["n"]), flush=True)
    out_path = ROOT / "bench" / "results" / f"{args.name}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(results, indent=2, default=str))
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
