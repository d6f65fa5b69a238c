"""``ecgtrace demo``: the whole job on a small built-in example, in a minute or two on a laptop CPU.

Renders a tiny synthetic data set with a hidden test split (variants 0001 clean,
0003 colour scan, 0005 phone photo), predicts a submission, scores it (dB per
variant), digitizes one picture with an overlay, and says where everything went.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ecgtrace.commands.models import add_weights_options


def register(subparsers) -> None:
    """Add the ``demo`` subcommand."""
    p = subparsers.add_parser(
        "demo",
        help="run the whole pipeline on a small synthetic example (about a minute on CPU)",
        description="Render a few synthetic ECG pages with a hidden test split, predict a submission, score it "
                    "per variant, and digitize one picture with an overlay. Everything goes under --out.",
    )
    p.add_argument("--out", default="outputs/demo", help="output folder (default outputs/demo)")
    p.add_argument("--n-test", type=int, default=3, dest="n_test", help="test pages (default 3: one per variant)")
    p.add_argument("--variants", default="0001,0003,0005", help="variants to render (default 0001,0003,0005)")
    add_weights_options(p)
    p.add_argument("--seed", type=int, default=7, help="seed of the synthetic data (default 7)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Render, predict, evaluate, digitize; print the scores and the paths."""
    from ecgtrace.commands.evaluate import evaluate, format_report
    from ecgtrace.commands.predict import predict_split
    from ecgtrace.data.dataset import write_dataset
    from ecgtrace.data.synthetic import check_variants
    from ecgtrace.errors import EcgTraceError
    from ecgtrace.pipeline import Pipeline
    from ecgtrace.submission import write_submission

    if args.n_test < 1:
        raise EcgTraceError(f"--n-test must be >= 1, got {args.n_test}")
    t0 = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    variants = check_variants(args.variants)
    data = out / "data"
    pipe = Pipeline(args.checkpoints, classical=args.classical, backend=args.backend)
    print("weights: " + "; ".join(f"stage {k[-1]} {w.label()}" for k, w in pipe.weights.items())
          + ("" if any(w.uses_network for w in pipe.weights.values()) else
             " (no weights ship with this install: `ecgtrace models`)" if not args.classical else ""))
    print(f"[1/4] rendering {args.n_test} test page(s), variants {','.join(variants)} -> {data}")
    write_dataset(data, n=0, n_test=args.n_test, variants=variants, seed=args.seed, workers=1, fs=500.0,
                  progress=False)

    print("[2/4] predicting the test split (stage 0 -> 1 -> 2)")
    outcome = predict_split(data, "test", checkpoints=args.checkpoints, progress=True, classical=args.classical,
                            backend=args.backend)
    sub_path = write_submission(outcome.submission, out / "submission.csv")
    for image_id, msg in outcome.failed.items():
        print(f"  FAILED {image_id} (scored as zeros): {msg.splitlines()[0]}")

    print("[3/4] scoring against the hidden truth (competition rule)")
    rep = evaluate(sub_path, data, split="test")
    text = format_report(rep)
    (out / "evaluation.txt").write_text(text + "\n")
    print("  overall: {:.2f} dB over {} image(s)".format(rep["score_db"], rep["n_images"]))
    for v, r in rep["per_variant"].items():
        print(f"  variant {v}: {r['score_db']:.2f} dB ({r['n_images']} image(s))")

    print("[4/4] digitizing one picture with an overlay")
    first = sorted((data / "test").glob("*.png"))[0]
    res = pipe(first, fs=500.0)
    dig = out / "digitized"
    dig.mkdir(exist_ok=True)
    res.to_csv(dig / f"{res.name}.csv")
    res.to_wfdb(dig, res.name)
    res.to_json(dig / f"{res.name}.json")
    res.overlay(dig / f"{res.name}_overlay.png")
    res.plot(dig / f"{res.name}_plot.png")
    t = res.report["timing_s"]
    print(f"  {first.name}: stage0 {t['stage0']:.2f} s, stage1 {t['stage1']:.2f} s, stage2 {t['stage2']:.2f} s "
          f"({res.report['method']['stage0']}/{res.report['method']['stage1']}/{res.report['method']['stage2']})")

    print(f"\ndone in {time.time() - t0:.0f} s. Where everything went:")
    print(f"  data set (with hidden truth)  {data.resolve()}")
    print(f"  submission                    {sub_path.resolve()}")
    print(f"  score report                  {(out / 'evaluation.txt').resolve()}")
    print(f"  digitized picture             {dig.resolve()}/{res.name}.csv .hea/.dat .json _overlay.png _plot.png")
    print("next: `ecgtrace digitize YOUR_PHOTO.jpg --output out/`, or train models with `ecgtrace train --stage 0`")
    return 0
