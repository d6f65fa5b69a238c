"""End-to-end time per image on this machine, split by stage (load, stage 0, 1, 2) and writing outputs.

Usage:
    PYTHONPATH=src python bench/bench_e2e.py [--n 6] [--variants 0001,0003,0005] [--checkpoints DIR]
        [--device cpu] [--backend torch|onnx] [--name bench_e2e] [--profile] [--baseline REV] [--images DIR]
    PYTHONPATH=src python bench/bench_e2e.py --throughput 20 --workers 1,2 [--engines local,ray] [--name NAME]

Renders ``n`` held-out pages (cycling the variants), digitizes each through
``ecgtrace.pipeline.Pipeline`` (the first image is a warm-up and is not counted),
writes CSV + WFDB + JSON + overlay like ``ecgtrace digitize``, and prints/writes
mean and median seconds per stage to bench/results/<name>.json. ``--images DIR`` times the
pictures of a folder instead (ECG-Image-Kit's ``../shared/eik-dev``, the real pictures): pages our
renderer did not draw, whose size and damage set the time of some steps.

``--profile`` adds the time of every step the stages mark (:mod:`ecgtrace.stages.steps`:
grid features, node measurement, lattice fit, dense map, remap, ink map, path search, ...),
as a tree with the mean seconds per image and the cores each step kept busy (process CPU over wall
time: near 1 on this two-core machine is a step one core runs alone), also written to
bench/results/<name>_profile.txt.

``--baseline REV`` also runs the same pages with the package source of git revision ``REV``
(extracted with ``git archive`` into a temporary folder) and prints both side by side: before and
after in one run. The two run in two processes that take the pages in turn, one page each, never at
once: a machine that slows down or speeds up during the run (a shared host) moves both alike.

``--throughput N`` instead renders N pages into a folder and digitizes it with
``ecgtrace digitize --workers K`` for each K of ``--workers``: pictures per minute.
``--engines local,ray`` adds ``ecgtrace digitize --engine ray`` on a Ray instance the command
starts on this machine (one Ray worker per core, loopback only; its start counted in the time,
as the local runs count theirs). Every run's outputs are compared with the first's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

KEYS = ["load", "stage0", "stage1", "stage2", "total", "write_outputs"]


def _setup_path(src: str | None) -> None:
    sys.path.insert(0, str(Path(src).resolve() if src else ROOT / "src"))


def _quiet_logs() -> None:
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level=os.environ.get("ECGTRACE_LOG", "WARNING"), format="{message}")


def profile_table(profiles: list[dict[str, float]], calls: list[dict[str, int]],
                  cpu: list[dict[str, float]] | None = None) -> list[str]:
    """Mean seconds per image of every step path, as an indented tree in first-seen order; with ``cpu`` (the
    process CPU seconds of each step) also the cores each kept busy (CPU over wall time)."""
    names: list[str] = []
    for p in profiles:
        names += [k for k in p if k not in names]
    # children follow their parent: sort by the path's parents' first-seen positions
    pos = {k: i for i, k in enumerate(names)}

    def key(name: str) -> tuple:
        parts = name.split("/")
        return tuple(pos.get("/".join(parts[:i + 1]), 1e9) for i in range(len(parts)))

    n = max(1, len(profiles))
    lines = [f"{'step':<44}{'s/image':>9}{'calls/image':>13}{'share':>8}" + (f"{'cores':>7}" if cpu else "")]
    for name in sorted(names, key=key):
        parts = name.split("/")
        mean = sum(p.get(name, 0.0) for p in profiles) / n
        ncall = sum(c.get(name, 0) for c in calls) / n
        parent = "/".join(parts[:-1])
        pmean = sum(p.get(parent, 0.0) for p in profiles) / n if parent else 0.0
        share = f"{100 * mean / pmean:6.0f} %" if pmean > 0 else ""
        cores = f"{sum(c.get(name, 0.0) for c in cpu) / n / mean:7.2f}" if cpu and mean > 0 else ""
        lines.append(f"{'  ' * (len(parts) - 1) + parts[-1]:<44}{mean:9.3f}{ncall:13.1f}{share:>8}{cores}")
    return lines


@dataclass
class FolderPage:
    """A picture of a folder as the bench reads it: the image, its sub-folder (as the variant), 500 Hz."""

    image: np.ndarray
    variant: str
    fs: float = 500.0


def folder_pages(folder: str, n: int) -> list[FolderPage]:
    """The first ``n`` pictures under ``folder`` (sorted, one sub-folder after another in turn, so
    every sub-folder of ECG-Image-Kit's eik-dev is in even a short run), read as ``ecgtrace digitize``
    reads them (:func:`ecgtrace.io.read_image`)."""
    from ecgtrace.errors import EcgTraceError
    from ecgtrace.io import IMAGE_SUFFIXES, read_image

    root = Path(folder)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SystemExit(f"--images {folder}: no pictures there (looked for {', '.join(IMAGE_SUFFIXES)})")
    groups: dict[str, list[Path]] = {}
    for f in files:
        groups.setdefault(str(f.parent.relative_to(root)), []).append(f)
    order = [g[i] for i in range(max(map(len, groups.values()))) for g in groups.values() if i < len(g)]
    if len(order) < n:
        raise SystemExit(f"--images {folder}: {len(files)} pictures, --n {n - 1} needs {n} (one is the warm-up)")
    try:
        return [FolderPage(read_image(f), f"{f.parent.relative_to(root)}/{f.stem}") for f in order[:n]]
    except EcgTraceError as e:
        raise SystemExit(f"--images: {e}") from None


class PageTimer:
    """The bench's pipeline and pages in this process (the working tree's source, or a baseline's):
    :meth:`time_page` digitizes page ``i`` and writes its outputs as ``ecgtrace digitize`` does."""

    def __init__(self, args: argparse.Namespace) -> None:
        from ecgtrace.data.synthetic import SyntheticPages
        from ecgtrace.pipeline import Pipeline

        try:
            from ecgtrace.stages import steps
        except ImportError:  # a baseline source from before the step timer
            steps = None
        self.steps = steps if args.profile else None
        if args.images:
            self.pages = folder_pages(args.images, args.n + 1)
            self.variants = tuple(dict.fromkeys(s.variant for s in self.pages))
        else:
            self.variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
            self.pages = SyntheticPages(args.n + 1, variants=self.variants, seed=args.seed)
        t = time.perf_counter()
        # a baseline source from before the backend option takes no ``backend`` argument
        self.pipe = Pipeline(args.checkpoints, device=args.device,
                             **({"backend": args.backend} if args.backend != "torch" else {}))
        self.init_s = time.perf_counter() - t
        self.methods: dict[str, str] = {}

    def time_page(self, i: int) -> tuple[dict, dict | None]:
        """(times of page ``i``: per stage, total, CPU, writing; the step profile with --profile, else None)."""
        s = self.pages[i]
        t, c = time.perf_counter(), time.process_time()
        if self.steps is not None:
            with self.steps.recording() as rec:
                res = self.pipe(s.image, fs=s.fs, name=f"img{i}")
        else:
            rec, res = None, self.pipe(s.image, fs=s.fs, name=f"img{i}")
        t_pipe, c_pipe = time.perf_counter() - t, time.process_time() - c
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            res.to_csv(Path(tmp) / f"img{i}.csv")
            res.to_wfdb(tmp, f"img{i}")
            res.to_json(Path(tmp) / f"img{i}.json")
            res.overlay(Path(tmp) / f"img{i}_overlay.png")
            t_write = time.perf_counter() - t
        self.methods = dict(res.report["method"])
        r = dict(res.report["timing_s"])
        r.update(total=t_pipe, cpu_total=c_pipe, write_outputs=t_write, variant=s.variant,
                 stage1_method=res.report["method"]["stage1"])
        # (a baseline source from before the step timer kept CPU time has no ``cpu``)
        return r, ({"seconds": dict(rec.seconds), "calls": dict(rec.calls), "cpu": dict(getattr(rec, "cpu", {}))}
                   if rec is not None else None)


def _print_row(r: dict) -> None:
    print(f"  {r['variant']}: " + "  ".join(f"{k} {v:.2f}s" for k, v in r.items() if isinstance(v, float)), flush=True)


def bench_result(args: argparse.Namespace, rows: list[dict], profiles: list[dict], variants: tuple[str, ...],
                 methods: dict[str, str], init_s: float) -> dict:
    """What bench/results/<name>.json holds of one source's run."""
    import torch

    summary = {k: {"mean_s": float(np.mean([r[k] for r in rows])), "median_s": float(np.median([r[k] for r in rows]))}
               for k in KEYS + ["cpu_total"]}
    return {
        "device": args.device, "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "omp_threads": os.environ.get("OMP_NUM_THREADS", "default"),
        "n_images": len(rows), "variants": list(variants), "methods": methods,
        "pipeline_init_s": init_s, "per_stage": summary, "per_image": rows,
        "profile_table": profile_table([p["seconds"] for p in profiles], [p["calls"] for p in profiles],
                                       [p["cpu"] for p in profiles] if all(p["cpu"] for p in profiles) else None)
        if profiles else None,
        "note": "machine shared with other jobs while measured (cpu_total: process CPU time, less sensitive to "
                "that); the first image (warm-up) is not counted",
    }


def run_bench(args: argparse.Namespace) -> dict:
    """Digitize the bench pages in this process; per-image times (and step profiles)."""
    timer = PageTimer(args)
    timer.time_page(0)  # warm-up
    rows, profiles = [], []
    for i in range(1, args.n + 1):
        r, prof = timer.time_page(i)
        rows.append(r)
        if prof is not None:
            profiles.append(prof)
        _print_row(r)
    return bench_result(args, rows, profiles, timer.variants, timer.methods, timer.init_s)


def serve_pages(args: argparse.Namespace) -> int:
    """A baseline comparison's worker: set up, warm up, then time each page index read from stdin (one JSON line
    back per page on stdout); an empty line ends it with this process's setup (init time, methods, variants)."""
    out = sys.stdout
    sys.stdout = sys.stderr  # anything the pipeline prints must not corrupt the replies
    timer = PageTimer(args)
    timer.time_page(0)
    print(json.dumps({"ready": True}), file=out, flush=True)
    for line in sys.stdin:
        if not line.strip():
            break
        r, prof = timer.time_page(int(line))
        print(json.dumps({"row": r, "profile": prof}), file=out, flush=True)
    print(json.dumps({"init_s": timer.init_s, "methods": timer.methods, "variants": list(timer.variants)}),
          file=out, flush=True)
    return 0


def run_with_baseline(args: argparse.Namespace) -> tuple[dict, dict]:
    """(baseline, working tree): the bench with the package source of git revision ``args.baseline`` and with
    the working tree's, in two processes that take the same pages in turn (the baseline first on each page)."""
    with tempfile.TemporaryDirectory() as tmp:
        got = subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline, "src"], capture_output=True)
        if got.returncode != 0:
            why = (got.stderr.decode(errors="replace").strip().splitlines() or ["git archive failed"])[-1]
            raise SystemExit(f"--baseline {args.baseline}: {why}; name a commit, e.g. HEAD~1 or a hash from `git log`")
        archive = got.stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        workers = {}
        for side, src in (("baseline", Path(tmp) / "src"), ("working", ROOT / "src")):
            cmd = [sys.executable, str(Path(__file__).resolve()), "--serve-pages", "--src", str(src),
                   "--n", str(args.n), "--variants", args.variants, "--seed", str(args.seed), "--device", args.device,
                   "--backend", args.backend] + (["--checkpoints", args.checkpoints] if args.checkpoints else []) + (
                       ["--images", args.images] if args.images else []) + (["--profile"] if args.profile else [])
            workers[side] = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(src)}, text=True,
                                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            _reply(workers[side], side)  # set up and warmed up before the other starts
        rows: dict[str, list[dict]] = {"baseline": [], "working": []}
        profiles: dict[str, list[dict]] = {"baseline": [], "working": []}
        for i in range(1, args.n + 1):
            for side, w in workers.items():
                w.stdin.write(f"{i}\n")
                w.stdin.flush()
                msg = _reply(w, side)
                rows[side].append(msg["row"])
                if msg["profile"] is not None:
                    profiles[side].append(msg["profile"])
                print(f"  {'before' if side == 'baseline' else 'after '}", end="")
                _print_row(msg["row"])
        out = {}
        for side, w in workers.items():
            w.stdin.write("\n")
            w.stdin.flush()
            setup = _reply(w, side)
            w.wait()
            out[side] = bench_result(args, rows[side], profiles[side], tuple(setup["variants"]), setup["methods"],
                                     setup["init_s"])
        return out["baseline"], out["working"]


