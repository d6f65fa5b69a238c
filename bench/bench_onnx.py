"""torch fp32 vs onnxruntime fp32 vs the shipped int8 network, side by side in one run, on ECG-Image-Kit pages.

Usage:
    PYTHONPATH=src OMP_NUM_THREADS=1 python bench/bench_onnx.py [--data ../shared/eik-dev] [--n 6]
        [--checkpoints DIR] [--name bench_onnx]

Builds the default pipeline (the shipped weights, or ``--checkpoints``) in three configurations:
"torch" (``backend="torch", precision="fp32"``, the reference), "onnx" (``backend="onnx",
precision="fp32"``: the first build exports the torch weights into the cache; build times are reported
apart) and "int8" (``precision="int8"``: the int8 ONNX network the manifest ships for stage 2; skipped,
with a line saying why, under ``--checkpoints`` or when none ships). Then for ``n`` pages (cycling the
sub-folders of ``--data``) digitizes each page with all of them, in rotating order so that all see the
same load; the first page is a warm-up, not counted. Per page and configuration other than torch,
against torch on the same rectified page: the stage-2 network's column log-probabilities (max
difference; onnx is checked against ``logits_agree``'s tolerance, int8 is not expected within it), the
decoded column positions of the four rows (mean absolute shift, px of the network's page), the signals
(max difference, mV) and whether the lead quality flags are the same; per configuration, the network
time alone and the end-to-end time. Prints the figures and writes bench/results/<name>.json (the
onnx figures under their unprefixed keys, the int8 ones prefixed ``int8_``).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


def _timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def _key(name: str, key: str) -> str:
    """The JSON key of a figure of configuration ``name``: onnx's keep their old unprefixed names."""
    return key if name == "onnx" else f"{name}_{key}"


