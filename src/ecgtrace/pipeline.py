"""Picture -> 12 lead signals: stage 0 (normalize) -> stage 1 (rectify) -> stage 2 (extract).

``Pipeline(checkpoints_dir)`` takes, per stage, the ``stage{K}_*.pth`` it finds there, else
the weights that ship with the package, else the stage's classical path
(:func:`ecgtrace.models.shipped.resolve_weights`); ``classical=True`` forces the classical
paths. The report and the overlay title say which weights read each stage.
``Pipeline(...)(image, fs)`` returns a :class:`Result`: the signals as a competition-style
table, what each stage found, and writers for CSV / WFDB / overlay / plot.
``ecgtrace.digitize`` is the one-line form.

The three stages share one constructor shape, ``StageK(checkpoint=None, device="cpu",
**options)``, and one call shape, picture in, typed page out; the pipeline is the
straight line ``stage0 -> stage1 -> stage2``, each step timed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from ecgtrace import io, orient, paper
from ecgtrace.allocator import keep_freed_memory
from ecgtrace.errors import EcgTraceError
from ecgtrace.geometry import rectified_px_size, rectified_to_original
from ecgtrace.models.shipped import WeightsSource, resolve_weights
from ecgtrace.paper import CANONICAL, ROW_KEYS
from ecgtrace.stages.base import LeadSignals, NormalizedPage, RectifiedPage, StageError
from ecgtrace.stages.stage0 import Stage0
from ecgtrace.stages.pulses import pulses_offset_mm, register_by_pulses
from ecgtrace.stages.stage1 import Stage1
from ecgtrace.stages.stage2 import Stage2
from ecgtrace.stages.trace.leads import lead_indices

#: Fewer leads than this with a readable trace means "this is not an ECG page we can read".
MIN_LEADS_FOUND = 4
#: A page passed through unrectified is read where its calibration pulses put it when they say it sits
#: further than this (mm, median over the page) from the canonical geometry. ECG-Image-Kit's wrinkled
#: pages, drawn on that geometry, sit 0.3-1.5 mm off by their pulses; photos of ours with no visible
#: grid, 30-200 mm.
PULSES_MOVE_MM = 3.0


@dataclass
class Timer:
    """Wall time per named step: ``with timer("stage1"): ...``; :attr:`seconds` keeps them in order."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t


# --------------------------------------------------------------------------- result
def signals_frame(leads: dict[str, np.ndarray], fs: float) -> pd.DataFrame:
    """Lead windows -> a 10 s table at ``fs`` (12 columns in paper.LEADS order, NaN outside each window,
    competition style), indexed by time in seconds."""
    n = int(round(paper.DURATION_S * fs))
    cols = {}
    for lead in paper.LEADS:
        col = np.full(n, np.nan)
        if lead in leads:
            i0, i1 = lead_indices(lead, fs, n)
            v = np.asarray(leads[lead], dtype=np.float64)[: max(0, n - i0)]
            col[i0:i0 + len(v)] = v
        cols[lead] = col
    df = pd.DataFrame(cols, columns=list(paper.LEADS))
    df.index = pd.Index(np.arange(n) / float(fs), name="time_s")
    return df


