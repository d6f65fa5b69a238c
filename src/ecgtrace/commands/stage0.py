"""``ecgtrace stage0``: run stage 0 on one picture; write marker_prediction.jpg and normalized.png."""

from __future__ import annotations

import argparse
from pathlib import Path

from ecgtrace.commands.models import add_weights_options


def register(subparsers) -> None:
    """Add the ``stage0`` subcommand."""
    p = subparsers.add_parser(
        "stage0",
        help="normalize one picture (orientation + lead labels -> canonical page)",
        description="Run stage 0 on an image: prints the orientation class and its confidence, writes "
                    "marker_prediction.jpg (the picture with the detected lead labels) and normalized.png "
                    "(the upright page on the canonical 2200x1700 canvas). Without --checkpoint the shipped "
                    "weights are used, else (or with --classical) the classical path (rotation only, no labels).",
    )
    add_weights_options(p, single_stage=0)
    p.add_argument("--image", required=True, help="input picture")
    p.add_argument("--output", default="./outputs/inference/", help="output folder (default ./outputs/inference/)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--flip-tta", action="store_true", dest="flip_tta", help="also run the mirrored picture")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the orientation and write the two pictures."""
    from ecgtrace.models.shipped import resolve_weights
    from ecgtrace.stages.stage0 import ECGModelLoader

    source = resolve_weights(0, args.checkpoint, classical=args.classical)
    loader = ECGModelLoader(source, args.device, flip_tta=args.flip_tta, backend=args.backend)
    res = loader.inference(args.image, output_dir=args.output)
    print(f"Orientation: class {res['orientation_class']} ({res['orientation_name']}), "
          f"confidence {res['orientation_confidence']:.3f} [{res['method']}; weights {res['weights']}]")
    print(f"Lead labels found: {len(res['markers'])}/13" + (f"; {res['message']}" if res["message"] else ""))
    out = Path(args.output)
    print(f"Wrote {out / 'marker_prediction.jpg'} and {out / 'normalized.png'}")
    return 0
