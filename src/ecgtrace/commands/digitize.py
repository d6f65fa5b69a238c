"""``ecgtrace digitize``: pictures of 12-lead ECGs -> signals (CSV, WFDB), a JSON report and an overlay each."""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ecgtrace.commands.models import add_weights_options
from ecgtrace.errors import EcgTraceError

EPILOG = """\
For each picture NAME.png it writes, in --output:
  NAME.csv           time_s + the 12 leads in mV (leads other than II only in their 2.5 s window)
  NAME.hea/NAME.dat  the same as a WFDB record (wfdb.rdrecord reads it; missing samples are NaN)
  NAME.json          what each stage found: orientation, confidence, grid error, per-lead quality,
                     method, weights (name + sha256 prefix) and time per stage
  NAME_overlay.png   the extracted traces drawn on the original picture

A picture that cannot be read (empty, unreadable, too small or too large, not an ECG) is
reported in one line and skipped; the rest of the batch is done.
With --workers N, N pictures are digitized at a time (one process each, the models loaded
once per process); the outputs are the same files as with one.
With --engine ray the pictures go to the workers of a Ray cluster (--ray-address, else
RAY_ADDRESS, else a Ray instance on this machine): their bytes travel with the tasks and
every output is written here, the same files as on one machine (pip install 'ecgtrace[ray]').
Exit status: 0 if at least one picture was digitized, 1 if all failed, 2 on bad arguments.
"""


def register(subparsers) -> None:
    """Add the ``digitize`` subcommand."""
    p = subparsers.add_parser(
        "digitize",
        help="turn ECG pictures into 12-lead signals (CSV, WFDB, JSON report, overlay)",
        description="Digitize pictures of 12-lead paper ECGs: stage 0 (normalize) -> 1 (rectify) -> 2 (extract). "
                    "Per stage it uses a model from --checkpoints where present (stage{0,1,2}_*.pth), else the "
                    "weights that ship with ecgtrace (`ecgtrace models`), else the classical method; --classical "
                    "forces the classical methods.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR", help="picture files and/or folders of pictures")
    p.add_argument("--output", "-o", required=True, help="output folder (created)")
    p.add_argument("--fs", type=float, default=500.0, help="sampling rate of the output signals in Hz (default 500)")
    add_weights_options(p)
    p.add_argument("--device", default="cpu", help="torch device for the models (default cpu)")
    add_engine_options(p)
    p.add_argument("--einthoven", action="store_true", help="apply a soft Einthoven correction to the limb leads")
    p.add_argument("--no-overlay", action="store_true", dest="no_overlay", help="skip the overlay pictures")
    p.add_argument("--plot", action="store_true", help="also write NAME_plot.png (the 12 leads)")
    p.set_defaults(func=run)


def add_engine_options(p: argparse.ArgumentParser) -> None:
    """``--workers``, ``--engine``, ``--ray-address``, ``--batch-size``: how many pictures at a time, and where."""
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="digitize N pictures at a time: N processes here (default 1; each gets cores / N threads), "
                        "or N Ray workers with --engine ray (default one per CPU of the cluster)")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: processes on this machine (default); ray: the workers of a Ray cluster "
                        "(needs pip install 'ecgtrace[ray]')")
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="with --engine ray: the cluster (HOST:PORT, ray://HEAD:10001, auto = the one `ray start` "
                        "made here); default RAY_ADDRESS, else a Ray instance on this machine for the run")
    p.add_argument("--batch-size", type=int, default=None, metavar="K",
                   help="with --engine ray: pictures per Ray task (default: up to 8, at least 4 tasks per worker)")


def check_engine_options(args: argparse.Namespace) -> None:
    """One line for engine options that do not fit together."""
    if args.workers is not None and args.workers < 1:
        raise EcgTraceError(f"--workers must be at least 1, got {args.workers}")
    if args.engine != "ray" and (args.ray_address or args.batch_size is not None):
        raise EcgTraceError("--ray-address and --batch-size go with --engine ray")
    if args.batch_size is not None and args.batch_size < 1:
        raise EcgTraceError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.engine == "ray":
        from ecgtrace.batch_ray import import_ray

        import_ray(args.ray_address)  # or one line saying how to install it, before any work


def _unique_name(stem: str, used: set[str]) -> str:
    """A file-safe output name (WFDB record names allow letters, digits, _ and -), unique in this batch."""
    stem = "".join(c if c.isalnum() or c in "_-" else "_" for c in stem) or "ecg"
    name, k = stem, 1
    while name in used:
        k += 1
        name = f"{stem}_{k}"
    used.add(name)
    return name


@dataclass
class Picture:
    """One picture of the batch and where its outputs go."""

    path: Path
    name: str  # output file stem, unique in the batch
    out: Path
    fs: float
    overlay: bool = True
    plot: bool = False
    source: str = ""  # the picture as the report names it (default: path)


