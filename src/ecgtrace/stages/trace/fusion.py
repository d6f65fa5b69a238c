"""Per lead, the learned or the classical reader's path: both read the page, the page's ink decides.

The network transfers to pages it was not drawn for (noise, black-and-white scans, odd
grids) better than the classical reader, which in turn is sharper on a clean page, where its
ink map tells trace from grid (by colour, or a grey line by its lighter ink) and follows the ink
to the pixel. So a clean page (:func:`is_clean`: almost no ink away from the classical paths) is
read by the classical path alone; on any other page each lead window of each row takes the path
with more ink under it (:func:`fuse_rows`, both measured on the same ink map), unless the network
does not believe the classical path there (a shadow's edge on a crumpled page has ink too). A row
may switch reader at a lead switch, where the drawn trace jumps anyway. Inside a window the
classical path wins, a run where it left the thin stroke for broad ink (it parts from the
network's path onto ink with little stroke contrast, or onto ink the network does not believe) is
taken from the network's path (ECG-Image-Kit's wrinkle/dev07: 11.7 -> 17.5 dB)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from ecgtrace.paper import N_COLUMNS, N_ROWS, ROW_KEYS, Page
from ecgtrace.stages.trace.ink import ink_near_path, path_ink_radius
from ecgtrace.stages.trace.path import RowTrace, true_runs

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
    #: Within a window the classical path wins, a run where it parts from the network's path by more
    #: than this ...
    part_mm: float = 1.0
    #: ... and where its stroke contrast (:func:`stroke_contrast`) is under this share of the network
    #: path's is taken from the network (the classical path ran off the trace onto a shadow) ...
    splice_contrast: float = 0.5
    #: ... or under the network path's and the network puts less than this share of its belief there
    #: (a trace crossing a shadow has little contrast either way; ECG-Image-Kit wrinkle/dev07, aVR).
    splice_belief: float = 0.3
    #: Within a window the network wins, a run at least a millimetre long where the two paths part (by
    #: :attr:`part_mm`) takes the classical path where that lies on ink (at least :attr:`splice_ink`)
    #: and the network's path on under this share of it: after a calibration pulse the network can
    #: carry the pulse's foot on as a flat line under a tall first wave in shadow (ECG-Image-Kit
    #: wrinkle/dev03, dev08: lead III 6 -> 22 and 14 dB). Shorter runs, at a lead switch, are the
    #: network's jump between leads.
    bare_ink_share: float = 0.5
    splice_ink: float = 0.4


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


def strongest_within(prob: np.ndarray, radius: float) -> np.ndarray:
    """``prob`` with each pixel the strongest ink within ``radius`` px (at least 1) above or below it."""
    r = max(1, int(round(radius)))
    return cv2.dilate(prob, np.ones((2 * r + 1, 1), np.uint8))


def stroke_contrast(prob: np.ndarray, x: np.ndarray, y: np.ndarray, d: int, radius: float,
                    band: np.ndarray | None = None) -> np.ndarray:
    """Per path point, how much the ink there stands out from the ink ``d`` px away, across or along.

    A drawn stroke is thin: a flat one has paper ``d`` px above *and* below, a steep one ``d`` px to
    the left *and* right. A shadow or a crease is broad, and at its edge one side is as dark as the
    edge: the ink at the point (the strongest within ``radius`` px vertically) minus the darker of
    its two neighbours, the larger of the across and along contrasts, clipped at 0.
    ``band``: :func:`strongest_within` of ``prob`` and ``radius``, where the caller has it already.
    """
    h, w = prob.shape
    r = max(1, int(round(radius)))
    band = strongest_within(prob, radius) if band is None else band
    xi = np.clip(np.round(np.asarray(x, np.float64)).astype(int), 0, w - 1)
    yi = np.clip(np.round(np.asarray(y, np.float64)).astype(int), 0, h - 1)
    c = band[yi, xi]
    up, down = band[np.clip(yi - d - r, 0, h - 1), xi], band[np.clip(yi + d + r, 0, h - 1), xi]
    left, right = band[yi, np.clip(xi - d, 0, w - 1)], band[yi, np.clip(xi + d, 0, w - 1)]
    return np.clip(np.maximum(c - np.maximum(up, down), c - np.maximum(left, right)), 0.0, None)


def _parted_runs(base: RowTrace, w: np.ndarray, other: RowTrace, page: Page, p: FusionParams
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """Path ``base`` in window ``w`` -- its x, y, ink -- with the ``other`` path's y at those x, and the runs
    ``[a, b)`` of the window where the two part by more than :attr:`FusionParams.part_mm`."""
    y, ink = base.y[w].astype(np.float64), base.ink[w].astype(np.float64)
    x = base.x[w].astype(np.float64)
    yo = _at(other, other.y, x)
    part = np.abs(y - yo) > p.part_mm * page.px_per_mm
    return x, y, ink, yo, [(a, last + 1) for a, last in true_runs(part)]


def _at(tr: RowTrace, values: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Per-column ``values`` of path ``tr`` read at the columns ``x``."""
    order = np.argsort(tr.x)
    return np.interp(x, tr.x[order], np.asarray(values, np.float64)[order])


