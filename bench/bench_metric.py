"""How long the official score takes on a 1,000-image submission at fs=500.

Builds a synthetic solution (random smooth signals; the values do not matter
for timing) and a noisy, time-shifted, shuffled submission, then times
``ecgtrace.metric.score`` -- parsing the ids, matching the rows, aligning all
12,000 leads and the power sums. Also times reading/writing the submission as
CSV and parquet, since ``ecgtrace evaluate`` pays for that too.

    PYTHONPATH=src python bench/bench_metric.py [--images 1000] [--fs 500]

Prints the figures and writes ``bench/results/metric.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ecgtrace.metric import score_breakdown  # noqa: E402
from ecgtrace.paper import LEADS  # noqa: E402
from ecgtrace.submission import read_submission, write_submission  # noqa: E402


def make_frames(n_images: int, fs: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Solution (id, fs, value) and a shuffled submission (id, value) with arrow-backed string ids."""
    rng = np.random.default_rng(seed)
    ids, truth, pred = [], [], []
    img = pa.array(np.arange(n_images).astype(str))
    for lead in LEADS:
        n = fs * 10 if lead == "II" else fs * 5 // 2
        img_rep = pc.take(img, pa.array(np.repeat(np.arange(n_images), n)))
        rows = pa.array(np.tile(np.arange(n), n_images).astype(str))
        ids.append(pc.binary_join_element_wise(img_rep, rows, pa.array([lead] * (n_images * n)), "_"))
        base = np.cumsum(rng.normal(0, 0.05, size=(n_images, n + 40)), axis=1)  # random-walk "signals"
        shift = rng.integers(-20, 21)  # within the 40-sample margin
        truth.append(base[:, 20:20 + n].ravel())
        pred.append((base[:, 20 + shift:20 + shift + n] + rng.normal(0, 0.02, size=(n_images, n)) + 0.1).ravel())
    ids_a = pa.chunked_array(ids)
    dtype = pd.ArrowDtype(pa.string())
    sol = pd.DataFrame({"id": pd.Series(ids_a, dtype=dtype), "fs": np.int32(fs), "value": np.concatenate(truth)})
    perm = rng.permutation(len(sol))
    # index = row of the solution, so ``sub.sort_index()`` gives the submission in the solution's order
    sub = pd.DataFrame({"id": pd.Series(ids_a.take(pa.array(perm)), dtype=dtype, index=perm),
                        "value": pd.Series(np.concatenate(pred)[perm], index=perm)})
    return sol, sub


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--fs", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "metric.json"))
    args = ap.parse_args()

    t0 = time.perf_counter()
    sol, sub = make_frames(args.images, args.fs)
    t_make = time.perf_counter() - t0
    print(f"built {args.images} images x 12 leads at fs={args.fs}: {len(sol):,} rows in {t_make:.1f} s")

    times, cpu, result = [], [], None
    for _ in range(args.repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        result = score_breakdown(sol, sub, "id")
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    print(f"score: {result.score_db:.4f} dB; wall {min(times):.2f} s, CPU {min(cpu):.2f} s (best of {args.repeat}; "
          f"wall {', '.join(f'{t:.2f}' for t in times)}; load avg {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    same = sub.sort_index()  # the submission in the solution's own row order: the common case
    t0, c0 = time.perf_counter(), time.process_time()
    score_breakdown(sol, same, "id")
    t_same, c_same = time.perf_counter() - t0, time.process_time() - c0
    print(f"same row order as the solution: wall {t_same:.2f} s, CPU {c_same:.2f} s")

    io = {}
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR", "/tmp")) as tmp:
        for ext in ("parquet", "csv"):
            path = Path(tmp) / f"sub.{ext}"
            t0 = time.perf_counter()
            write_submission(sub, path)
            tw = time.perf_counter() - t0
            t0 = time.perf_counter()
            back = read_submission(path)
            tr = time.perf_counter() - t0
            io[ext] = {"write_s": round(tw, 2), "read_s": round(tr, 2), "mb": round(path.stat().st_size / 1e6, 1)}
            print(f"{ext}: write {tw:.2f} s, read {tr:.2f} s, {io[ext]['mb']} MB ({len(back):,} rows)")
        # the whole `ecgtrace evaluate` path: read both files, score, build the report
        from ecgtrace.commands.evaluate import evaluate

        sol_path = Path(tmp) / "solution.parquet"
        sol.to_parquet(sol_path, index=False)
        t0, c0 = time.perf_counter(), time.process_time()
        rep = evaluate(Path(tmp) / "sub.parquet", sol_path)
        t_eval, c_eval = time.perf_counter() - t0, time.process_time() - c0
        print(f"evaluate (parquet in, report out): wall {t_eval:.2f} s, CPU {c_eval:.2f} s, {rep['score_db']} dB")

    out = {
        "images": args.images, "fs": args.fs, "rows": len(sol), "score_db": round(result.score_db, 4),
        "score_seconds": round(min(times), 3), "score_seconds_all": [round(t, 3) for t in times],
        "score_cpu_seconds": round(min(cpu), 3), "per_image_ms": round(1000 * min(times) / args.images, 3),
        "same_order_seconds": round(t_same, 3), "same_order_cpu_seconds": round(c_same, 3), "io": io,
        "evaluate_seconds": round(t_eval, 2), "evaluate_cpu_seconds": round(c_eval, 2),
        "cpu_count": os.cpu_count(), "load_avg_1min": round(os.getloadavg()[0], 2),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
