"""``ecgtrace contact-sheet``: one synthetic ECG in every variant, or (``--spread N``) N random training
pages, tiled with captions.

The spread sheet shows what the training data looks like: every page has its own random look
(:func:`ecgtrace.data.render.random_style`: grid, pen, lead-switch marks, calibration pulse, labels,
source resolution, text, ECG-Image-Kit augmentation) and cycles through the variants.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

import cv2
import numpy as np

from ecgtrace.errors import EcgTraceError
from ecgtrace.io import atomic_write


def register(subparsers) -> None:
    """Add the ``contact-sheet`` subcommand."""
    p = subparsers.add_parser(
        "contact-sheet",
        help="render one ECG in every variant and tile them into one PNG",
        description="Render one synthetic ECG page in every image variant (0001 clean ... 0012 mouldy B/W scan) "
                    "and tile them with captions, to compare by eye with real pictures.",
    )
    p.add_argument("--out", required=True, help="PNG file to write, e.g. outputs/contact_sheet.png")
    p.add_argument("--seed", type=int, default=0, help="which synthetic ECG (default 0)")
    p.add_argument("--variants", default=None, help="comma-separated variant codes (default: every available one)")
    p.add_argument("--tile-width", type=int, default=880, dest="tile_width", help="width of each tile in px")
    p.add_argument("--spread", type=int, default=0, metavar="N",
                   help="instead: N random training pages (random look per page, variants cycling), "
                        "to see the spread of the training distribution")
    p.add_argument("--real", default=None,
                   help="optional folder of real ECG pictures; up to 3 are added as a last row for comparison")
    p.set_defaults(func=run)


def _caption(tile: np.ndarray, text: str) -> np.ndarray:
    bar = np.full((34, tile.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, text, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.62, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([bar, tile])


def _fit(img: np.ndarray, w: int, h: int) -> np.ndarray:
    """Scale ``img`` into a w x h white box, keeping its aspect ratio (rotated variants fit too)."""
    s = min(w / img.shape[1], h / img.shape[0])
    small = cv2.resize(img, (max(1, int(img.shape[1] * s)), max(1, int(img.shape[0] * s))),
                       interpolation=cv2.INTER_AREA)
    box = np.full((h, w, 3), 255, np.uint8)
    y, x = (h - small.shape[0]) // 2, (w - small.shape[1]) // 2
    box[y:y + small.shape[0], x:x + small.shape[1]] = small
    return box


def _describe(style) -> str:
    """A short caption of a page's look."""
    mark = style.switch_mark if style.separators else "none"
    aug = style.augment
    a = ""
    if aug is not None:
        a = f" eik(n{aug.noise_sigma:.0f} r{aug.rotate_deg:+.1f}" + (f" {aug.temperature_k / 1000:.0f}K" if
                                                                    aug.temperature_k else "") + ")"
    return (f"{style.grid} {style.trace_width_pt:.2f}pt {mark} cal:{style.cal_shape if style.calibration else '-'}"
            f" {style.source_dpi or 0:.0f}dpi{a}")


def _tile(tiles: list[np.ndarray], tile_width: int, cols: int = 3) -> np.ndarray:
    """Tiles in rows of ``cols`` with 8 px white gaps."""
    rows = math.ceil(len(tiles) / cols)
    blank = np.full_like(tiles[0], 255)
    tiles = tiles + [blank] * (rows * cols - len(tiles))
    pad = 8
    grid_rows = []
    for r in range(rows):
        row = []
        for c in range(cols):
            row += [tiles[r * cols + c], np.full((tiles[0].shape[0], pad, 3), 255, np.uint8)]
        grid_rows += [np.hstack(row[:-1]), np.full((pad, cols * tile_width + (cols - 1) * pad, 3), 255, np.uint8)]
    return np.vstack(grid_rows[:-1])