def _splice_strokes(c: RowTrace, w: np.ndarray, m: RowTrace, sharp_c: np.ndarray, sharp_m: np.ndarray,
                    page: Page, p: FusionParams, bel_c: np.ndarray | None = None,
                    bel_m: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(y, ink) of the classical path in window ``w`` with the runs where it left the stroke for broad
    ink (a shadow, a crease) taken from the network's path: where the two part by more than
    :attr:`FusionParams.part_mm` and the classical run's stroke contrast is under
    :attr:`FusionParams.splice_contrast` of the network run's, or under it while the network gives
    the classical run under :attr:`FusionParams.splice_belief` of its own run's belief."""
    x, y, ink, ym, runs = _parted_runs(c, w, m, page, p)
    if not runs:
        return y, ink
    sm = _at(m, sharp_m, x)
    bm = _at(m, bel_m, x) if bel_m is not None else None
    for a, b in runs:
        sc, smr = float(sharp_c[w][a:b].mean()), float(sm[a:b].mean())
        disbelieved = (bm is not None and bel_c is not None and sc < smr
                       and float(bel_c[w][a:b].mean()) < p.splice_belief * float(bm[a:b].mean()))
        if b - a >= 2 and (sc < p.splice_contrast * smr or disbelieved):
            y[a:b] = ym[a:b]
            ink[a:b] = _at(m, m.ink, x[a:b])
    return y, ink


def _splice_bare(m: RowTrace, w: np.ndarray, c: RowTrace, ink_m: np.ndarray, ink_c: np.ndarray, page: Page,
                 p: FusionParams) -> tuple[np.ndarray, np.ndarray]:
    """(y, ink) of the network's path in window ``w`` with the runs where it crosses paper beside the
    classical path's ink taken from the classical path (:attr:`FusionParams.bare_ink_share`)."""
    x, y, ink, yc, runs = _parted_runs(m, w, c, page, p)
    if not runs:
        return y, ink
    near_c = _at(c, ink_c, x)
    for a, b in runs:
        ic = float(near_c[a:b].mean())
        if b - a >= page.px_per_mm and ic >= p.splice_ink and float(ink_m[w][a:b].mean()) < p.bare_ink_share * ic:
            y[a:b] = yc[a:b]
            ink[a:b] = _at(c, c.ink, x[a:b])
    return y, ink


def _on_other_rows(tr: RowTrace, others: list[RowTrace], page: Page, tol_mm: float = 0.4) -> np.ndarray:
    """Per column of row path ``tr``: it runs within ``tol_mm`` of another row's path in ``others``,
    nearer that row's baseline than its own."""
    out = np.zeros(len(tr.x), bool)
    tol = tol_mm * page.px_per_mm
    for other in others:
        q = other.row
        if q == tr.row:
            continue
        near = np.abs(tr.y - _at(other, other.y, tr.x.astype(np.float64))) <= tol
        out |= near & (np.abs(tr.y - page.baseline_y(q)) < np.abs(tr.y - page.baseline_y(tr.row)))
    return out


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
    d = max(2, int(round(0.6 * page.px_per_mm)))  # stroke contrast 0.6 mm across and along
    band = strongest_within(prob, radius)  # one map for every path's stroke contrast
    rows: dict[str, RowTrace] = {}
    choice: dict[str, list[str]] = {}
    paths = [*model.values(), *classical.values()]
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
        sharp_m = stroke_contrast(prob, m.x, m.y, d, radius, band)
        sharp_c = stroke_contrast(prob, c.x, c.y, d, radius, band)
        # ink on another row's path is that row's: a classical path on a faint row beside a bold one
        # takes the bold row's ink, which outweighed the network's on the faint trace
        # (ECG-Image-Kit wrinkle/dev00: aVR 26 dB by the network, 1 dB fused)
        ink_c = np.where(_on_other_rows(c, paths, page), 0.0, ink_c)
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
            if pick == CLASSICAL and wm.any():  # (no network path in the window: nothing to splice from)
                y, ink = _splice_strokes(c, wc, m, sharp_c, sharp_m, page, p, bel_c, bel_m)
                parts.append((c.x[wc].astype(np.float64), y, ink, c.clipped[wc]))
            elif pick == MODEL and wc.any():
                y, ink = _splice_bare(m, wm, c, ink_m, ink_c, page, p)
                parts.append((m.x[wm].astype(np.float64), y, ink, m.clipped[wm]))
            else:
                parts.append((tr.x[w].astype(np.float64), tr.y[w], tr.ink[w], tr.clipped[w]))
        xs, ys, inks, clips = (np.concatenate(a) for a in zip(*parts))
        rows[key] = RowTrace(key=key, row=r, x=xs, y=ys, ink=inks, clipped=clips)
        choice[key] = picks
    return FusedRows(rows=rows, choice=choice)
