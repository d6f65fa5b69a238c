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
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="digitize N pictures at a time in N processes (default 1; each gets cores / N threads)")
    p.add_argument("--einthoven", action="store_true", help="apply a soft Einthoven correction to the limb leads")
    p.add_argument("--no-overlay", action="store_true", dest="no_overlay", help="skip the overlay pictures")
    p.add_argument("--plot", action="store_true", help="also write NAME_plot.png (the 12 leads)")
    p.set_defaults(func=run)


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


def digitize_picture(pipe, job: Picture) -> dict:
    """Digitize one picture and write its outputs (in a worker process, or in this one); returns its report."""
    res = pipe(job.path, fs=job.fs, name=job.name)
    res.to_csv(job.out / f"{job.name}.csv")
    res.to_wfdb(job.out, job.name)
    if job.overlay:
        res.overlay(job.out / f"{job.name}_overlay.png")
    if job.plot:
        res.plot(job.out / f"{job.name}_plot.png")
    res.report["source"] = str(job.path)
    res.to_json(job.out / f"{job.name}.json")
    return res.report


def run(args: argparse.Namespace) -> int:
    """Digitize every picture; report failures one line each; non-zero exit only if all failed."""
    from tqdm import tqdm

    from ecgtrace import io
    from ecgtrace.batch import build_pipeline, run_pool

    if not (args.fs > 0):
        raise EcgTraceError(f"--fs must be a positive number of Hz, got {args.fs}")
    paths = io.list_images(args.images)
    if not paths:
        raise EcgTraceError(f"no pictures found in {' '.join(args.images)} (looked for {', '.join(io.IMAGE_SUFFIXES)})")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    if args.workers < 1:
        raise EcgTraceError(f"--workers must be at least 1, got {args.workers}")
    debug = getattr(args, "debug", False) or bool(os.environ.get("ECGTRACE_DEBUG"))
    used: set[str] = set()
    jobs = [Picture(path, _unique_name(path.stem, used), out, args.fs, not args.no_overlay, args.plot) for path in paths]
    done, failed = {}, {}
    t0 = time.time()
    bar = tqdm(total=len(jobs), desc="digitizing", unit="img", disable=len(jobs) < 2)
    pipe_kwargs = {"device": args.device, "einthoven": args.einthoven, "classical": args.classical}
    for i, outcome in run_pool(jobs, digitize_picture, build_pipeline, (args.checkpoints, pipe_kwargs),
                               workers=args.workers, raise_errors=debug):
        bar.update()
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