def make_spread_sheet(n: int, seed: int = 0, variants=None, tile_width: int = 880, cols: int = 4) -> np.ndarray:
    """``n`` random training pages (a random look each; variants cycling), captioned with their look."""
    from ecgtrace.data.synthetic import SyntheticPages, available_variants, check_variants

    variants = check_variants(variants) if variants else available_variants()
    pages = SyntheticPages(n, variants=variants, seed=seed)
    tiles = []
    for i in range(n):
        s = pages[i]
        h = int(round(tile_width * 1700 / 2200))
        tiles.append(_caption(_fit(s.image, tile_width, h), f"#{i} {s.variant} {_describe(pages.style_of(i))}"))
    sheet = _tile(tiles, tile_width, cols)
    head = np.full((44, sheet.shape[1], 3), 255, np.uint8)
    cv2.putText(head, f"ecgtrace contact sheet: {n} random training pages, seed {seed}", (8, 30),
                cv2.FONT_HERSHEY_SIMPLEX, 0.8, (0, 0, 0), 2, cv2.LINE_AA)
    return np.vstack([head, sheet])


def make_sheet(seed: int = 0, variants=None, tile_width: int = 880, real: str | Path | None = None) -> np.ndarray:
    """The contact sheet as a BGR image."""
    from ecgtrace.data.synthetic import SyntheticPages, apply_variant, available_variants, check_variants

    variants = check_variants(variants) if variants else available_variants()
    pages = SyntheticPages(1, variants=variants, seed=seed)
    image, gt, _, fs = pages.clean(0)
    tile_h = int(round(tile_width * image.shape[0] / image.shape[1]))
    try:
        from ecgtrace.data.distort import VARIANT_INFO
    except ModuleNotFoundError:
        VARIANT_INFO = {"0001": "clean render"}
    tiles = []
    for v in variants:
        img_v, _ = apply_variant(image.copy(), gt, v, pages.variant_rng(0, v))
        tiles.append(_caption(_fit(img_v, tile_width, tile_h), f"{v}: {VARIANT_INFO.get(v, '')}"))
    if real:
        folder = Path(real)
        if not folder.is_dir():
            raise EcgTraceError(f"--real {folder} is not a folder of images")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"))[:3]
        for p in files:
            im = cv2.imread(str(p), cv2.IMREAD_COLOR)
            if im is not None:
                tiles.append(_caption(_fit(im, tile_width, tile_h), f"real: {p.name}"))
    sheet = _tile(tiles, tile_width, 3)
    head = np.full((44, sheet.shape[1], 3), 255, np.uint8)
    cv2.putText(head, f"ecgtrace contact sheet: synthetic ECG seed {seed}, fs {fs:g} Hz, page {image.shape[1]}x"
                f"{image.shape[0]}", (8, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (0, 0, 0), 2, cv2.LINE_AA)
    return np.vstack([head, sheet])


def run(args: argparse.Namespace) -> int:
    """Write the sheet (atomically) and say where it went."""
    out = Path(args.out)
    if out.is_dir():
        raise EcgTraceError(f"--out {out} is a folder; pass a file name such as {out / 'contact_sheet.png'}")
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise EcgTraceError(f"--out {out} must end in .png or .jpg")
    if args.tile_width < 100:
        raise EcgTraceError(f"--tile-width must be at least 100 px, got {args.tile_width}")
    if args.spread < 0 or args.spread > 200:
        raise EcgTraceError(f"--spread must be within 0..200 pages, got {args.spread}")
    if args.spread:
        sheet = make_spread_sheet(args.spread, args.seed, args.variants, args.tile_width)
    else:
        sheet = make_sheet(args.seed, args.variants, args.tile_width, args.real)
    with atomic_write(out) as tmp:
        if not cv2.imwrite(str(tmp), sheet):
            raise EcgTraceError(f"could not write {out}; check the folder is writable")
    print(f"wrote contact sheet {os.path.abspath(out)} ({sheet.shape[1]}x{sheet.shape[0]})")
    return 0
