"""``ecgtrace stage2``: read the 12 leads off one rectified page; write signals.csv and trace_overlay.png."""

from __future__ import annotations

import argparse
from pathlib import Path

from ecgtrace.commands.models import add_weights_options
from ecgtrace.errors import EcgTraceError


def register(subparsers) -> None:
    """Add the ``stage2`` subcommand."""
    p = subparsers.add_parser(
        "stage2",
        help="extract the 12 leads from a rectified page (stage 1's rectified.png)",
        description="Run stage 2 on a rectified page (normally stage 1's rectified.png, on the canonical "
                    "2200x1700 geometry or a scaled copy of it): reads the four trace rows, converts them to mV "
                    "and cuts the 12 leads. Writes signals.csv (time_s + 12 leads, each lead only in its own "
                    "window, lead II the full rhythm strip), trace_overlay.png (where each row was read, on the "
                    "page) and signals.png (the 12 leads plotted). Prints each lead's quality. Without "
                    "--checkpoint the shipped weights are used, else (or with --classical) the classical reader.",
    )
    add_weights_options(p, single_stage=2)
    p.add_argument("--image", required=True, help="rectified page (stage 1 output)")
    p.add_argument("--output", default="./outputs/inference/", help="output folder (default ./outputs/inference/)")
    p.add_argument("--fs", type=float, default=500.0, help="sampling rate of the output in Hz (default 500)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--einthoven", action="store_true", help="apply the soft Einthoven correction to the limb leads")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Extract, write the three outputs, print the per-lead quality."""
    from ecgtrace import io
    from ecgtrace.pipeline import signals_frame
    from ecgtrace.stages.stage2 import Stage2

    if not (args.fs > 0):
        raise EcgTraceError(f"--fs must be a positive number of Hz, got {args.fs}")
    img = io.read_image(args.image)
    from ecgtrace.models.shipped import resolve_weights

    source = resolve_weights(2, args.checkpoint, classical=args.classical)
    stage = Stage2(checkpoint=source, device=args.device, einthoven=args.einthoven, backend=args.backend)
    leads = stage(img, args.fs)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    df = signals_frame(leads.signals, leads.fs)
    io.write_signals_csv(df, out / "signals.csv")
    title = f"stage 2: {leads.method}, weights {stage.weights.label()}"
    io.write_image(io.draw_overlay(img, leads.traces_px, title=title), out / "trace_overlay.png")
    io.plot_signals(df, leads.fs, out / "signals.png", title=f"{Path(args.image).name} ({leads.method})")
    ok = [k for k, q in leads.quality.items() if q == "ok"]
    print(f"Read {len(leads.signals)}/12 leads with the {leads.method} reader (weights {stage.weights.label()}) "
          f"at {leads.fs:g} Hz; {len(ok)} ok")
    for lead, q in leads.quality.items():
        if q != "ok":
            print(f"  {lead}: {q}")
    print(f"Wrote {out / 'signals.csv'}, {out / 'trace_overlay.png'} and {out / 'signals.png'}")
    return 0
