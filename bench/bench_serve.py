"""Upload -> result time of ``ecgtrace serve`` for one page, split into the pipeline's own time and the server's.

Usage:
    OMP_NUM_THREADS=1 PYTHONPATH=src python bench/bench_serve.py [--n 5] [--variant 0001] [--seed 515151]
        [--checkpoints DIR] [--classical] [--name bench_serve]

Starts the real command (``python -m ecgtrace serve --port 0``) in a child process, renders
one page the way ``bench_e2e.py`` does (``SyntheticPages``, same default seed), posts it
``n + 1`` times (the first is a warm-up and is not counted) and fetches the overlay each time,
as the page does. Per request:

    wall      upload -> JSON answer, measured by the client
    pipeline  the pipeline's own stage timers (the figure bench_e2e.py reports as ``total``)
    outputs   writing CSV, WFDB (+ zip), JSON and overlay inside the job
    http      the rest: transfer, form parsing, the JSON answer (~19k numbers)
    overlay   fetching the overlay PNG afterwards

Writes bench/results/<name>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen, str, float]:
    """``ecgtrace serve --port 0`` in a child process: (process, base url, seconds until it listened)."""
    cmd = [sys.executable, "-m", "ecgtrace", "serve", "--port", "0", "--device", args.device]
    if args.checkpoints:
        cmd += ["--checkpoints", args.checkpoints]
    if args.classical:
        cmd.append("--classical")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    for line in proc.stdout:  # the command prints its address once the models are loaded
        print(f"  [serve] {line.rstrip()}", flush=True)
        m = re.search(r"open (http://\S+?)/? in a browser", line)
        if m:
            # keep reading its log, or a full pipe would stall the server
            threading.Thread(target=lambda: [print(f"  [serve] {x.rstrip()}", flush=True) for x in proc.stdout],
                             daemon=True).start()
            return proc, m.group(1), time.perf_counter() - t
    raise SystemExit(f"the server exited (status {proc.wait()}) before it listened")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5, help="timed requests (after one warm-up)")
    ap.add_argument("--variant", default="0001", help="SyntheticPages variant of the page (default 0001, clean)")
    ap.add_argument("--seed", type=int, default=515151)
    ap.add_argument("--checkpoints", default=None)
    ap.add_argument("--classical", action="store_true", help="serve with the classical paths only")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--name", default="bench_serve")
    args = ap.parse_args()

    import cv2
    import httpx

    from ecgtrace.data.synthetic import SyntheticPages

    page = SyntheticPages(1, variants=(args.variant,), seed=args.seed)[0]
    ok, buf = cv2.imencode(".png", page.image)
    data = buf.tobytes()
    print(f"page: variant {page.variant}, {page.image.shape[1]}x{page.image.shape[0]} px, PNG {len(data) / 1e6:.2f} MB, "
          f"fs {page.fs:g} Hz", flush=True)
    proc, url, t_start = start_server(args)
    rows = []
    try:
        with httpx.Client(base_url=url, timeout=600) as client:
            for i in range(args.n + 1):
                t = time.perf_counter()
                r = client.post("/api/digitize", files={"file": ("page.png", data, "image/png")},
                                data={"fs": str(page.fs)})
                wall = time.perf_counter() - t
                if r.status_code != 200:
                    raise SystemExit(f"request {i}: {r.status_code} {r.text[:300]}")
                ans = r.json()
                t = time.perf_counter()
                client.get(ans["links"]["overlay.png"]).raise_for_status()
                t_overlay = time.perf_counter() - t
                if i == 0:
                    methods = ans["report"]["method"]
                    continue  # warm-up
                ts = ans["timing_s"]
                row = {"wall": wall, "pipeline": ts["pipeline"], "outputs": ts["job"] - ts["pipeline"],
                       "http": wall - ts["job"], "overlay": t_overlay, "server_overhead": wall - ts["pipeline"],
                       "stages": ans["report"]["timing_s"], "answer_bytes": len(r.content)}
                rows.append(row)
                print(f"  request {i}: wall {wall:.2f} s = pipeline {row['pipeline']:.2f} + outputs "
                      f"{row['outputs']:.2f} + http {row['http']:.2f}; overlay fetch {t_overlay:.2f} s", flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    keys = ["wall", "pipeline", "outputs", "http", "server_overhead", "overlay"]
    summary = {k: {"mean_s": float(np.mean([r[k] for r in rows])), "median_s": float(np.median([r[k] for r in rows]))}
               for k in keys}
    out = {
        "device": args.device, "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "omp_threads": os.environ.get("OMP_NUM_THREADS", "default"), "variant": page.variant, "png_bytes": len(data),
        "methods": methods, "server_start_s": t_start, "n_requests": len(rows), "summary": summary, "requests": rows,
        "note": "machine shared with other jobs while measured; the first request (warm-up) is not counted",
    }
    print(f"serve ({methods['stage0']}/{methods['stage1']}/{methods['stage2']}), {len(rows)} requests, server up in "
          f"{t_start:.1f} s:")
    for k in keys:
        print(f"  {k:16s} mean {summary[k]['mean_s']:6.2f} s   median {summary[k]['median_s']:6.2f} s")
    res_dir = ROOT / "bench" / "results"
    res_dir.mkdir(parents=True, exist_ok=True)
    (res_dir / f"{args.name}.json").write_text(json.dumps(out, indent=2))
    print(f"-> {res_dir / (args.name + '.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
