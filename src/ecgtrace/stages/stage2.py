"""Stage 2 inference: rectified page -> the 12 lead signals in mV.

Without a checkpoint the classical reader (:mod:`ecgtrace.stages.trace_classical`)
is used; with a ``stage2_*.pth`` checkpoint the learned per-row trace model
(:mod:`ecgtrace.models.stage2`, read by :mod:`ecgtrace.stages.trace.network`) gives
the per-column y instead. Both paths share the geometry (``paper.py``), the lead
cutting / band-limited resampling and the quality flags (:mod:`ecgtrace.stages.trace`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ecgtrace import paper
from ecgtrace.errors import EcgTraceError
from ecgtrace.models.device import resolve_device
from ecgtrace.models.shipped import WeightsSource, as_source, open_weights
from ecgtrace.models.stage2 import RowLogits, Stage2Model, load_stage2, network_source
from ecgtrace.stages import trace_classical as tc
from ecgtrace.stages.base import LeadSignals, StageError
from ecgtrace.stages.steps import step
from ecgtrace.stages import trace
from ecgtrace.stages.trace import fusion, network, row_start, switch_marks
from ecgtrace.stages.trace.path import RowTrace

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


class Stage2:
    """Rectified page -> :class:`LeadSignals`.

    ``Stage2(checkpoint=None)`` uses the classical reader; a checkpoint path (a
    ``stage2_*.pth`` file or an exported ``.safetensors``) or a
    :class:`~ecgtrace.models.shipped.WeightsSource` (the shipped weights) loads the learned
    model; ``weights`` says which. ``einthoven`` switches on the soft Einthoven correction
    (see :func:`einthoven_correct`). With a model, ``fuse`` (default) has the classical reader read
    the page too and takes each lead window from the path the page's ink favours
    (:mod:`ecgtrace.stages.trace.fusion`); ``fuse=False`` keeps the network's paths alone.
    ``backend="onnx"`` runs the network with onnxruntime (an ``.onnx`` checkpoint always does). ``precision``
    (default ``$ECGTRACE_PRECISION``, else auto) is what the network computes in; the shipped weights run as
    their shipped int8 network where it says so (:func:`~ecgtrace.models.stage2.network_source`).
    """

    def __init__(self, checkpoint: str | Path | WeightsSource | None = None, device: str = "cpu",
                 einthoven: bool = False, params: trace.ClassicalParams | None = None, fuse: bool = True,
                 fusion_params: fusion.FusionParams | None = None, backend: str = "torch",
                 precision: str | None = None) -> None:
        self.fuse = fuse
        self.fusion_params = fusion_params or fusion.FusionParams()
        self.device = str(resolve_device(device, "stage 2"))
        self.einthoven = einthoven
        self.params = params or trace.ClassicalParams()
        source = as_source(checkpoint, 2, backend)
        if source.uses_network:  # a bad ECGTRACE_PRECISION is the user's setting, not a broken weights file
            # the shipped int8 network, where it is the one to run
            source = network_source(source, self.device, precision)
        if source.kind == "checkpoint" and not source.path.is_file():
            raise EcgTraceError(f"stage-2 checkpoint {source.path} not found; train one with "
                                "`ecgtrace train --stage 2` or leave --checkpoints out")
        self.model: Stage2Model | None
        self.model, self.weights = open_weights(source, lambda p: load_stage2(p, self.device, source.backend,
                                                                               precision))
        self.checkpoint = self.weights.path if self.model is not None else None

    @property
    def method(self) -> str:
        if self.model is None:
            return "classical"
        return "model+classical" if self.fuse else "model"

    def __call__(self, rect_bgr: np.ndarray, fs: float, n_samples: dict[str, int] | None = None,
                 pen_offset_px: float | None = None) -> LeadSignals:
        """Read the 12 leads of a rectified page at ``fs`` Hz.

        ``signals[lead]`` holds only the lead's own window (round(2.5 fs) samples;
        lead II the full 10 s of the rhythm strip); ``n_samples`` overrides the
        length per lead (e.g. ``number_of_rows`` of a competition ``test.csv``).
        ``pen_offset_px``: where the drawn line sits from the true one, in rectified px (the
        pipeline scales :data:`~ecgtrace.paper.PEN_OFFSET_PX` from the picture's own pixels);
        None assumes the page was drawn at this resolution.
        """
        offset = paper.PEN_OFFSET_PX if pen_offset_px is None else float(pen_offset_px)
        with step("stage2"):
            return self._run(rect_bgr, fs, n_samples, offset)

    def _network_rows(self, rect_bgr: np.ndarray) -> tuple[dict[str, RowTrace], RowLogits]:
        """The network's row paths (``ink`` = the page's ink near each, as the classical path is judged) and logits."""
        with step("network"):
            out = self.model.row_logits(rect_bgr)
        with step("network paths"):
            rows = network.read_rows(self.model, rect_bgr, out)
        # at the model's own resolution (a quarter of the pixels of a 200 dpi page)
        small = rect_bgr if rect_bgr.shape[1] <= self.model.page_size[1] else self.model.model_page(rect_bgr)
        sp = paper.page_for(small)
        with step("network ink"):
            prob = trace.mask_furniture(trace.trace_probability(small), sp, self.params)
            s = small.shape[1] / rect_bgr.shape[1]
            radius = trace.path_ink_radius(sp)
            for tr in rows.values():
                tr.ink = trace.ink_near_path(prob, (tr.x + 0.5) * s - 0.5, (tr.y + 0.5) * s - 0.5, radius)
        return rows, out

    def _run(self, rect_bgr: np.ndarray, fs: float, n_samples: dict[str, int] | None,
             pen_offset_px: float) -> LeadSignals:
        if rect_bgr is None or rect_bgr.ndim not in (2, 3) or min(rect_bgr.shape[:2]) < 64:
            raise StageError("stage 2 needs a rectified page image (at least 64 px); run stages 0 and 1 first")
        if not (fs > 0 and np.isfinite(fs)):
            raise EcgTraceError(f"sampling rate must be a positive number of Hz, got {fs}")
        try:
            page = paper.page_for(rect_bgr)
        except ValueError as e:
            raise StageError(f"{e}; run stage 1 to rectify the page first") from e
        full_prob = raw = None  # the page's own ink map at its resolution (and before in-painting), where a reader made it
        if self.model is None:
            read = tc.trace_rows(rect_bgr, self.params)
            rows, full_prob, raw = read.rows, read.prob, read.raw
        elif not self.fuse:
            rows, _ = self._network_rows(rect_bgr)
        else:  # the classical reader reads the page too; per lead window the page's ink decides
            with step("fusion"):
                classical = tc.trace_rows(rect_bgr, self.params)
                full_prob, raw = classical.prob, classical.raw
                clean = fusion.is_clean(classical.prob, classical.rows, page, self.fusion_params)
            if clean:  # the classical reader's alone: the network's reading would go unused, so it is not made
                rows = classical.rows
            else:
                rows, out = self._network_rows(rect_bgr)
                with step("fusion"):
                    rows = fusion.fuse_rows(rows, classical.rows, classical.prob, page, self.fusion_params,
                                            belief=lambda r, tr: network.path_belief(out, r, tr)).rows
        if full_prob is not None:
            rows = row_start.read_past_pulse_edge(rows, full_prob, page)
        if raw is not None:
            rows = switch_marks.read_beside_switch_marks(rows, raw, page)
        with step("leads"):
            values = {k: trace.row_values(tr, page, pen_offset_px) for k, tr in rows.items()}
            signals = trace.cut_leads(values, fs, n_samples)
            if self.einthoven:
                signals = einthoven_correct(signals)
        res = tc.ClassicalResult(rows=rows)
        with step("quality"):
            quality = trace.quality_flags(res, page, self.params)
        traces_px = {k: np.stack([tr.x.astype(np.float64), tr.y], axis=1) for k, tr in rows.items()}
        return LeadSignals(signals=signals, fs=float(fs), traces_px=traces_px, quality=quality, method=self.method)
