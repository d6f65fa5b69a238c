"""Stage 1 accuracy on held-out synthetic pages of every variant.

For each page: render (``SyntheticPages``, a seed no training run uses), distort into the variant,
simulate stage 0 (the homography from the ground-truth lead-label markers to their canonical places;
``--stage0 classical`` runs the classical stage 0 instead), run stage 1, then send the ground-truth
grid nodes and trace points of the normalized page through the inverse of the rectification map and
compare them with where ``paper.Page`` (the clean render) puts them. Errors are in canonical px
(200 dpi; 7.87 px = 1 mm).

Methods: ``none`` (stage 0 alone, no rectification), ``classical`` (no checkpoint), and with
``--checkpoint``: ``model`` (network nodes refined by the classical sub-pixel measurement) and
``model_raw`` (network nodes as decoded).

    PYTHONPATH=src python bench/bench_stage1.py --n 3 [--checkpoint outputs/.../stage1_best.pth]

Prints a table and writes bench/results/stage1.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ecgtrace import geometry  # noqa: E402
from ecgtrace.data.synthetic import ALL_VARIANTS, SyntheticPages, available_variants  # noqa: E402
from ecgtrace.io import atomic_write  # noqa: E402
from ecgtrace.paper import CANONICAL  # noqa: E402
from ecgtrace.stages import lattice as L  # noqa: E402
from ecgtrace.stages.stage0 import Stage0  # noqa: E402
from ecgtrace.stages.stage1 import Stage1  # noqa: E402
from ecgtrace.train.stage1 import simulate_stage0  # noqa: E402

PHOTO_VARIANTS = ("0005", "0006", "0009", "0010")  # photos: perspective + curl / creases / crumples
HELD_OUT_SEED = 7_777_777  # training uses DATA.SYNTHETIC_SEED (0) and seed + 1_000_003 for validation


def _inside(p: np.ndarray) -> np.ndarray:
    return np.isfinite(p).all(1) & (p[:, 0] >= 0) & (p[:, 0] <= CANONICAL.width_px - 1) & \
        (p[:, 1] >= 0) & (p[:, 1] <= CANONICAL.height_px - 1)


def page_errors(map_xy: np.ndarray, pts_in: np.ndarray, pts_canon: np.ndarray) -> np.ndarray:
    """|inverse-mapped input point - canonical point| for points that lie on the normalized page."""
    ok = _inside(pts_in)
    if not ok.any():
        return np.zeros(0)
    rect = geometry.invert_points(map_xy, pts_in[ok], init=pts_canon[ok])
    return np.linalg.norm(rect - pts_canon[ok], axis=1)


def summarize(e: list[np.ndarray]) -> dict[str, float]:
    a = np.concatenate(e) if e else np.zeros(0)
    if not len(a):
        return {"median": float("nan"), "p95": float("nan"), "n": 0}
    return {"median": float(np.median(a)), "p95": float(np.percentile(a, 95)), "n": int(len(a))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3, help="pages per variant")
    ap.add_argument("--variants", default=",".join(ALL_VARIANTS))
    ap.add_argument("--checkpoint", default=None, help="stage 1 checkpoint to bench as well")
    ap.add_argument("--seed", type=int, default=HELD_OUT_SEED)
    ap.add_argument("--trace-step", type=int, default=8, help="use every k-th trace vertex")
    ap.add_argument("--stage0", choices=("gt", "classical"), default="gt",
                    help="what normalizes the page first: the ground-truth marker homography (stage 1 alone), "
                         "or the classical stage 0 (the chain a fresh install runs)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "stage1.json"))
    args = ap.parse_args()

    usable = set(available_variants())
    variants = [v for v in args.variants.split(",") if v in usable]
    stages: dict[str, Stage1 | None] = {"none": None, "classical": Stage1(method="classical")}
    if args.checkpoint:
        stages["model"] = Stage1(checkpoint=args.checkpoint, refine=True)
        stages["model_raw"] = Stage1(checkpoint=args.checkpoint, refine=False)

    grid: dict[tuple[str, str], list[np.ndarray]] = {}
    trace: dict[tuple[str, str], list[np.ndarray]] = {}
    passed: dict[tuple[str, str], int] = {}
    secs: dict[str, list[float]] = {m: [] for m in stages}
    pages = []
    for v in variants:
        sp = SyntheticPages(args.n, variants=(v,), seed=args.seed)
        for k in range(args.n):
            s = sp[k]
            _, clean_gt, _, _ = sp.clean(k)
            if args.stage0 == "gt":
                img, gt, _ = simulate_stage0(s.image, s.gt, CANONICAL)
            else:
                norm = Stage0()(s.image)
                img, gt = norm.image, s.gt.transformed(lambda p, h=norm.homography: geometry.apply_homography(h, p),
                                                       CANONICAL.size)
            g_in, g_can = gt.grid_points, L.canonical_points(gt.grid_index)
            t_in = np.concatenate([gt.traces[key][:: args.trace_step] for key in gt.traces])
            t_can = np.concatenate([clean_gt.traces[key][:: args.trace_step] for key in gt.traces])
            row = {"variant": v, "page": k, "grid_visible": bool(gt.grid_visible)}
            for name, st in stages.items():
                t0 = time.time()
                if st is None:
                    map_xy, ok, conf, err = geometry.identity_map(*CANONICAL.size), True, 1.0, float("nan")
                else:
                    r = st(img)
                    map_xy, ok, conf, err = r.map_xy, r.ok, r.confidence, r.grid_error_px
                secs[name].append(time.time() - t0)
                eg = page_errors(map_xy, g_in, g_can)
                et = page_errors(map_xy, t_in, t_can)
                grid.setdefault((name, v), []).append(eg)
                trace.setdefault((name, v), []).append(et)
                passed[(name, v)] = passed.get((name, v), 0) + (0 if ok else 1)
                row[name] = {"ok": bool(ok), "confidence": float(conf), "grid_error_px": float(err),
                             "grid_median": float(np.median(eg)) if len(eg) else None,
                             "trace_median": float(np.median(et)) if len(et) else None}
            pages.append(row)
            print(f"{v} page {k}: " + "  ".join(
                f"{m} {row[m]['grid_median']:.2f}/{row[m]['trace_median']:.2f}{'' if row[m]['ok'] else ' (passed through)'}"
                for m in stages if row[m]["grid_median"] is not None), flush=True)

    results: dict = {"methods": {}, "pages": pages}
    print(f"\n{'method':<11}{'variant':<9}{'grid med':>9}{'grid p95':>9}{'trace med':>10}{'trace p95':>10}  passed-through")
    for m in stages:
        per = {}
        groups = [(v, [v]) for v in variants] + [("photo", [v for v in variants if v in PHOTO_VARIANTS]),
                                               ("all", variants)]
        for label, vs in groups:
            if not vs:
                continue
            g = summarize([e for v in vs for e in grid.get((m, v), [])])
            t = summarize([e for v in vs for e in trace.get((m, v), [])])
            npass = sum(passed.get((m, v), 0) for v in vs)
            per[label] = {"grid": g, "trace": t, "passed_through": npass, "pages": args.n * len(vs)}
            print(f"{m:<11}{label:<9}{g['median']:>9.2f}{g['p95']:>9.2f}{t['median']:>10.2f}{t['p95']:>10.2f}"
                  f"  {npass}/{args.n * len(vs)}")
        results["methods"][m] = {"by_variant": per, "seconds_per_page": float(np.mean(secs[m]))}
    results["settings"] = {"n_per_variant": args.n, "seed": args.seed, "checkpoint": args.checkpoint,
                           "units": "canonical px (200 dpi)",
                           "stage0": {"gt": "ground-truth marker homography", "classical": "classical stage 0"}[args.stage0],
                           "device": "cpu", "gpu": "none this session", "machine": platform.platform()}
    out = Path(args.out)
    with atomic_write(out) as tmp:
        tmp.write_text(json.dumps(results, indent=1))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
