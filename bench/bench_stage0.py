#!/usr/bin/env python
"""Stage 0 accuracy on a held-out synthetic set covering every variant and all 8 orientations.

    PYTHONPATH=src python bench/bench_stage0.py --checkpoint outputs/.../stage0_best.pth --n 63

Prints and writes bench/results/bench_stage0.json with, for the learned path (if a
checkpoint is given) and the classical path:
- orientation accuracy (8 classes; the classical path cannot see mirror images),
- marker recall and marker-centre error in canonical page px (predicted centres mapped
  through the page's ground-truth homography picture -> canonical, fitted on all 13 labels),
- normalized-page corner error: the true picture positions of the page corners (from the
  renderer's forward map) sent through the predicted homography, vs the canonical corners.
Pages are drawn with a seed no training run uses (records of SyntheticPages(seed=--seed)).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ecgtrace.geometry import apply_homography, resize_matrix  # noqa: E402
from ecgtrace.io import atomic_write  # noqa: E402
from ecgtrace.paper import CANONICAL, MARKERS, Page  # noqa: E402
from ecgtrace.stages.stage0 import Stage0  # noqa: E402
from ecgtrace.train.stage0 import canonical_homography  # noqa: E402


def page_corners_in_image(gt, clean_hw: tuple[int, int]) -> np.ndarray:
    """Picture px of the clean page's 4 corner pixels, by bilinear lookup in ``gt.fwd_map``."""
    h, w = clean_hw
    fm = np.asarray(gt.fwd_map, dtype=np.float64)
    s = float(gt.map_stride)
    out = []
    for x, y in [(0, 0), (w - 1, 0), (w - 1, h - 1), (0, h - 1)]:
        gx, gy = min(x / s, fm.shape[1] - 1.0), min(y / s, fm.shape[0] - 1.0)
        j0, i0 = int(np.floor(gx)), int(np.floor(gy))
        j1, i1 = min(j0 + 1, fm.shape[1] - 1), min(i0 + 1, fm.shape[0] - 1)
        fx, fy = gx - j0, gy - i0
        v = ((1 - fx) * (1 - fy) * fm[i0, j0] + fx * (1 - fy) * fm[i0, j1] + (1 - fx) * fy * fm[i1, j0]
             + fx * fy * fm[i1, j1])
        out.append(v)
    return np.array(out)


def canonical_corners(clean_hw: tuple[int, int]) -> np.ndarray:
    h, w = clean_hw
    m = resize_matrix(clean_hw, CANONICAL.size)
    return apply_homography(m, np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], dtype=np.float64))


