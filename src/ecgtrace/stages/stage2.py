"""Stage 2 inference: rectified page -> the 12 lead signals in mV.

Without a checkpoint the classical reader (:mod:`ecgtrace.stages.trace_classical`)
is used; with a ``stage2_*.pth`` checkpoint the learned per-row trace model
(:mod:`ecgtrace.models.stage2`) gives the per-column y instead. Both paths share
the geometry (``paper.py``) and the lead cutting / band-limited resampling.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ecgtrace import paper
from ecgtrace.errors import EcgTraceError
from ecgtrace.paper import LAYOUT_3X4, N_ROWS
from ecgtrace.stages import trace_classical as tc
from ecgtrace.stages.base import LeadSignals, StageError

#: Einthoven/Goldberger relations (exact for ideal recordings): II = I + III, aVR + aVL + aVF = 0.
EINTHOVEN_ALPHA = 0.33


def einthoven_correct(signals: dict[str, np.ndarray], alpha: float = EINTHOVEN_ALPHA) -> dict[str, np.ndarray]:
    """Soft Einthoven correction on the samples where the limb leads overlap in time.

    In the 3x4 layout I, II (row 1 and the rhythm strip) and III share the first
    2.5 s window, and aVR, aVL, aVF the second; the residuals ``I + III - II`` and
    ``aVR + aVL + aVF`` are spread back over the leads (``alpha`` of the least-squares
    correction). The samples of the rhythm lead II outside its first window are kept.
    """
    out = {k: np.asarray(v, dtype=np.float64).copy() for k, v in signals.items()}
    need = ("I", "II", "III", "aVR", "aVL", "aVF")
    if any(k not in out for k in need):
        return out
    n = min(len(out["I"]), len(out["III"]), len(out["II"]))
    r = out["I"][:n] + out["III"][:n] - out["II"][:n]
    # least-squares projection onto I + III - II = 0 moves each lead by r/3 (signs by coefficient)
    out["I"][:n] -= alpha * r / 3
    out["III"][:n] -= alpha * r / 3
    out["II"][:n] += alpha * r / 3
    m = min(len(out["aVR"]), len(out["aVL"]), len(out["aVF"]))
    s = out["aVR"][:m] + out["aVL"][:m] + out["aVF"][:m]
    for k in ("aVR", "aVL", "aVF"):
        out[k][:m] -= alpha * s / 3
    return out


def find_checkpoint(checkpoints: str | Path | None, stage: int) -> Path | None:
    """The newest ``stage{stage}_*.pth`` in a folder (or the file itself); None when there is none."""
    if checkpoints is None:
        return None
    p = Path(checkpoints)
    if p.is_file():
        return p
    if not p.is_dir():
        raise EcgTraceError(f"checkpoint folder {p} not found; pass --checkpoints DIR holding stage{stage}_*.pth, or leave it out")
    cands = sorted(p.glob(f"stage{stage}_*.pth")) + sorted(p.glob(f"stage{stage}_checkpoints/*.pth"))
    if not cands:
        return None
    best = [c for c in cands if "best" in c.name]
    return (best or sorted(cands, key=lambda c: c.stat().st_mtime))[-1]


class Stage2:
    """Rectified page -> :class:`LeadSignals`.

    ``Stage2(checkpoint=None)`` uses the classical reader; a checkpoint path (a
    ``stage2_*.pth`` file) loads the learned model. ``einthoven`` switches on the soft
    Einthoven correction (see :func:`einthoven_correct`).
    """

    def __init__(self, checkpoint: str | Path | None = None, device: str = "cpu", einthoven: bool = False,
                 params: tc.ClassicalParams | None = None) -> None:
        self.device = device
        self.einthoven = einthoven
        self.params = params or tc.ClassicalParams()
        self.model = None
        self.checkpoint = Path(checkpoint) if checkpoint else None
        if self.checkpoint is not None:
            if not self.checkpoint.is_file():
                raise EcgTraceError(f"stage-2 checkpoint {self.checkpoint} not found; train one with "
                                    "`ecgtrace train --stage 2` or leave --checkpoints out")
            from ecgtrace.models.stage2 import load_stage2

            self.model = load_stage2(self.checkpoint, device=device)

    @property
    def method(self) -> str:
        return "model" if self.model is not None else "classical"

    def rows(self, rect_bgr: np.ndarray) -> dict[str, tc.RowTrace]:
        """Per-row traces (rectified px) of a page, by the model or the classical reader."""
        if self.model is not None:
            return self.model.read_rows(rect_bgr)
        return tc.trace_rows(rect_bgr, self.params).rows

    def __call__(self, rect_bgr: np.ndarray, fs: float, n_samples: dict[str, int] | None = None) -> LeadSignals:
        """Read the 12 leads of a rectified page at ``fs`` Hz.

        ``signals[lead]`` holds only the lead's own window (round(2.5 fs) samples;
        lead II the full 10 s of the rhythm strip); ``n_samples`` overrides the
        length per lead (e.g. ``number_of_rows`` of a competition ``test.csv``).
        """
        if rect_bgr is None or rect_bgr.ndim not in (2, 3) or min(rect_bgr.shape[:2]) < 64:
            raise StageError("stage 2 needs a rectified page image (at least 64 px); run stages 0 and 1 first")
        if not (fs > 0 and np.isfinite(fs)):
            raise EcgTraceError(f"sampling rate must be a positive number of Hz, got {fs}")
        try:
            page = tc.page_for(rect_bgr)
        except ValueError as e:
            raise StageError(f"{e}; run stage 1 to rectify the page first") from e
        rows = self.rows(rect_bgr)
        if self.model is not None:
            # judge the model's path by the page's own ink near it, as the classical path is judged;
            # at the model's own resolution (a quarter of the pixels of a 200 dpi page)
            ph, pw = self.model.page_size
            small = rect_bgr if rect_bgr.shape[1] <= pw else cv2.resize(rect_bgr, (pw, ph), interpolation=cv2.INTER_AREA)
            sp = tc.page_for(small)
            prob = tc.mask_furniture(tc.trace_probability(small), sp, self.params)
            s = small.shape[1] / rect_bgr.shape[1]
            radius = max(1.0, 2.0 * sp.px_per_mm / paper.CANONICAL.px_per_mm)
            for tr in rows.values():
                tr.ink = tc.ink_near_path(prob, (tr.x + 0.5) * s - 0.5, (tr.y + 0.5) * s - 0.5, radius)
        values = {k: tc.row_values(tr, page) for k, tr in rows.items()}
        signals = tc.cut_leads(values, fs, n_samples)
        if self.einthoven:
            signals = einthoven_correct(signals)
        res = tc.ClassicalResult(rows=rows)
        quality = tc.quality_flags(res, page, self.params)
        traces_px = {k: np.stack([tr.x.astype(np.float64), tr.y], axis=1) for k, tr in rows.items()}
        return LeadSignals(signals=signals, fs=float(fs), traces_px=traces_px, quality=quality, method=self.method)


def lead_rows_of(key: str) -> tuple[str, ...]:
    """Leads shown by a row key (``row0``..``row2``, or the rhythm strip)."""
    if key == paper.RHYTHM_KEY:
        return (paper.RHYTHM_LEAD,)
    return LAYOUT_3X4[tc.ROW_KEYS.index(key)] if key in tc.ROW_KEYS[: N_ROWS - 1] else ()