def _reply(worker: subprocess.Popen, side: str) -> dict:
    """The next JSON line from a page worker; stops the bench with its exit status when it died."""
    line = worker.stdout.readline()
    if not line:
        raise SystemExit(f"the {side} bench process ended (exit status {worker.wait()}); see its errors above")
    return json.loads(line)


def _output(path: Path) -> bytes | dict:
    """An output file's bytes; a JSON report without its ``timing_s`` (the only part that differs run to run)."""
    if path.suffix == ".json":
        rep = json.loads(path.read_text())
        rep.pop("timing_s", None)
        return rep
    return path.read_bytes()


def throughput(args: argparse.Namespace) -> dict:
    """Pictures per minute of ``ecgtrace digitize --workers K`` on a folder of rendered pages."""
    import cv2

    from ecgtrace.data.synthetic import SyntheticPages

    variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    pages = SyntheticPages(args.throughput, variants=variants, seed=args.seed)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if not set(engines) <= {"local", "ray"}:
        raise SystemExit(f"--engines: local and/or ray, got {args.engines}")
    out: dict = {"n_pages": args.throughput, "variants": list(variants), "cpu_count": os.cpu_count(),
                 "load_avg_1m_before": os.getloadavg()[0], "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "pages"
        folder.mkdir()
        for i in range(args.throughput):
            cv2.imwrite(str(folder / f"page{i:03d}.png"), pages[i].image)
        runs = [(str(k), ["--workers", str(k)]) for k in (int(w) for w in args.workers.split(","))
                if "local" in engines]
        if "ray" in engines:  # a Ray instance of the command's own, one worker per core
            runs.append(("ray", ["--engine", "ray", "--workers", str(os.cpu_count() or 1)]))
        for key, opts in runs:
            res_dir = Path(tmp) / f"out_w{key}"
            cmd = [sys.executable, "-m", "ecgtrace", "digitize", str(folder), "-o", str(res_dir), *opts]
            if args.checkpoints:
                cmd += ["--checkpoints", args.checkpoints]
            t = time.perf_counter()
            run = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, capture_output=True,
                                 text=True)
            if run.returncode != 0:
                raise SystemExit(f"digitize {' '.join(opts)} failed:\n{run.stdout}\n{run.stderr}")
            dt = time.perf_counter() - t
            ppm = 60.0 * args.throughput / dt
            out["runs"][key] = {"seconds": dt, "pictures_per_minute": ppm, "options": " ".join(opts)}
            print(f"  {' '.join(opts)}: {args.throughput} pictures in {dt:.1f} s = {ppm:.1f} pictures/min", flush=True)
        first = Path(tmp) / f"out_w{next(iter(out['runs']))}"
        names = sorted(p.name for p in first.iterdir())
        same = all(sorted(p.name for p in (Path(tmp) / f"out_w{k}").iterdir()) == names
                   and all(_output(first / n) == _output(Path(tmp) / f"out_w{k}" / n) for n in names)
                   for k in out["runs"])
        out["outputs_identical"] = bool(names) and same  # the JSON reports compared without their timings
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=6)
    ap.add_argument("--variants", default="0001,0003,0005")
    ap.add_argument("--seed", type=int, default=515151)
    ap.add_argument("--images", default=None, metavar="DIR",
                    help="time the pictures of DIR (e.g. ../shared/eik-dev, sub-folders in turn) instead of rendered pages")
    ap.add_argument("--checkpoints", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--name", default="bench_e2e")
    ap.add_argument("--backend", default="torch", help="what runs the networks: torch or onnx (onnxruntime)")
    ap.add_argument("--profile", action="store_true", help="time every step the stages mark")
    ap.add_argument("--baseline", default=None, metavar="REV", help="also run git revision REV's source first")
    ap.add_argument("--throughput", type=int, default=0, metavar="N",
                    help="pictures/min of `digitize --workers K` on a folder of N pages")
    ap.add_argument("--workers", default="1,2", help="worker counts for --throughput (default 1,2)")
    ap.add_argument("--engines", default="local", help="--throughput engines: local (the --workers counts) "
                                                      "and/or ray (a local Ray instance, one worker per core)")
    ap.add_argument("--src", default=None, help=argparse.SUPPRESS)  # the package source (baseline runs)
    ap.add_argument("--serve-pages", action="store_true", help=argparse.SUPPRESS)  # a --baseline comparison's worker
    args = ap.parse_args()
    _setup_path(args.src)
    _quiet_logs()

    path = ROOT / "bench" / "results" / f"{args.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    if args.throughput:
        out = throughput(args)
        print(f"outputs identical across runs: {out['outputs_identical']}")
        path.write_text(json.dumps(out, indent=2))
        print(f"wrote {path}")
        return 0
    if args.serve_pages:
        return serve_pages(args)
    if args.baseline:
        print(f"baseline {args.baseline} (before) and the working tree (after), page by page in turn:", flush=True)
        base, out = run_with_baseline(args)
    else:
        base, out = None, run_bench(args)
    methods = out["methods"]
    print(f"pipeline ({methods['stage0']}/{methods['stage1']}/{methods['stage2']}), {out['n_images']} images, "
          f"{args.device}, init {out['pipeline_init_s']:.2f} s:")
    s = out["per_stage"]
    if base is None:
        for k in KEYS + ["cpu_total"]:
            print(f"  {k:>14}: mean {s[k]['mean_s']:.2f} s  median {s[k]['median_s']:.2f} s")
    else:
        b = base["per_stage"]
        print(f"  {'':>14}  {'baseline ' + args.baseline:>22}  {'working tree':>22}")
        for k in KEYS + ["cpu_total"]:
            print(f"  {k:>14}: mean {b[k]['mean_s']:5.2f} s median {b[k]['median_s']:5.2f} s  "
                  f"mean {s[k]['mean_s']:5.2f} s median {s[k]['median_s']:5.2f} s")
        out["baseline"] = {"rev": args.baseline, **base}
    if out["profile_table"]:
        print("\nsteps (mean per image):")
        print("\n".join(out["profile_table"]))
        (path.parent / f"{args.name}_profile.txt").write_text("\n".join(out["profile_table"]) + "\n")
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
