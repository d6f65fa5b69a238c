"""Training items rendered on the fly: the part every stage's synthetic data set shares.

Item ``i`` in epoch ``e`` is record ``e * n + i`` when ``fresh_per_epoch`` (a new page
every time), else record ``i``; a stage draws everything random from ``(seed, record)``,
so DataLoader workers and resumed runs see the same items.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from ecgtrace.data.render import StyleMix
from ecgtrace.data.synthetic import SyntheticPages, available_variants
from ecgtrace.errors import EcgTraceError
from ecgtrace.paper import CANONICAL, Page

#: Validation items come from records far from any training record of the same seed.
VAL_SEED_OFFSET = 1_000_003


def render_dpi(input_size: tuple[int, int] | list[int]) -> float:
    """Page resolution to render synthetic pages at for a network input of (h, w).

    About 1.5x the input width (so resizing down keeps detail), between 50 and 200 dpi:
    rendering a 2200 px page for a 352 px input would be wasted time.
    """
    return float(np.clip(1.5 * max(input_size) / CANONICAL.width_in, 50.0, CANONICAL.dpi))


class OnTheFlyPages(torch.utils.data.Dataset):
    """Base of the stages' synthetic data sets; subclasses define ``__getitem__``."""

    def __init__(self, n: int, seed: int, input_size: tuple[int, int], variants: tuple[str, ...] = (),
                 augment: bool = True, fresh_per_epoch: bool = True, page: Page | None = None,
                 mix: StyleMix = StyleMix()) -> None:
        self.n, self.seed, self.input_size = int(n), int(seed), tuple(int(v) for v in input_size)
        usable = tuple(available_variants())
        self.variants = tuple(variants) or usable
        bad = [v for v in self.variants if v not in usable]
        if bad:
            raise EcgTraceError(f"variant(s) {', '.join(bad)} cannot be rendered here; use some of {', '.join(usable)}")
        self.augment, self.fresh = bool(augment), bool(fresh_per_epoch)
        self.page = page or CANONICAL.scaled_to(int(round(render_dpi(self.input_size) * CANONICAL.width_in)))
        self.mix = mix
        self.epoch = 0
        self._pages = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def record_index(self, i: int) -> int:
        return (self.epoch * self.n + int(i)) if self.fresh else int(i)

    def pages(self):
        """The underlying :class:`SyntheticPages` (made lazily so the object pickles small)."""
        if self._pages is None:
            self._pages = SyntheticPages(2**31 - 1, variants=("0001",), seed=self.seed, page=self.page,
                                         mix=self.mix)
        return self._pages

    def __getstate__(self) -> dict:
        d = dict(self.__dict__)
        d["_pages"] = None
        return d


def style_mix(cfg: Any) -> StyleMix:
    """The renderer's share of augmented and wrinkled pages that ``cfg.DATA`` asks for."""
    a, w = float(cfg.DATA.SYNTHETIC_AUGMENT_P), float(cfg.DATA.SYNTHETIC_WRINKLE_P)
    try:
        return StyleMix(a, w)
    except EcgTraceError as e:  # StyleMix holds the bound; the user set it by its config key
        raise EcgTraceError(f"DATA.SYNTHETIC_AUGMENT_P={a} / DATA.SYNTHETIC_WRINKLE_P={w}: {e}") from e


def train_val_sets(cfg: Any, make: Callable[[int, int, bool], torch.utils.data.Dataset], min_val: int = 4
                   ) -> tuple[torch.utils.data.Dataset, torch.utils.data.Dataset | None]:
    """The training set (fresh pages each epoch) and a fixed validation set of TRAIN.VAL_FRACTION of it.

    ``make(n, seed, fresh_per_epoch)`` builds one data set; validation gets at least ``min_val``
    items, or none when TRAIN.VAL_FRACTION is 0.
    """
    n = int(cfg.DATA.SYNTHETIC_PER_EPOCH)
    frac = float(cfg.TRAIN.VAL_FRACTION)
    n_val = max(min_val, int(round(n * frac))) if frac > 0 else 0
    seed = int(cfg.DATA.SYNTHETIC_SEED)
    train = make(n, seed, True)
    val = make(n_val, seed + VAL_SEED_OFFSET, False) if n_val else None
    return train, val