def digitize_picture(pipe, job: Picture) -> dict:
    """Digitize one picture and write its outputs (in a worker process, or in this one); returns its report."""
    res = pipe(job.path, fs=job.fs, name=job.name)
    res.to_csv(job.out / f"{job.name}.csv")
    res.to_wfdb(job.out, job.name)
    if job.overlay:
        res.overlay(job.out / f"{job.name}_overlay.png")
    if job.plot:
        res.plot(job.out / f"{job.name}_plot.png")
    res.report["source"] = job.source or str(job.path)
    res.to_json(job.out / f"{job.name}.json")
    return res.report


def ship_picture(job: Picture):
    """On the driver (``--engine ray``): the job with its picture's bytes (:func:`ecgtrace.batch_ray.ship_picture`)."""
    from ecgtrace.batch_ray import ship_picture as ship

    return ship(job, job.path)


def digitize_shipped(pipe, shipped) -> tuple[dict, dict[str, bytes]]:
    """On a Ray worker: digitize a shipped picture into a scratch folder; its report and its output files' bytes,
    which the driver writes (:func:`write_landed`)."""
    import tempfile
    from dataclasses import replace

    from ecgtrace.batch_ray import unpacked

    job: Picture = shipped.task
    with unpacked(shipped) as local, tempfile.TemporaryDirectory(prefix="ecgtrace-out-") as scratch:
        report = digitize_picture(pipe, replace(job, path=local, out=Path(scratch), source=shipped.source))
        files = {f.name: f.read_bytes() for f in sorted(Path(scratch).iterdir())
                 if f.is_file() and not f.name.startswith(".")}
    return report, files


def write_landed(job: Picture, value: tuple[dict, dict[str, bytes]]) -> dict:
    """On the driver: write the output files a Ray worker sent back for ``job`` (each atomically); its report."""
    from ecgtrace import io

    report, files = value
    for name, data in files.items():
        with io.atomic_write(job.out / name) as tmp:
            tmp.write_bytes(data)
    return report


def run(args: argparse.Namespace) -> int:
    """Digitize every picture; report failures one line each; non-zero exit only if all failed."""
    from tqdm import tqdm

    from ecgtrace import io
    from ecgtrace.batch import Outcome, build_pipeline, error_text, run_pool

    if not (args.fs > 0):
        raise EcgTraceError(f"--fs must be a positive number of Hz, got {args.fs}")
    check_engine_options(args)
    paths = io.list_images(args.images)
    if not paths:
        raise EcgTraceError(f"no pictures found in {' '.join(args.images)} (looked for {', '.join(io.IMAGE_SUFFIXES)})")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    debug = getattr(args, "debug", False) or bool(os.environ.get("ECGTRACE_DEBUG"))
    used: set[str] = set()
    jobs = [Picture(path, _unique_name(path.stem, used), out, args.fs, not args.no_overlay, args.plot) for path in paths]
    done, failed = {}, {}
    t0 = time.time()
    bar = tqdm(total=len(jobs), desc="digitizing", unit="img", disable=len(jobs) < 2)
    pipe_kwargs = {"device": args.device, "einthoven": args.einthoven, "classical": args.classical,
                   "backend": args.backend}
    init_args = (args.checkpoints, pipe_kwargs)
    if args.engine == "ray":
        from ecgtrace.batch_ray import run_ray

        outcomes = run_ray(jobs, digitize_shipped, build_pipeline, init_args, workers=args.workers,
                           batch_size=args.batch_size, address=args.ray_address, pack=ship_picture)
    else:
        outcomes = run_pool(jobs, digitize_picture, build_pipeline, init_args, workers=args.workers or 1,
                            raise_errors=debug)
    for i, outcome in outcomes:
        bar.update()
        if outcome.ok and args.engine == "ray":  # the worker sent the files back: written here
            try:
                outcome = Outcome(True, write_landed(jobs[i], outcome.value))
            except OSError as e:
                outcome = Outcome(False, error=error_text(e))
        if outcome.ok:
            done[i] = outcome.value
        else:  # one bad picture never stops the batch
            failed[i] = msg = outcome.error
            tqdm.write(f"skipped {jobs[i].path}: {msg.splitlines()[0] if msg else 'error'}", file=sys.stderr)
    bar.close()
    print(f"digitized {len(done)} of {len(paths)} picture(s) in {time.time() - t0:.1f} s -> {out.resolve()}")
    for i, report in sorted(done.items()):  # in the order given, however many workers
        bad = [k for k, q in report["lead_quality"].items() if q != "ok"]
        note = f"; check leads {', '.join(bad)}" if bad else ""
        note += "".join(f"; {w}" for w in report["warnings"])
        print(f"  {jobs[i].path.name}: {jobs[i].name}.csv/.hea/.json/_overlay.png "
              f"({report['method']['stage0']}/{report['method']['stage1']}/{report['method']['stage2']}{note})")
    for i, msg in sorted(failed.items()):
        print(f"  FAILED {jobs[i].path}: {msg.splitlines()[0] if msg else 'error'}")
    return 0 if done else 1
