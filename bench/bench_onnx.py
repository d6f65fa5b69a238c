"""torch vs onnxruntime, side by side in one run, on ECG-Image-Kit pages: logits, signals and time.

Usage:
    PYTHONPATH=src OMP_NUM_THREADS=1 python bench/bench_onnx.py [--data ../shared/eik-dev] [--n 6]
        [--checkpoints DIR] [--name bench_onnx]

Builds the default pipeline (the shipped weights, or ``--checkpoints``) once with ``backend="torch"``
and once with ``backend="onnx"`` (the first ONNX build exports the torch weights into the cache; its
time is reported apart), then for ``n`` pages (cycling the sub-folders of ``--data``) digitizes each
page with both, in alternating order so that both see the same load. Per page: the stage-2 network's
column log-probabilities of the same rectified page from both backends (max difference), the
network time alone, the signals (max difference, mV) and the end-to-end time. Prints the figures and
writes bench/results/<name>.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ecgtrace.data.eik import find_pages  # noqa: E402
from ecgtrace.io import write_json  # noqa: E402


def _pick(pages: list, n: int) -> list:
    """``n`` pages, taking the sub-folders in turn."""
    by: dict[str, list] = {}
    for p in pages:
        by.setdefault(p.subset, []).append(p)
    out, i = [], 0
    while len(out) < min(n, len(pages)):
        for sub in sorted(by):
            if i < len(by[sub]) and len(out) < n:
                out.append(by[sub][i])
        i += 1
    return out


def _timed(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "eik-dev"))
    ap.add_argument("--n", type=int, default=6)
    ap.add_argument("--checkpoints", default=None)
    ap.add_argument("--name", default="bench_onnx")
    args = ap.parse_args()

    import torch
    from loguru import logger

    from ecgtrace.models.onnx_backend import cache_dir, logits_agree
    from ecgtrace.pipeline import Pipeline

    logger.remove()
    logger.add(sys.stderr, level=os.environ.get("ECGTRACE_LOG", "WARNING"), format="{message}")
    pages = _pick(find_pages(args.data), args.n + 1)
    pipes, init_s = {}, {}
    for be in ("torch", "onnx"):
        pipes[be], init_s[be] = _timed(Pipeline, args.checkpoints, backend=be)
    nets = {be: p.stage2.model for be, p in pipes.items()}
    if nets["torch"] is None:
        print("stage 2 runs its classical reader (no weights): nothing for ONNX to run")
        return 1
    nets["torch"].precision = "fp32"  # the export is fp32: compare like with like (bf16 is bench_e2e's)
    print(f"stage 2: {pipes['onnx'].stage2.weights.label()}; pipeline build torch {init_s['torch']:.1f} s, "
          f"onnx {init_s['onnx']:.1f} s (exports into {cache_dir()} when the cache lacks the file)")
    rows = []
    for i, page in enumerate(pages):
        order = ("torch", "onnx") if i % 2 == 0 else ("onnx", "torch")
        res, total = {}, {}
        for be in order:
            res[be], total[be] = _timed(pipes[be], page.image, fs=page.fs)
        rect = res["torch"].rectified.image
        logits, net_s = {}, {}
        for be in order:
            logits[be], net_s[be] = _timed(nets[be].row_logits, rect)
        ok, diff = logits_agree(logits["onnx"].logits.numpy(), logits["torch"].logits.numpy())
        sig = float(np.nanmax(np.abs(res["onnx"].signals.to_numpy(float) - res["torch"].signals.to_numpy(float))))
        same_quality = res["onnx"].report["lead_quality"] == res["torch"].report["lead_quality"]
        if i == 0:
            continue  # warm-up (first-call allocations in both runtimes)
        row = {"page": f"{page.subset}/{page.image_id}", "logit_max_diff": diff, "logits_within_tolerance": ok,
               "signal_max_diff_mv": sig, "same_lead_quality": same_quality,
               "network_s": net_s, "total_s": total}
        rows.append(row)
        print(f"  {row['page']:>20}: logits diff {diff:.1e}, signals diff {sig:.1e} mV, network torch "
              f"{net_s['torch']:.2f} s / onnx {net_s['onnx']:.2f} s, total torch {total['torch']:.2f} s / "
              f"onnx {total['onnx']:.2f} s", flush=True)

    def mean(key: str, be: str) -> float:
        return float(np.mean([r[key][be] for r in rows]))

    summary = {
        "pages": len(rows), "logit_max_diff": max(r["logit_max_diff"] for r in rows),
        "all_logits_within_tolerance": all(r["logits_within_tolerance"] for r in rows),
        "signal_max_diff_mv": max(r["signal_max_diff_mv"] for r in rows),
        "network_s": {be: mean("network_s", be) for be in ("torch", "onnx")},
        "total_s": {be: mean("total_s", be) for be in ("torch", "onnx")},
    }
    summary["network_time_ratio_onnx_over_torch"] = summary["network_s"]["onnx"] / summary["network_s"]["torch"]
    summary["total_time_ratio_onnx_over_torch"] = summary["total_s"]["onnx"] / summary["total_s"]["torch"]
    print(f"{len(rows)} pages: max logit difference {summary['logit_max_diff']:.2e} "
          f"(within tolerance: {summary['all_logits_within_tolerance']}), max signal difference "
          f"{summary['signal_max_diff_mv']:.2e} mV")
    print(f"stage-2 network per page: torch {summary['network_s']['torch']:.2f} s, onnx "
          f"{summary['network_s']['onnx']:.2f} s (ratio {summary['network_time_ratio_onnx_over_torch']:.2f}); "
          f"end to end: torch {summary['total_s']['torch']:.2f} s, onnx {summary['total_s']['onnx']:.2f} s "
          f"(ratio {summary['total_time_ratio_onnx_over_torch']:.2f})")
    out = ROOT / "bench" / "results" / f"{args.name}.json"
    write_json({"summary": summary, "per_page": rows, "weights": pipes["onnx"].stage2.weights.to_dict(),
                     "pipeline_init_s": init_s, "torch_threads": torch.get_num_threads(),
                     "omp_threads": os.environ.get("OMP_NUM_THREADS", "default"),
                     "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                     "note": "torch and onnx alternate per page; the machine may be shared with other jobs"}, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
