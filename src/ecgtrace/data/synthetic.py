"""Synthetic pages on the fly: ``SyntheticPages`` renders page ``i`` deterministically from ``(seed, i)``.

It is cheap to construct and picklable (it holds only numbers and paths), so a
``torch.utils.data.DataLoader`` can hand it to worker processes that render
fresh pages while the model trains. Distorted variants come from
:mod:`ecgtrace.data.distort` (``apply_variant``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from ecgtrace.data import distort
from ecgtrace.data.groundtruth import GroundTruth
from ecgtrace.data.render import RenderStyle, StyleMix, random_style, render_page
from ecgtrace.data.signals import FS_CHOICES, Signals, read_wfdb_record, synthesize_ecg
from ecgtrace.errors import EcgTraceError
from ecgtrace.paper import CANONICAL, LEADS, Page, csv_rows

CLEAN = "0001"
#: Every variant code of the competition (0002, 0007, 0008 do not exist).
ALL_VARIANTS: tuple[str, ...] = ("0001", "0003", "0004", "0005", "0006", "0009", "0010", "0011", "0012")


@dataclass
class PageSample:
    """One page image with whatever truth is known about it.

    Attributes:
        image: BGR uint8 (H, W, 3).
        gt: exact geometry (synthetic pages), or ``None`` (real data without a sidecar).
        signals: 12 lead columns in :data:`ecgtrace.paper.LEADS` order, competition style
            (lead II full, other leads only in their 2.5 s window, NaN elsewhere), or ``None``.
        fs: sampling rate of ``signals``.
        record_id: record id (an integer as a string for competition data).
        variant: variant code such as ``"0001"``.
    """

    image: np.ndarray
    gt: GroundTruth | None
    signals: pd.DataFrame | None
    fs: float
    record_id: str
    variant: str


def competition_frame(signals: Signals, fs: float) -> pd.DataFrame:
    """Signals as the competition's ``{id}.csv`` holds them: II full, others NaN outside their window."""
    n = len(signals["II"])
    cols = {}
    for lead in LEADS:
        col = np.full(n, np.nan)
        i0, i1 = csv_rows(lead, fs, n)
        col[i0:i1] = np.asarray(signals[lead], dtype=np.float64)[i0:i1]
        cols[lead] = col
    return pd.DataFrame(cols, columns=list(LEADS))


def available_variants() -> tuple[str, ...]:
    """Variant codes the renderer can draw."""
    return tuple(distort.VARIANTS)


def check_variants(variants) -> tuple[str, ...]:
    """Normalise variant names (``"3"`` -> ``"0003"``) and fail with one clear line on unknown ones."""
    if isinstance(variants, str):
        variants = [v for v in variants.split(",") if v.strip()]
    out = []
    for v in variants:
        v = str(v).strip()
        code = v.zfill(4) if v.isdigit() else v
        if code not in ALL_VARIANTS:
            raise EcgTraceError(f"unknown variant {v!r}; valid variants are {', '.join(ALL_VARIANTS)}")
        out.append(code)
    if not out:
        raise EcgTraceError(f"no variant given; choose from {', '.join(ALL_VARIANTS)}")
    return tuple(dict.fromkeys(out))


def apply_variant(image: np.ndarray, gt: GroundTruth, variant: str, rng: np.random.Generator,
                  orientation: int | None = None) -> tuple[np.ndarray, GroundTruth]:
    """Turn a clean render into ``variant``; ``"0001"`` is the clean page itself (unless an orientation is asked)."""
    if variant == CLEAN and orientation in (None, 0):
        return image, gt
    image, gt = distort.apply_variant(image, gt, variant, rng, orientation=orientation)
    if gt.variant != variant:  # the variant code always travels with the ground truth
        gt = replace(gt, variant=variant)
    return image, gt


class SyntheticPages:
    """``n`` synthetic pages; item ``i`` shows variant ``variants[i % len(variants)]`` of record ``(seed, i)``.

    Args:
        n: number of pages.
        variants: variant codes to cycle through.
        seed: base seed; item ``i`` depends only on ``(seed, i)``.
        page: page geometry (``Page(dpi=100)`` renders smaller pages).
        fs_choices: sampling rates drawn per record.
        method: signal synthesizer (``"parametric"`` or ``"neurokit2"``).
        wfdb_paths: WFDB record paths (see :func:`ecgtrace.data.signals.find_wfdb_records`) to
            draw signals from instead of synthesizing; record ``i`` uses path ``i % len``.
        orientation: passed to ``apply_variant`` (None: the variant decides).
        style: fixed look; random per record when ``None``.
        mix: share of augmented and wrinkled looks among the random ones.
    """

    def __init__(self, n: int, variants=(CLEAN,), seed: int = 0, page: Page = CANONICAL,
                 fs_choices=FS_CHOICES, method: str = "parametric", wfdb_paths=None,
                 orientation: int | None = None, style: RenderStyle | None = None,
                 mix: StyleMix = StyleMix()) -> None:
        if n < 0:
            raise EcgTraceError(f"number of pages must be >= 0, got {n}")
        self.n = int(n)
        self.variants = check_variants(variants)
        self.seed = int(seed)
        self.page = page
        self.fs_choices = tuple(fs_choices)
        self.method = method
        self.wfdb_paths = [str(p) for p in wfdb_paths] if wfdb_paths else None
        self.orientation = orientation
        self.style = style
        self.mix = mix

    def __len__(self) -> int:
        return self.n

    def _rng(self, i: int, stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, int(i), stream])

    def variant_rng(self, i: int, variant: str) -> np.random.Generator:
        """Generator that drives the distortion of record ``i`` into ``variant``."""
        return self._rng(i, 2 + ALL_VARIANTS.index(variant))

    def record(self, i: int) -> tuple[Signals, float]:
        """Signals (full 10 s, every lead) and fs of record ``i``."""
        rng = self._rng(i, 0)
        fs = float(self.fs_choices[int(rng.integers(len(self.fs_choices)))])
        if self.wfdb_paths:
            rec = read_wfdb_record(Path(self.wfdb_paths[int(i) % len(self.wfdb_paths)]))
            return rec.to_fs(fs), fs
        return synthesize_ecg(rng, fs=fs, method=self.method), fs

    def style_of(self, i: int) -> RenderStyle:
        """The look of record ``i`` (the fixed ``style``, or the random one its seed draws)."""
        return self.style or random_style(self._rng(i, 1), self.mix)

    def clean(self, i: int) -> tuple[np.ndarray, GroundTruth, Signals, float]:
        """Clean render of record ``i``: (image, gt, signals, fs)."""
        signals, fs = self.record(i)
        rng = self._rng(i, 1)
        style = self.style or random_style(rng, self.mix)  # the same draw as style_of(i); rng then drives the text
        image, gt = render_page(signals, fs, page=self.page, style=style, rng=rng)
        return image, gt, signals, fs

    def render(self, i: int, variant: str | None = None) -> PageSample:
        """Record ``i`` in ``variant`` (default: the variant item ``i`` cycles to)."""
        variant = variant or self.variants[int(i) % len(self.variants)]
        image, gt, signals, fs = self.clean(i)
        image, gt = apply_variant(image, gt, variant, self.variant_rng(i, variant),
                                  orientation=self.orientation)
        return PageSample(image=image, gt=gt, signals=competition_frame(signals, fs), fs=fs, record_id=str(i),
                          variant=variant)

    def __getitem__(self, i: int) -> PageSample:
        if not -self.n <= i < self.n:
            raise IndexError(f"page {i} out of range 0..{self.n - 1}")
        return self.render(i % self.n)
