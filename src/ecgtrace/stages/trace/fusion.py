"""Per lead, the learned or the classical reader's path: both read the page, the page's ink decides.

The network transfers to pages it was not drawn for (noise, black-and-white scans, odd
grids) better than the classical reader, which in turn is sharper on a clean page, where its
ink map tells trace from grid (by colour, or a grey line by its lighter ink) and follows the ink
to the pixel. So a clean page (:func:`is_clean`: almost no ink away from the classical paths) is
read by the classical path alone; on any other page each lead window of each row takes the path
with more ink under it (:func:`fuse_rows`, both measured on the same ink map), unless the network
does not believe the classical path there (a shadow's edge on a crumpled page has ink too). A row
may switch reader at a lead switch, where the drawn trace jumps anyway."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from ecgtrace.paper import N_COLUMNS, N_ROWS, ROW_KEYS, Page
from ecgtrace.stages.trace.ink import ink_near_path, path_ink_radius
from ecgtrace.stages.trace.path import RowTrace

#: Reader names in :attr:`FusedRows.choice`.
MODEL, CLASSICAL = "model", "classical"
#: Ink under a path below which its column crosses paper (:func:`off_ink_share`).
OFF_INK = 0.1


@dataclass(frozen=True)
class FusionParams:
    """When the classical path wins a lead window (chosen on the ECG-Image-Kit transfer set, see the README)."""

    #: The classical path wins a lead window when its ink exceeds the network path's by this much.
    ink_margin: float = 0.01
    #: A clean page (stray ink: fraction of strong-ink pixels more than 2 mm from every classical
    #: path, below this) is read by the classical path alone. (Until the ink map kept a black trace
    #: on a grey grid line, only coloured grids qualified; ECG-Image-Kit's black-and-white pages now
    #: read 22.5 dB classical-only against 21.0 fused.)
    clean_stray_ink: float = 0.001
    #: ... and where the classical paths cross paper (ink below :data:`OFF_INK`) on at most this share
    #: of their columns: a faint stroke is not strong ink, so a path that cuts every QRS short leaves no
    #: stray ink (ECG-Image-Kit aug/dev01, 18 % of its columns off ink: 10.4 dB classical, 22.7 fused;
    #: the clean and bw pages of eik-dev have at most 0.8 %).
    clean_off_ink: float = 0.02
    #: On a page that is not clean, the classical path wins a window (by :attr:`ink_margin`) only where the
    #: network puts at least this share of the belief it gives its own path on the classical one
    #: (:func:`ecgtrace.stages.trace.network.path_belief`): ECG-Image-Kit's wrinkled pages dev00 and dev05
    #: went from 0.4 and -8.4 dB (classical paths along shadow edges) to 8.1 and 8.3 (weights of 72d5405).
    belief_ratio: float = 0.5
    #: That veto needs the network's own path on ink, at least this share of the classical path's: where
    #: it reads paper (a page it cannot read: passed through unrectified, say), its belief says nothing.
    belief_min_ink_share: float = 0.5


@dataclass
class FusedRows:
    """The fused row paths and, per row and lead window, which reader gave it."""

    rows: dict[str, RowTrace]
    choice: dict[str, list[str]]  # row key -> reader per lead window (N_COLUMNS entries)


def _window(tr: RowTrace, page: Page, col: int) -> np.ndarray:
    """Boolean mask of the path columns inside lead window ``col`` of the row (the last one closed)."""
    xa, xb = page.column_x(col), page.column_x(col + 1)
    return (tr.x >= xa) & ((tr.x < xb) if col < N_COLUMNS - 1 else (tr.x <= xb + 1))


def stray_ink(prob: np.ndarray, rows: dict[str, RowTrace], page: Page) -> float:
    """Fraction of strong-ink pixels (``prob`` > 0.5) of the signal area more than 2 mm from every path."""
    near = np.zeros(prob.shape, np.uint8)
    for tr in rows.values():
        pts = np.round(np.stack([tr.x, tr.y], axis=1)).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(near, [pts], False, 255, thickness=max(1, int(4 * page.px_per_mm)))
    x0, x1 = page.signal_columns(prob.shape[1])
    away = near[:, x0:x1] == 0
    return float((prob[:, x0:x1][away] > 0.5).mean()) if away.any() else 0.0


def off_ink_share(rows: dict[str, RowTrace], page: Page, width_px: int) -> float:
    """Share of the paths' columns in the signal area whose ink (``RowTrace.ink``) is below :data:`OFF_INK`."""
    x0, x1 = page.signal_columns(width_px)
    ink = np.concatenate([tr.ink[(tr.x >= x0) & (tr.x < x1)] for tr in rows.values()] or [np.zeros(0)])
    return float((ink < OFF_INK).mean()) if ink.size else 1.0


def is_clean(prob: np.ndarray, classical: dict[str, RowTrace], page: Page, params: FusionParams | None = None) -> bool:
    """True for a page with almost no stray ink and classical paths on ink (where that path is best), whatever its colours."""
    p = params or FusionParams()
    return (stray_ink(prob, classical, page) < p.clean_stray_ink
            and off_ink_share(classical, page, prob.shape[1]) <= p.clean_off_ink)


def fuse_rows(model: dict[str, RowTrace], classical: dict[str, RowTrace], prob: np.ndarray, page: Page,
              params: FusionParams | None = None,
              belief: Callable[[int, RowTrace], np.ndarray] | None = None) -> FusedRows:
    """One path per row, each lead window taken from the reader :class:`FusionParams` prefers.

    ``prob``: the page's trace-ink map at ``page``'s resolution (both paths are in its px);
    the ink under each path is measured on it the same way, so the two are comparable.
    ``belief(row, path)``: the network's belief per path column (``network.path_belief``); without
    it the ink alone decides.
    """
    p = params or FusionParams()
    radius = path_ink_radius(page)
    rows: dict[str, RowTrace] = {}
    choice: dict[str, list[str]] = {}
    for r in range(N_ROWS):
        key = ROW_KEYS[r]
        if key not in model or key not in classical:
            rows[key] = model.get(key) or classical[key]
            choice[key] = [MODEL if key in model else CLASSICAL] * N_COLUMNS
            continue
        m, c = model[key], classical[key]
        ink_m = ink_near_path(prob, m.x, m.y, radius)
        ink_c = ink_near_path(prob, c.x, c.y, radius)
        bel_m, bel_c = (belief(r, m), belief(r, c)) if belief is not None else (None, None)
        parts, picks = [], []
        for col in range(N_COLUMNS):
            wc, wm = _window(c, page, col), _window(m, page, col)
            if not wc.any() or not wm.any():
                pick = MODEL if wm.any() else CLASSICAL
            else:
                im, ic = float(ink_m[wm].mean()), float(ink_c[wc].mean())
                inkier = ic > im + p.ink_margin
                believed = (bel_c is None or im < p.belief_min_ink_share * ic
                            or float(bel_c[wc].mean()) >= p.belief_ratio * float(bel_m[wm].mean()))
                pick = CLASSICAL if inkier and believed else MODEL
            picks.append(pick)
            tr, w = (c, wc) if pick == CLASSICAL else (m, wm)
            parts.append((tr.x[w].astype(np.float64), tr.y[w], tr.ink[w], tr.clipped[w]))
        xs, ys, inks, clips = (np.concatenate(a) for a in zip(*parts))
        rows[key] = RowTrace(key=key, row=r, x=xs, y=ys, ink=inks, clipped=clips)
        choice[key] = picks
    return FusedRows(rows=rows, choice=choice)
