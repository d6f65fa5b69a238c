"""End-to-end time per image on this machine, split by stage (load, stage 0, 1, 2) and writing outputs.

Usage:
    PYTHONPATH=src python bench/bench_e2e.py [--n 6] [--variants 0001,0003,0005] [--checkpoints DIR]
        [--device cpu] [--name bench_e2e]
Renders ``n`` held-out pages (cycling the variants), digitizes each through
``ecgtrace.pipeline.Pipeline`` (the first image is a warm-up and is not counted),
writes CSV + WFDB + JSON + overlay like ``ecgtrace digitize``, and prints/writes
mean and median seconds per stage to bench/results/<name>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=6)
    ap.add_argument("--variants", default="0001,0003,0005")
    ap.add_argument("--seed", type=int, default=515151)
    ap.add_argument("--checkpoints", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--name", default="bench_e2e")
    args = ap.parse_args()

    import torch

    from ecgtrace.data.synthetic import SyntheticPages
    from ecgtrace.pipeline import Pipeline

    variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    pages = SyntheticPages(args.n + 1, variants=variants, seed=args.seed)
    t = time.perf_counter()
    pipe = Pipeline(args.checkpoints, device=args.device)
    t_init = time.perf_counter() - t
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.n + 1):
            s = pages[i]
            t = time.perf_counter()
            res = pipe(s.image, fs=s.fs, name=f"img{i}")
            t_pipe = time.perf_counter() - t
            t = time.perf_counter()
            res.to_csv(Path(tmp) / f"img{i}.csv")
            res.to_wfdb(tmp, f"img{i}")
            res.to_json(Path(tmp) / f"img{i}.json")
            res.overlay(Path(tmp) / f"img{i}_overlay.png")
            t_write = time.perf_counter() - t
            if i == 0:
                continue  # warm-up
            r = dict(res.report["timing_s"])
            r.update(total=t_pipe, write_outputs=t_write, variant=s.variant)
            rows.append(r)
            print(f"  {s.variant}: " + "  ".join(f"{k} {v:.2f}s" for k, v in r.items() if k != "variant"), flush=True)
    keys = ["load", "stage0", "stage1", "stage2", "total", "write_outputs"]
    summary = {k: {"mean_s": float(np.mean([r[k] for r in rows])), "median_s": float(np.median([r[k] for r in rows]))}
               for k in keys}
    methods = res.report["method"]
    out = {
        "device": args.device, "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "omp_threads": os.environ.get("OMP_NUM_THREADS", "default"),
        "n_images": len(rows), "variants": list(variants), "methods": methods, "pipeline_init_s": t_init,
        "per_stage": summary, "per_image": rows,
        "note": "machine shared with other jobs while measured; the first image (warm-up) is not counted",
    }
    print(f"pipeline ({methods['stage0']}/{methods['stage1']}/{methods['stage2']}), {len(rows)} images, "
          f"{args.device}, init {t_init:.2f} s:")
    for k in keys:
        print(f"  {k:>14}: mean {summary[k]['mean_s']:.2f} s  median {summary[k]['median_s']:.2f} s")
    path = ROOT / "bench" / "results" / f"{args.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
