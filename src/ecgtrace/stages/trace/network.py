"""The learned reader's path: the network's column distributions read as one continuous path per row.

:meth:`ecgtrace.models.stage2.Stage2Model.row_logits` gives, per row strip, a
distribution of the trace's y down every pixel column. :func:`decode_path` reads it
with the same minimum-cost path search as the classical reader (:func:`viterbi`), so a
neighbouring row's peak is not followed; :func:`read_rows` maps the result back to the
rectified page as :class:`RowTrace` objects, which the rest of stage 2 shares.
"""

from __future__ import annotations

import numpy as np
import torch

from ecgtrace import paper
from ecgtrace.models.stage2 import DECODE_RADIUS, RowLogits, Stage2Model
from ecgtrace.paper import N_ROWS, ROW_KEYS
from ecgtrace.stages.trace.path import RowTrace, viterbi

#: Path decoding: cost (nats of -log p) per pixel of vertical move between columns.
PATH_STEP_NATS = 0.05


def decode_path(logits: torch.Tensor | np.ndarray, step_nats: float = PATH_STEP_NATS, free_cols: tuple[int, ...] = (),
                radius: int = DECODE_RADIUS) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) logits of one strip -> (sub-pixel y per column, confidence), decoded as one continuous path.

    The column-wise mode jumps to a neighbouring row's peak wherever that peak holds
    more probability than this row's trace; a minimum-cost path over ``-log p`` that
    pays ``step_nats`` per pixel of vertical move stays on the trace it is following.
    ``free_cols`` are columns where a jump is free (the lead switches of a row).
    The sub-pixel y is the probability-weighted mean over the path's span in the column
    (between its neighbours' rows) widened by ``radius``.
    """
    t = torch.as_tensor(logits).float()
    logp = torch.log_softmax(t, dim=0)
    cost = (-logp).cpu().numpy().astype(np.float64)
    step = np.full_like(cost, float(step_nats))
    # The drawn jump sits on the switch column (the next lead's first sample is drawn there): free on it and
    # one column after, never before. With the column before free too, the path jumped early and read the next
    # lead's level into this lead's last samples (transfer bench aug 22.28 -> 22.39 dB without that column).
    for c in free_cols:
        step[:, c:c + 2] = 0.0
    path = viterbi(cost, step)
    # The window of the mean spans the path's own move through this column (from its left to its
    # right neighbour) plus ``radius``: on a steep stroke the network spreads its belief along the
    # stroke, and the mean over all of it is the better estimate (the mode lands at one end); on flat
    # parts it stays narrow, clear of a neighbouring row's peaks. It never spans a lead switch.
    nb = np.stack([path, np.r_[path[:1], path[:-1]], np.r_[path[1:], path[-1:]]])
    lo, hi = nb.min(0), nb.max(0)
    for c in free_cols:
        sl = slice(max(0, c - 2), c + 3)
        lo[sl], hi[sl] = path[sl], path[sl]
    h = cost.shape[0]
    lo = torch.from_numpy(np.clip(lo - radius, 0, h - 1))
    hi = torch.from_numpy(np.clip(hi + radius, 0, h - 1))
    p = logp.exp().cpu()
    yy = torch.arange(h)[:, None]
    w = p * ((yy >= lo[None, :]) & (yy <= hi[None, :]))
    y = (w * yy.float()).sum(0) / w.sum(0).clamp_min(1e-8)
    return y.numpy().astype(np.float64), w.sum(0).numpy().astype(np.float64)


def read_rows(model: Stage2Model, rect_bgr: np.ndarray, out: RowLogits | None = None) -> dict[str, RowTrace]:
    """Per-row traces of a rectified page read by the network, in ``rect_bgr`` px (``ink`` = network confidence).

    ``out``: the network's :meth:`~Stage2Model.row_logits` of this page, where the caller has them already.
    """
    out = out if out is not None else model.row_logits(rect_bgr)
    page = out.page
    x0, x1 = page.signal_columns(page.width_px)
    xs = np.arange(x0, x1 + 1)
    sx, sy = out.scale
    hs = out.logits.shape[1]
    switches = tuple(int(round(page.column_x(c))) for c in range(1, paper.N_COLUMNS))
    rows = {}
    for r in range(N_ROWS):
        y, conf = decode_path(out.logits[r], free_cols=switches if r < N_ROWS - 1 else ())
        y, conf = y[x0:x1 + 1], conf[x0:x1 + 1]
        clipped = (y <= 1) | (y >= hs - 2)
        # pixel centres: column c of the resized page covers input px [c * sx, (c + 1) * sx)
        rows[ROW_KEYS[r]] = RowTrace(key=ROW_KEYS[r], row=r, x=(xs + 0.5) * sx - 0.5,
                                     y=(y + out.tops[r] + 0.5) * sy - 0.5, ink=conf, clipped=clipped)
    return rows


def path_belief(out: RowLogits, row: int, tr: RowTrace, radius: int = 2) -> np.ndarray:
    """Per column of ``tr`` (a path of row ``row`` in rectified-page px), how much of the network's column
    distribution lies within ``radius`` px (network px) of it: near 1 on what it reads as the trace,
    near 0 on what it does not (a shadow's edge the classical reader followed)."""
    sx, sy = out.scale
    p = torch.softmax(torch.as_tensor(out.logits[row]).float(), dim=0).cpu().numpy()
    h, w = p.shape
    cum = np.vstack([np.zeros((1, w)), np.cumsum(p, axis=0)])
    cx = np.clip(np.round((tr.x + 0.5) / sx - 0.5).astype(int), 0, w - 1)
    cy = (tr.y + 0.5) / sy - 0.5 - out.tops[row]
    lo = np.clip(np.round(cy - radius).astype(int), 0, h)
    hi = np.clip(np.round(cy + radius).astype(int) + 1, 0, h)
    return cum[hi, cx] - cum[lo, cx]
