"""The stage-2 network alone on this machine: seconds a page for each number of strips a CPU pass reads.

Usage:
    PYTHONPATH=src OMP_NUM_THREADS=2 python bench/bench_network.py [--images ../shared/eik-dev] [--n 4]
        [--per-pass 1,2,4,8] [--repeat 3] [--precision auto|fp32|bf16|int8] [--name bench_network]

Reads ``n`` pictures of a folder (its sub-folders in turn, as ``bench_e2e.py --images``), scales each
to the canonical 200 dpi page and times :meth:`ecgtrace.models.stage2.Stage2Model.row_logits` with the
shipped weights in ``--precision`` (int8: their shipped int8 network; four row strips and, with the mirrored read, four more) for each value of
``--per-pass`` (:data:`~ecgtrace.models.stage2.CPU_STRIPS_PER_PASS`), the values interleaved over
``--repeat`` rounds so that a busy moment of the machine does not fall on one of them. It checks that
every grouping gives the logits of the first (the strips are independent: the same to the bit with the
shipped weights under bf16, to float rounding where another batch size picks other kernels; over 1e-4
is an error) and writes the median seconds a page to bench/results/<name>.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", default=str(ROOT.parent / "shared" / "eik-dev"), help="folder of pictures")
    ap.add_argument("--n", type=int, default=4, help="pictures to read")
    ap.add_argument("--per-pass", default="1,2,4,8", help="strips per CPU pass to compare, comma-separated")
    ap.add_argument("--repeat", type=int, default=3, help="rounds over all values")
    ap.add_argument("--precision", default=None,
                    help="auto, fp32, bf16 (the torch weights) or int8 (the shipped int8 network; default: "
                         "$ECGTRACE_PRECISION, else what auto picks here)")
    ap.add_argument("--name", default="bench_network")
    args = ap.parse_args()
    try:
        per_pass = [int(v) for v in args.per_pass.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"--per-pass: whole numbers separated by commas, got {args.per_pass!r}") from None
    if not per_pass or min(per_pass) < 1:
        raise SystemExit("--per-pass: give at least one number of strips, each 1 or more")
    if args.n < 1 or args.repeat < 1:
        raise SystemExit(f"--n and --repeat must be 1 or more, got --n {args.n} --repeat {args.repeat}")

    import cv2
    import torch

    from bench_e2e import folder_pages
    from ecgtrace.io import write_json
    from ecgtrace.models import stage2
    from ecgtrace.models.shipped import WeightsSource, shipped_entry
    from ecgtrace.paper import CANONICAL

    entry = shipped_entry(2)
    if entry is None:
        raise SystemExit("no stage-2 weights ship with this checkout (src/ecgtrace/weights); nothing to time")
    source = stage2.network_source(WeightsSource.from_entry(entry), "cpu", args.precision)
    model = stage2.load_stage2(source.path, backend=source.backend, precision=args.precision)
    pages = folder_pages(args.images, args.n)
    rects = [cv2.resize(p.image, (CANONICAL.width_px, CANONICAL.height_px), interpolation=cv2.INTER_AREA)
             for p in pages]
    times: dict[int, list[float]] = {k: [] for k in per_pass}
    reference: list[torch.Tensor] = [model.row_logits(r).logits for r in rects]  # warm-up, and the logits to match
    diff = {k: 0.0 for k in per_pass}  # largest logit difference from the reference
    default = stage2.CPU_STRIPS_PER_PASS
    try:
        for _ in range(args.repeat):
            for k in per_pass:
                stage2.CPU_STRIPS_PER_PASS = k
                for rect, ref in zip(rects, reference):
                    t = time.perf_counter()
                    out = model.row_logits(rect).logits
                    times[k].append(time.perf_counter() - t)
                    diff[k] = max(diff[k], float((out - ref).abs().max()))
    finally:
        stage2.CPU_STRIPS_PER_PASS = default
    strips = 2 * stage2.N_ROWS if model.tta else stage2.N_ROWS
    print(f"stage-2 network, {len(rects)} pages x {args.repeat} rounds, {strips} strips a page, "
          f"precision {model.precision}, {torch.get_num_threads()} threads:")
    rows = {}
    for k in per_pass:
        med = float(np.median(times[k]))
        rows[str(k)] = {"median_s": med, "mean_s": float(np.mean(times[k])), "max_logit_diff": diff[k]}
        mark = "  (default)" if k == default else ""
        same = "the same" if diff[k] == 0 else f"max difference {diff[k]:.1e}" + (" TOO LARGE" if diff[k] > 1e-4 else "")
        print(f"  {k} strips a pass: {med:.3f} s a page (median), logits {same}{mark}")
    out = ROOT / "bench" / "results" / f"{args.name}.json"
    write_json({"images": args.images, "n_pages": len(rects), "repeat": args.repeat, "strips_per_page": strips,
                "precision": model.precision, "torch_threads": torch.get_num_threads(),
                "default_per_pass": default, "per_pass": rows}, out)
    print(f"wrote {out}")
    return 0 if max(diff.values()) <= 1e-4 else 1


if __name__ == "__main__":
    raise SystemExit(main())
