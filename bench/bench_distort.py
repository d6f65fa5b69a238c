"""Speed and point accuracy of the distortions at the canonical 2200 x 1700 page.

Usage (from the repository root):
    OMP_NUM_THREADS=1 PYTHONPATH=src python bench/bench_distort.py [--pages 8] [--seeds 4]

Prints, per variant, ms per page single-threaded (CPU time of this process and
wall time; wall time is inflated when the machine is shared), the cost of the
main steps, and how far dots drawn at known points end up from where the
ground truth says they are (geometry only and with every photometric effect).
Writes everything to bench/results/distort.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from ecgtrace.data import distort  # noqa: E402
from ecgtrace.io import atomic_write  # noqa: E402
from test_distort import dot_errors, make_page, on_trace_fraction  # noqa: E402  (the test's own probes)


def clean_page() -> tuple[np.ndarray, object, str]:
    """A rendered page when the renderer is there, else the tests' synthetic page."""
    try:
        from ecgtrace.data.render import render_page
        from ecgtrace.data.signals import synthesize_ecg

        img, gt = render_page(synthesize_ecg(1, fs=500), 500, rng=3)
        return img, gt, "render_page"
    except ImportError:
        img, gt, _ = make_page(200.0)
        return img, gt, "synthetic test page"


def timed(fn, n: int) -> tuple[float, float]:
    """(cpu ms, wall ms) per call."""
    fn(0)
    c, w = time.process_time(), time.perf_counter()
    for i in range(n):
        fn(i + 1)
    return (time.process_time() - c) / n * 1000, (time.perf_counter() - w) / n * 1000


def step_costs(img: np.ndarray, gt, n: int) -> dict[str, float]:
    """CPU ms of the main building blocks on a canonical page."""
    size = img.shape[:2]
    u = size[1] / 2200
    rng = np.random.default_rng(0)
    out: dict[str, float] = {}

    def photo_warp_build(i):
        distort.photo_warp(size, np.random.default_rng(i))

    warp = distort.photo_warp(size, rng)
    bg = distort.table_background(warp.out_size, rng, u)
    L = distort.Light(warp.out_size, 8)
    distort.shadow(L, rng, 0.3)
    noise = distort.sensor_noise(warp.out_size, rng, 4.0, grain=True)
    warped = warp.apply(img, fill=bg)
    cases = {
        "photo warp: build (homography + curl + creases + wrinkles)": photo_warp_build,
        "photo warp: one remap of the page": lambda i: warp.apply(img, fill=bg),
        "photo warp: move ground truth (all points)": lambda i: warp.move(gt),
        "scan warp: warpPerspective": lambda i: distort.rotation_warp(size, np.random.default_rng(i)).apply(img),
        "table background": lambda i: distort.table_background(warp.out_size, np.random.default_rng(i), u),
        "lighting + noise (uint8)": lambda i: L.apply(warped, noise),
        "sensor noise (tile + saturating add)": lambda i: distort.add_noise(
            warped, distort.sensor_noise(warp.out_size, np.random.default_rng(i), 4.0)),
        "stains (coarse)": lambda i: distort.stains(distort.Light(warp.out_size, 8), np.random.default_rng(i), 4),
        "screen subpixels": lambda i: distort.screen_pixels(img, np.random.default_rng(i), u),
        "gaussian blur": lambda i: distort.blur(warped, 1.0),
        "jpeg q80": lambda i: distort.jpeg(warped, 80),
        "B/W conversion": lambda i: distort.to_bw(warped, np.random.default_rng(i)),
    }
    for name, fn in cases.items():
        out[name] = round(timed(fn, n)[0], 1)
    return out


def accuracy(seeds: int) -> dict[str, dict[str, float]]:
    """Dot localisation error (px) against the moved ground truth, on a 2200 x 1700 dotted page."""
    img, gt, idx = make_page(200.0)
    res: dict[str, dict[str, float]] = {}
    for v in distort.VARIANTS:
        geo, full, fr_g, fr_f, on_ink = [], [], [], [], []
        for s in range(seeds):
            out, g2 = distort.apply_variant(img, gt, v, s, photometric=False)
            e, f = dot_errors(out, g2.grid_points[idx])
            geo.append(e)
            fr_g.append(f)
            on_ink.append(on_trace_fraction(out, g2))
            out, g2 = distort.apply_variant(img, gt, v, s)
            e, f = dot_errors(out, g2.grid_points[idx])
            full.append(e)
            fr_f.append(f)
        geo_e, full_e = np.concatenate(geo), np.concatenate(full)
        res[v] = {
            "dots": int(len(geo_e)),
            "geometry_only_median_px": round(float(np.median(geo_e)), 3),
            "geometry_only_p99_px": round(float(np.percentile(geo_e, 99)), 3),
            "geometry_only_max_px": round(float(geo_e.max()), 3),
            "geometry_only_found": round(float(np.mean(fr_g)), 3),
            "trace_vertices_on_ink": round(float(np.mean(on_ink)), 4),
            "full_median_px": round(float(np.median(full_e)), 3),
            "full_p99_px": round(float(np.percentile(full_e, 99)), 3),
            "full_within_1px": round(float(np.mean(full_e < 1.0)), 4),
            "full_found": round(float(np.mean(fr_f)), 3),
        }
        print(f"{v}: geometry-only median {res[v]['geometry_only_median_px']:.3f} px, "
              f"max {res[v]['geometry_only_max_px']:.3f} px ({res[v]['dots']} dots); "
              f"full look median {res[v]['full_median_px']:.3f} px, "
              f"{100 * res[v]['full_within_1px']:.1f}% within 1 px; "
              f"trace vertices on ink {100 * res[v]['trace_vertices_on_ink']:.1f}%", flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pages", type=int, default=8, help="pages timed per variant")
    ap.add_argument("--seeds", type=int, default=3, help="seeds per variant for the accuracy check")
    ap.add_argument("--skip-accuracy", action="store_true")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    img, gt, source = clean_page()
    print(f"page: {source}, {img.shape[1]}x{img.shape[0]}; load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores", flush=True)
    speed = {}
    for v in distort.VARIANTS:
        cpu, wall = timed(lambda i, v=v: distort.apply_variant(img, gt, v, i), args.pages)
        speed[v] = {"cpu_ms": round(cpu, 1), "wall_ms": round(wall, 1)}
        print(f"{v} ({distort.VARIANT_INFO[v]}): {cpu:.0f} ms/page CPU, {wall:.0f} ms wall", flush=True)
    heavy = max(speed, key=lambda k: speed[k]["cpu_ms"])
    print(f"heaviest: {heavy} at {speed[heavy]['cpu_ms']:.0f} ms CPU "
          f"= {1000 / speed[heavy]['cpu_ms']:.1f} distorted pages/s per core (before rendering)")
    steps = step_costs(img, gt, max(3, args.pages // 2))
    for k, v in steps.items():
        print(f"  {k}: {v:.1f} ms CPU")
    acc = {} if args.skip_accuracy else accuracy(args.seeds)
    out = {"page": source, "size": list(img.shape[:2]), "load_average": os.getloadavg()[0],
           "ms_per_page": speed, "heaviest": heavy, "steps_cpu_ms": steps, "point_accuracy": acc}
    path = ROOT / "bench" / "results" / "distort.json"
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
