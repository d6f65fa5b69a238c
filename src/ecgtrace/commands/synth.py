"""``ecgtrace synth``: render a synthetic data set in the competition layout."""

from __future__ import annotations

import argparse
import os

from ecgtrace.data.synthetic import ALL_VARIANTS, check_variants
from ecgtrace.errors import EcgTraceError


def register(subparsers) -> None:
    """Add the ``synth`` subcommand."""
    p = subparsers.add_parser(
        "synth",
        help="render a synthetic ECG image data set in the competition layout",
        description="Render synthetic 12-lead ECG pages with exact ground truth, written in the competition "
                    "layout (train.csv, train/{id}/{id}.csv, train/{id}/{id}-NNNN.png + .gt.npz; optional test "
                    "split with its hidden solution).",
    )
    p.add_argument("--out", required=True, help="output folder (created; an earlier synth output is replaced)")
    p.add_argument("--n", type=int, default=8, help="number of training records (default 8)")
    p.add_argument("--variants", default="0001",
                   help=f"comma-separated variant codes, from {','.join(ALL_VARIANTS)} (default 0001)")
    p.add_argument("--seed", type=int, default=0, help="seed; the same seed gives the same data set")
    p.add_argument("--workers", type=int, default=max(1, min(4, (os.cpu_count() or 1))),
                   help="processes to render with")
    p.add_argument("--n-test", type=int, default=0, dest="n_test", help="number of test records (default 0)")
    p.add_argument("--fs", type=float, default=None,
                   help="sampling rate for every record (default: random from 250,256,500,512,1000,1025)")
    p.add_argument("--wfdb", default=None, help="folder of WFDB records (PTB-XL style) to use instead of synthesis")
    p.add_argument("--dpi", type=float, default=200.0, help="page resolution (default 200 -> 2200x1700)")
    p.add_argument("--method", choices=("parametric", "neurokit2"), default="parametric",
                   help="signal synthesizer (default parametric; neurokit2 is ~100x slower)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write the data set and print where it went."""
    from ecgtrace.data.dataset import write_dataset
    from ecgtrace.paper import Page

    variants = check_variants(args.variants)
    if args.dpi <= 0:
        raise EcgTraceError(f"--dpi must be positive, got {args.dpi}")
    if args.workers < 1:
        raise EcgTraceError(f"--workers must be >= 1, got {args.workers}")
    s = write_dataset(args.out, n=args.n, variants=variants, seed=args.seed, workers=args.workers,
                      n_test=args.n_test, fs=args.fs, wfdb=args.wfdb, page=Page(dpi=args.dpi), method=args.method)
    fs = ", ".join(f"{k} Hz x{v}" for k, v in sorted(s.fs_counts.items(), key=lambda kv: float(kv[0])))
    print(f"wrote {s.images} image(s) for {s.n_train} training + {s.n_test} test record(s) "
          f"(variants {','.join(s.variants)}; {fs}) in {s.seconds:.1f} s")
    print(f"  data set: {os.path.abspath(s.root)}")
    print("  train.csv, train/{id}/{id}.csv, train/{id}/{id}-NNNN.png + .gt.npz ground truth")
    if s.n_test:
        print("  test.csv, test/{id}.png; hidden truth: test_solution.csv, test_variants.csv, test_gt/")
    return 0