@dataclass
class Result:
    """What :func:`ecgtrace.digitize` returns.

    Attributes:
        signals: 12 lead columns (paper.LEADS order) in mV, 10 s at ``fs``, NaN outside each
            lead's window (lead II is the full rhythm strip); index = time in s.
        fs: sampling rate in Hz.
        report: what each stage found (orientation, confidences, grid error, per-lead quality,
            method and time per stage); JSON-serialisable.
        leads: the raw stage-2 output (each lead's own window, rectified-page traces).
    """

    signals: pd.DataFrame
    fs: float
    report: dict[str, Any]
    leads: LeadSignals
    image: np.ndarray | None = field(default=None, repr=False)
    normalized: NormalizedPage | None = field(default=None, repr=False)
    rectified: RectifiedPage | None = field(default=None, repr=False)
    name: str = "ecg"
    work_scale: float = 1.0  # original px -> working px (huge pictures are scaled down first)

    def to_csv(self, path: str | Path) -> Path:
        """Write ``time_s`` + the 12 leads (mV) to a CSV file."""
        return io.write_signals_csv(self.signals, path)

    def to_wfdb(self, directory: str | Path, name: str | None = None) -> Path:
        """Write a WFDB record ``directory/name.hea/.dat`` (missing samples outside the windows read as NaN)."""
        return io.write_wfdb(self.signals, self.fs, directory, name or self.name,
                             comments=[f"digitized by ecgtrace from {self.name}"])

    def to_json(self, path: str | Path) -> Path:
        """Write :attr:`report` as JSON."""
        return io.write_json(self.report, path)

    def plot(self, path: str | Path | None = None):
        """A matplotlib figure of the 12 leads; saved to ``path`` when given."""
        return io.plot_signals(self.signals, self.fs, path, title=f"{self.name} ({self.fs:g} Hz)")

    def traces_original(self) -> dict[str, np.ndarray]:
        """The stage-2 traces mapped back to original-photo px: rectified -> stage-1 map -> inverse stage-0
        homography (-> undo the working downscale)."""
        keys = list(self.leads.traces_px)
        if not keys:
            return {}
        parts = [np.asarray(self.leads.traces_px[k], np.float64).reshape(-1, 2) for k in keys]
        mapped = self._to_original(np.concatenate(parts))  # all rows in one mapping
        return dict(zip(keys, np.split(mapped, np.cumsum([len(p) for p in parts])[:-1]), strict=True))

    def _to_original(self, pts: np.ndarray) -> np.ndarray:
        """Rectified-page px (N, 2) -> original-photo px."""
        map_xy = self.rectified.map_xy if self.rectified is not None else None
        hmat = self.normalized.homography if self.normalized is not None else None
        return rectified_to_original(pts, map_xy, hmat) / self.work_scale

    def overlay(self, path: str | Path | None = None) -> np.ndarray:
        """The extracted traces drawn on the original picture (BGR); written to ``path`` when given."""
        if self.image is None:
            raise EcgTraceError("this result keeps no picture to draw on; digitize the image again")
        traces = self.traces_original()
        scale = self.rectified.image.shape[1] / CANONICAL.width_px if self.rectified is not None else 1.0
        texts, anchors = [], []
        for lead in paper.MARKERS:
            row, col = paper.lead_row_col(lead)
            key = ROW_KEYS[row]
            if key not in traces:
                continue
            x = CANONICAL.column_x(col) + 0.25 * CANONICAL.px_per_s
            y = CANONICAL.baseline_y(row) - 1.4 * CANONICAL.px_per_mv
            text = "II (rhythm)" if lead == paper.RHYTHM_KEY else lead
            flag = self.leads.quality.get(paper.RHYTHM_LEAD if lead == paper.RHYTHM_KEY else lead, "ok")
            texts.append((text + ("" if flag == "ok" else " ?"), key))
            anchors.append((x * scale, y * scale))
        xys = self._to_original(np.array(anchors, np.float64).reshape(-1, 2))  # every label in one mapping
        labels = {text: (xy, key) for (text, key), xy in zip(texts, xys, strict=True)}
        img = io.draw_overlay(self.image, traces, labels, title=weights_title(self.report.get("weights")))
        if path is not None:
            io.write_image(img, path)
        return img


def weights_title(weights: dict[str, dict[str, Any]] | None) -> str | None:
    """Overlay title naming the weights of each stage: ``s0 classical | s1 classical | s2 shipped NAME (ab12cd34)``."""
    if not weights:
        return None
    parts = []
    for key, w in weights.items():
        kind = w.get("kind", "?")
        label = kind if kind == "classical" else f"{kind} {w.get('name')} ({w.get('sha256')})"
        parts.append(f"s{key.removeprefix('stage')} {label}")
    return " | ".join(parts)