def make_set(n: int, seed: int, dpi: float) -> list[dict]:
    """n held-out pages: variants round-robin, orientation (i * 3) % 8 so all 8 appear for every variant count."""
    from ecgtrace.data.synthetic import SyntheticPages, apply_variant, available_variants

    variants = available_variants()
    pages = SyntheticPages(n, seed=seed, page=Page(dpi=dpi))
    items = []
    for i in range(n):
        v = variants[i % len(variants)]
        c = (i // len(variants) + 3 * i) % 8
        img, gt, _, _ = pages.clean(i)
        clean_hw = img.shape[:2]
        try:
            img, gt = apply_variant(img, gt, v, np.random.default_rng([seed, i, 7]), orientation=c)
        except Exception as e:  # noqa: BLE001 - report a distortion failure, keep benchmarking the rest
            print(f"  (page {i}: variant {v} failed to render: {type(e).__name__}; skipped)")
            continue
        items.append({"i": i, "variant": v, "orientation": c, "image": img, "gt": gt, "clean_hw": clean_hw})
    return items


def evaluate(stage: Stage0, items: list[dict]) -> dict:
    rows = []
    t0 = time.time()
    for it in items:
        gt, img = it["gt"], it["image"]
        valid = np.ones(len(MARKERS), bool)
        h_gt, _ = canonical_homography(np.asarray(gt.markers), valid)
        row = {"variant": it["variant"], "orientation": it["orientation"]}
        try:
            page = stage(img)
        except Exception as e:  # noqa: BLE001 - a failure is a data point
            row.update(error=f"{type(e).__name__}: {e}", orient_ok=False, found=0, ok=False)
            rows.append(row)
            continue
        row["orient_ok"] = page.orientation == it["orientation"]
        row["rot_ok"] = page.orientation % 4 == it["orientation"] % 4
        row["ok"] = bool(page.ok)
        errs = []
        for k, m in enumerate(MARKERS):
            if m in page.markers:
                p = apply_homography(h_gt, np.asarray(page.markers[m])[None])[0]
                errs.append(float(np.linalg.norm(p - CANONICAL.label_centers[k])))
        row["found"] = len(errs)
        row["marker_errs"] = errs
        corners = page_corners_in_image(gt, it["clean_hw"])
        row["corner_err"] = float(np.mean(np.linalg.norm(apply_homography(page.homography, corners)
                                                         - canonical_corners(it["clean_hw"]), axis=1)))
        rows.append(row)
    dt = (time.time() - t0) / max(1, len(items))
    errs = np.array([e for r in rows for e in r.get("marker_errs", [])])
    corner = np.array([r["corner_err"] for r in rows if "corner_err" in r])
    per_variant = {}
    for v in sorted({r["variant"] for r in rows}):
        rv = [r for r in rows if r["variant"] == v]
        ev = np.array([e for r in rv for e in r.get("marker_errs", [])])
        cv = np.array([r["corner_err"] for r in rv if "corner_err" in r])
        per_variant[v] = {"n": len(rv), "orientation_acc": float(np.mean([r["orient_ok"] for r in rv])),
                          "marker_err_median_px": float(np.median(ev)) if len(ev) else None,
                          "corner_err_median_px": float(np.median(cv)) if len(cv) else None}
    return {
        "n_images": len(rows),
        "orientation_acc": float(np.mean([r["orient_ok"] for r in rows])),
        "rotation_acc_ignoring_flip": float(np.mean([r.get("rot_ok", False) for r in rows])),
        "homography_ok_frac": float(np.mean([r["ok"] for r in rows])),
        "marker_recall": float(sum(r["found"] for r in rows) / (len(MARKERS) * max(1, len(rows)))),
        "marker_err_median_px": float(np.median(errs)) if len(errs) else None,
        "marker_err_mean_px": float(np.mean(errs)) if len(errs) else None,
        "marker_err_p90_px": float(np.percentile(errs, 90)) if len(errs) else None,
        "corner_err_median_px": float(np.median(corner)) if len(corner) else None,
        "corner_err_mean_px": float(np.mean(corner)) if len(corner) else None,
        "errors": sum("error" in r for r in rows),
        "seconds_per_image": dt,
        "per_variant": per_variant,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=None, help="stage 0 checkpoint; without it only the classical path runs")
    ap.add_argument("--n", type=int, default=63, help="pages (default 63 = 7 per variant)")
    ap.add_argument("--seed", type=int, default=20261125, help="held-out seed (no training run uses it)")
    ap.add_argument("--dpi", type=float, default=100.0, help="page resolution the pictures are drawn at")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--flip-tta", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "bench_stage0.json"))
    args = ap.parse_args()
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    t0 = time.time()
    items = make_set(args.n, args.seed, args.dpi)
    print(f"held-out set: {len(items)} pages at {args.dpi:g} dpi, variants x 8 orientations "
          f"({time.time() - t0:.0f} s to render)")
    result: dict = {"n": len(items), "seed": args.seed, "dpi": args.dpi,
                    "orientation_counts": np.bincount([it["orientation"] for it in items], minlength=8).tolist()}
    paths = [("classical", Stage0())]
    if args.checkpoint:
        st = Stage0(args.checkpoint, device=args.device, flip_tta=args.flip_tta)
        result["checkpoint"] = args.checkpoint
        result["input_size"] = list(st.net.cfg.input_size)
        result["checkpoint_epoch"] = st.net.epoch
        paths.insert(0, ("model", st))
    for name, st in paths:
        r = evaluate(st, items)
        result[name] = r
        print(f"[{name}] orientation acc {r['orientation_acc']:.3f} (rotation only {r['rotation_acc_ignoring_flip']:.3f}); "
              f"markers found {r['marker_recall']:.3f}; marker error median {r['marker_err_median_px']} / mean "
              f"{r['marker_err_mean_px']} px; corner error median {r['corner_err_median_px']:.1f} / mean "
              f"{r['corner_err_mean_px']:.1f} px; homography ok {r['homography_ok_frac']:.2f}; "
              f"{r['seconds_per_image']:.2f} s/image")
        for v, pv in r["per_variant"].items():
            print(f"    {v}: n={pv['n']} orient {pv['orientation_acc']:.2f} marker med {pv['marker_err_median_px']} "
                  f"corner med {pv['corner_err_median_px']}")
    out = Path(args.out)
    with atomic_write(out) as tmp:
        tmp.write_text(json.dumps(result, indent=2, default=float))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