def _configs(checkpoints: str | None) -> dict[str, dict[str, str]]:
    """Pipeline keyword arguments per configuration; int8 only where the manifest ships its network."""
    configs = {"torch": {"backend": "torch", "precision": "fp32"}, "onnx": {"backend": "onnx", "precision": "fp32"}}
    from ecgtrace.models.shipped import shipped_entry

    if checkpoints is not None:
        print("int8: skipped (--checkpoints given; only the shipped weights have an int8 network)")
    elif not getattr(shipped_entry(2), "int8", None):
        print("int8: skipped (the shipped manifest lists no int8 network for stage 2)")
    else:
        configs["int8"] = {"backend": "torch", "precision": "int8"}
    return configs


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
    from ecgtrace.train.quantize import decoded_rows

    logger.remove()
    logger.add(sys.stderr, level=os.environ.get("ECGTRACE_LOG", "WARNING"), format="{message}")
    pages = _pick(find_pages(args.data), args.n + 1)
    configs = _configs(args.checkpoints)
    names = list(configs)
    others = names[1:]
    pipes, init_s = {}, {}
    for name, kw in configs.items():
        pipes[name], init_s[name] = _timed(Pipeline, args.checkpoints, **kw)
    nets = {name: p.stage2.model for name, p in pipes.items()}
    if nets["torch"] is None:
        print("stage 2 runs its classical reader (no weights): nothing for ONNX to run")
        return 1
    for name in names:
        net = nets[name]
        print(f"{name:>5}: {pipes[name].stage2.weights.label()} ({pipes[name].stage2.weights.backend}, "
              f"{net.precision}); pipeline build {init_s[name]:.1f} s")
    print(f"(onnx fp32 exports into {cache_dir()} when the cache lacks the file)")
    rows = []
    for i, page in enumerate(pages):
        order = names[i % len(names):] + names[:i % len(names)]
        res, total, logits, net_s = {}, {}, {}, {}
        for name in order:
            res[name], total[name] = _timed(pipes[name], page.image, fs=page.fs)
        rect = res["torch"].rectified.image
        for name in order:
            logits[name], net_s[name] = _timed(nets[name].row_logits, rect)
        if i == 0:
            continue  # warm-up (first-call allocations in every runtime)
        ref_logits, ref_cols = logits["torch"].logits.numpy(), decoded_rows(logits["torch"].logits)
        ref_sig, ref_quality = res["torch"].signals.to_numpy(float), res["torch"].report["lead_quality"]
        row: dict[str, Any] = {"page": f"{page.subset}/{page.image_id}"}
        for name in others:
            ok, diff = logits_agree(logits[name].logits.numpy(), ref_logits)
            row[_key(name, "logit_max_diff")] = diff
            if name == "onnx":
                row["logits_within_tolerance"] = ok
            row[_key(name, "decoded_shift_px")] = float(np.mean(np.abs(decoded_rows(logits[name].logits) - ref_cols)))
            row[_key(name, "signal_max_diff_mv")] = float(np.nanmax(np.abs(res[name].signals.to_numpy(float) - ref_sig)))
            row[_key(name, "same_lead_quality")] = res[name].report["lead_quality"] == ref_quality
        row["network_s"], row["total_s"] = net_s, total
        rows.append(row)
        print(f"  {row['page']:>20}: " + "; ".join(
            f"{name} logits diff {row[_key(name, 'logit_max_diff')]:.1e}, shift "
            f"{row[_key(name, 'decoded_shift_px')]:.3f} px, signals diff {row[_key(name, 'signal_max_diff_mv')]:.1e} mV"
            for name in others), flush=True)
        print(f"  {'':>20}  network " + " / ".join(f"{n} {net_s[n]:.2f} s" for n in names)
              + ", total " + " / ".join(f"{n} {total[n]:.2f} s" for n in names), flush=True)
    if not rows:
        print("no pages counted (need --n >= 1 and more than one page)")
        return 1

    summary: dict[str, Any] = {"pages": len(rows), "configurations": names}
    for key in ("network_s", "total_s"):
        summary[key] = {n: float(np.mean([r[key][n] for r in rows])) for n in names}
    for name in others:
        summary[_key(name, "logit_max_diff")] = max(r[_key(name, "logit_max_diff")] for r in rows)
        summary[_key(name, "decoded_shift_px")] = float(np.mean([r[_key(name, "decoded_shift_px")] for r in rows]))
        summary[_key(name, "signal_max_diff_mv")] = max(r[_key(name, "signal_max_diff_mv")] for r in rows)
        summary[_key(name, "all_same_lead_quality")] = all(r[_key(name, "same_lead_quality")] for r in rows)
        for key in ("network", "total"):
            summary[f"{key}_time_ratio_{name}_over_torch"] = summary[f"{key}_s"][name] / summary[f"{key}_s"]["torch"]
    summary["all_logits_within_tolerance"] = all(r["logits_within_tolerance"] for r in rows)

    print(f"{len(rows)} pages; mean per page: stage-2 network " + ", ".join(
        f"{n} {summary['network_s'][n]:.2f} s" for n in names) + "; end to end " + ", ".join(
        f"{n} {summary['total_s'][n]:.2f} s" for n in names))
    for name in others:
        print(f"{name:>5} vs torch fp32: network time x{summary[f'network_time_ratio_{name}_over_torch']:.2f}, "
              f"end to end x{summary[f'total_time_ratio_{name}_over_torch']:.2f}; max logit difference "
              f"{summary[_key(name, 'logit_max_diff')]:.2e}"
              + (f" (within tolerance: {summary['all_logits_within_tolerance']})" if name == "onnx" else "")
              + f", mean decoded-column shift {summary[_key(name, 'decoded_shift_px')]:.3f} px, max signal "
              f"difference {summary[_key(name, 'signal_max_diff_mv')]:.2e} mV, same lead quality: "
              f"{summary[_key(name, 'all_same_lead_quality')]}")
    out = ROOT / "bench" / "results" / f"{args.name}.json"
    write_json({"summary": summary, "per_page": rows, "weights": pipes["onnx"].stage2.weights.to_dict(),
                "weights_by_configuration": {n: p.stage2.weights.to_dict() for n, p in pipes.items()},
                "precision": {n: net.precision for n, net in nets.items()},
                "pipeline_init_s": init_s, "torch_threads": torch.get_num_threads(),
                "omp_threads": os.environ.get("OMP_NUM_THREADS", "default"),
                "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                "note": "the configurations take each page in rotating order; the machine may be shared "
                        "with other jobs"}, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