# --------------------------------------------------------------------------- pipeline
class Pipeline:
    """Stage 0 -> 1 -> 2; per stage a checkpoint from ``checkpoints_dir``, else the shipped weights, else the
    classical path. ``classical=True`` runs every stage's classical path. ``backend="onnx"`` runs the
    networks with onnxruntime (:mod:`ecgtrace.models.onnx_backend`), ``"torch"`` with torch. ``precision``
    (:data:`ecgtrace.models.stage2.PRECISIONS`; default ``$ECGTRACE_PRECISION``, else auto: the shipped int8
    stage-2 network on a CPU with VNNI) is what the stage-2 network computes in.

    ``weights`` maps ``"stage0"``.. to the :class:`~ecgtrace.models.shipped.WeightsSource` each stage uses.
    """

    def __init__(self, checkpoints_dir: str | Path | None = None, device: str = "cpu", einthoven: bool = False,
                 classical: bool = False, backend: str = "torch", precision: str | None = None) -> None:
        if checkpoints_dir is not None and not Path(checkpoints_dir).exists():
            raise EcgTraceError(f"checkpoint folder {checkpoints_dir} not found; train with `ecgtrace train` "
                                "or leave --checkpoints out to use the shipped weights")
        keep_freed_memory()  # page-sized temporaries reused, not faulted in anew (ecgtrace.allocator)
        self.device = device
        src = [resolve_weights(k, checkpoints_dir, classical=classical) for k in range(3)]
        self.backend = backend
        self.stage0 = Stage0(checkpoint=src[0], device=device, backend=backend)
        self.stage1 = Stage1(checkpoint=src[1], device=device, backend=backend)
        self.stage2 = Stage2(checkpoint=src[2], device=device, einthoven=einthoven, backend=backend,
                             precision=precision)

    def _read(self, rect: RectifiedPage, homography: np.ndarray, work_scale: float, fs: float,
              n_samples: dict[str, int] | None) -> LeadSignals:
        """Stage 2 on ``rect``, the pen offset (half a pixel of the picture as drawn) in its rectified px."""
        rh, rw = rect.image.shape[:2]
        src_px = rectified_px_size(rect.map_xy, homography, (rw / 2, rh / 2)) / work_scale
        pen = paper.PEN_OFFSET_PX / src_px if np.isfinite(src_px) and src_px > 1e-3 else paper.PEN_OFFSET_PX
        return self.stage2(rect.image, fs, n_samples=n_samples, pen_offset_px=pen)

    @property
    def weights(self) -> dict[str, WeightsSource]:
        """Where each stage's weights came from (after any fallback to the classical path)."""
        return {"stage0": self.stage0.weights, "stage1": self.stage1.weights, "stage2": self.stage2.weights}

    def __call__(self, image: str | Path | np.ndarray, fs: float = 500.0, name: str | None = None,
                 n_samples: dict[str, int] | None = None) -> Result:
        """Digitize one picture (a path or a BGR array) at ``fs`` Hz."""
        if not (isinstance(fs, (int, float)) and np.isfinite(fs) and 1.0 <= fs <= 100000):
            raise EcgTraceError(f"sampling rate must be a number of Hz (e.g. 500), got {fs!r}")
        timer = Timer()
        with timer("load"):
            if isinstance(image, (str, Path)):
                name = name or Path(image).stem
                original = io.read_image(image)
            else:
                original = io.check_image(image, name or "image")
            name = name or "ecg"
            h, w = original.shape[:2]
            work_scale = min(1.0, io.WORK_MAX_SIDE / max(h, w))
            work = original if work_scale == 1.0 else cv2.resize(
                original, (int(round(w * work_scale)), int(round(h * work_scale))), interpolation=cv2.INTER_AREA)
        with timer("stage0"):
            norm = self.stage0(work)
        warnings = []
        if not norm.ok:  # a weak stage 0 is not fatal: stage 2 decides whether traces exist
            warnings.append(f"stage 0 unsure: {norm.message or 'no lead labels found'}")
        with timer("stage1"):
            rect = self.stage1(norm.image)
            by_pulses: RectifiedPage | None = None
            if rect.method == "identity":
                # passed through unrectified: where the rows' calibration pulses say the page sits far from
                # the canonical geometry (a photo whose grid faded out), they place it better than nothing does
                off = pulses_offset_mm(rect.image, self.stage1.page)
                if off is not None and off > PULSES_MOVE_MM:
                    by_pulses, _ = register_by_pulses(work, self.stage1.page, to_input=norm.homography)
        if not rect.ok:
            warnings.append(f"stage 1 unsure: {rect.message or 'no grid found'}")
        passed: RectifiedPage | None = None  # the page as passed through, when the pulses' page replaced it
        if by_pulses is not None:
            by_pulses.unsure_rectify = rect.unsure_rectify
            passed, rect = rect, by_pulses
        with timer("stage2"):
            leads = self._read(rect, norm.homography, work_scale, fs, n_samples)
            found = _found(leads)
            if passed is not None and found < MIN_LEADS_FOUND:
                again = self._read(passed, norm.homography, work_scale, fs, n_samples)
                if _found(again) > found:  # the pulses' page read worse than none
                    rect, leads, found = passed, again, _found(again)
            if rect is by_pulses:
                warnings.append(rect.message)
            if found < MIN_LEADS_FOUND and rect.unsure_rectify is not None:
                # (almost) nothing on the page as stage 0 left it: read it on the lattice stage 1 doubted
                again = self._read(rect.unsure_lattice, norm.homography, work_scale, fs, n_samples)
                if _found(again) > found:
                    rect, leads, found = rect.unsure_lattice, again, _found(again)
                    warnings.append("read on the unsure lattice: the page as it was gave too few traces")
            if found < MIN_LEADS_FOUND and not rect.ok and rect.method != "pulses":
                # no lattice to go by: the rows' calibration pulses may still fix the page (a tight crop)
                by_pulses, _ = register_by_pulses(work, self.stage1.page, to_input=norm.homography)
                if by_pulses is not None:
                    again = self._read(by_pulses, norm.homography, work_scale, fs, n_samples)
                    if _found(again) >= MIN_LEADS_FOUND:  # pulses and traces: an ECG page after all
                        rect, leads, found = by_pulses, again, _found(again)
                        warnings.append(by_pulses.message)
        if found < MIN_LEADS_FOUND:
            if not rect.ok and rect.unsure_rectify is None:
                # no grid and (almost) no trace: nothing here says ECG page; refuse with the reasons
                raise StageError(f"found a trace for only {found} of 12 leads and no ECG grid; this does not "
                                 "look like a readable 12-lead ECG page" + (f" ({'; '.join(warnings)})" if warnings else ""))
            # a grid was found, so it is an ECG page: give the best estimate and say what went wrong
            warnings.append(f"a trace was found for only {found} of 12 leads; the signals are a best estimate, "
                            "check the overlay")
        df = signals_frame(leads.signals, fs)
        report = {
            "name": name,
            "image_size": [int(w), int(h)],
            "fs": float(fs),
            "orientation": int(norm.orientation),
            "orientation_name": orient.describe(int(norm.orientation)),
            "orientation_confidence": float(norm.orientation_confidence),
            "markers_found": sorted(norm.markers),
            "grid_error_px": _finite(rect.grid_error_px),
            "grid_confidence": _finite(rect.confidence),
            "lead_quality": dict(leads.quality),
            "method": {"stage0": norm.method, "stage1": rect.method, "stage2": leads.method},
            "weights": {k: w.to_dict() for k, w in self.weights.items()},
            # what the stage-2 network computed in (bf16 on CPUs with native bfloat16; see models.stage2)
            "stage2_precision": getattr(self.stage2.model, "precision", None),
            "messages": [m for m in (norm.message, rect.message) if m],
            "warnings": warnings,
            "timing_s": {k: round(v, 4) for k, v in timer.seconds.items()},
            "work_scale": work_scale,
        }
        return Result(signals=df, fs=float(fs), report=report, leads=leads, image=original, normalized=norm,
                      rectified=rect, name=name, work_scale=work_scale)


def _found(leads: LeadSignals) -> int:
    """How many leads have a trace at all."""
    return sum(1 for q in leads.quality.values() if not q.startswith("no trace"))


def _finite(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) else None


_DEFAULT: dict[tuple, Pipeline] = {}


def digitize(image: str | Path | np.ndarray, fs: float = 500.0, checkpoints: str | Path | None = None,
             device: str = "cpu", classical: bool = False, backend: str = "torch") -> Result:
    """Digitize one ECG picture: ``ecgtrace.digitize("photo.jpg").signals`` is a DataFrame of the 12 leads.

    ``checkpoints``: a folder with ``stage{0,1,2}_*.pth`` that overrides the shipped weights per stage;
    ``classical=True`` runs the classical paths only; ``backend="onnx"`` runs the networks with onnxruntime.
    The pipeline is built once per (checkpoints, device, classical, backend) and reused.
    """
    key = (str(checkpoints) if checkpoints else None, device, bool(classical), backend)
    if key not in _DEFAULT:
        _DEFAULT[key] = Pipeline(checkpoints, device=device, classical=classical, backend=backend)
    return _DEFAULT[key](image, fs=fs)
