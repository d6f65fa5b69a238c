"""``ecgtrace stage1``: rectify one (normalized) page; write rectified.png and lattice_overlay.png."""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from ecgtrace.commands.models import add_weights_options
from ecgtrace.errors import EcgTraceError
from ecgtrace.io import atomic_write


def register(subparsers) -> None:
    """Add the ``stage1`` subcommand."""
    p = subparsers.add_parser(
        "stage1",
        help="find the 5 mm grid and rectify a page onto the perfect lattice",
        description="Run stage 1 on a page (normally stage 0's normalized.png): detects the 5 mm grid, fits the "
                    "lattice and writes rectified.png (the page resampled so the grid is the canonical lattice), "
                    "lattice_overlay.png (the fitted lattice and detected nodes on the input) and rectify_map.npy "
                    "(float32 H x W x 2: for each rectified pixel, its x, y in the input). Prints the residual grid "
                    "error. Without --checkpoint the shipped weights are used, else (or with --classical) the classical "
                    "path (grid periodicity). Pages without a visible grid are passed through unrectified and "
                    "flagged.",
    )
    add_weights_options(p, single_stage=1)
    p.add_argument("--image", required=True, help="input page (stage 0 output, ~2200x1700)")
    p.add_argument("--output", default="./outputs/inference/", help="output folder (default ./outputs/inference/)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--no-refine", action="store_true", dest="no_refine",
                   help="with --checkpoint: use the network's node positions as they are")
    p.set_defaults(func=run)


def _write_image(path: Path, img: np.ndarray) -> None:
    ok, buf = cv2.imencode(path.suffix, img)
    if not ok:
        raise EcgTraceError(f"cannot encode {path.name}; check the output folder")
    with atomic_write(path) as tmp:
        tmp.write_bytes(buf.tobytes())


def run(args: argparse.Namespace) -> int:
    """Rectify, write the outputs, print the grid error and the method."""
    from ecgtrace.stages.stage1 import Stage1, lattice_overlay

    src = Path(args.image)
    if not src.is_file():
        raise EcgTraceError(f"image {src} not found; give a page picture (e.g. stage 0's normalized.png)")
    img = cv2.imread(str(src), cv2.IMREAD_COLOR)
    if img is None:
        raise EcgTraceError(f"cannot read {src} as an image; give a PNG or JPEG file")
    from ecgtrace.models.shipped import resolve_weights

    source = resolve_weights(1, args.checkpoint, classical=args.classical)
    stage = Stage1(checkpoint=source, device=args.device, refine=not args.no_refine, backend=args.backend)
    rect = stage(img)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    _write_image(out / "rectified.png", rect.image)
    _write_image(out / "lattice_overlay.png", lattice_overlay(img, rect, stage.page))
    with atomic_write(out / "rectify_map.npy") as tmp:
        np.save(tmp, rect.map_xy)  # tmp ends in .npy, so np.save keeps its name
    if rect.ok:
        print(f"Grid error: {rect.grid_error_px:.2f} px (held-out nodes, canonical px); confidence "
              f"{rect.confidence:.2f}; method {rect.method}; weights {stage.weights.label()}")
        print(rect.message)
    else:
        print(f"Not rectified (method {rect.method}, weights {stage.weights.label()}): {rect.message}")
    print(f"Wrote {out / 'rectified.png'}, {out / 'lattice_overlay.png'} and {out / 'rectify_map.npy'}")
    return 0
