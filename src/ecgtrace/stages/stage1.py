"""Stage 1 inference: find the 5 mm grid on stage 0's page and resample it onto the perfect lattice.

``Stage1(checkpoint=None)(page_bgr) -> RectifiedPage``. With a checkpoint the network
finds the grid nodes and their (row, column) indices; without one (or with
``method="classical"``) the grid's own periodicity does (:mod:`ecgtrace.stages.grid_classical`).
Either way :mod:`ecgtrace.stages.lattice` fits the lattice, fills gaps and builds the dense
map, so ``RectifiedPage.map_xy`` sends every rectified pixel back to the input.

Pages where no grid can be found (blank paper, a photo that is not an ECG, pages printed
without a grid, black-and-white scans that thresholded the grid away) are **passed through
unrectified**: the identity map, ``ok=False``, ``confidence=0`` and a message saying so. Stage 0
already put such a page on the canonical geometry by its lead labels, so downstream stages
may still read it, at their own risk; nothing is ever warped by a lattice that was not found.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from loguru import logger

from ecgtrace.errors import EcgTraceError
from ecgtrace.geometry import apply_homography, identity_map, remap
from ecgtrace.io import as_bgr
from ecgtrace.models.checkpoint import LoadedModel
from ecgtrace.models.device import resolve_device
from ecgtrace.models.shipped import WeightsSource, as_source, open_weights
from ecgtrace.models.stage1 import load_stage1, predict_grid
from ecgtrace.paper import CANONICAL, Page
from ecgtrace.stages import grid_classical as G
from ecgtrace.stages import lattice as L
from ecgtrace.stages.base import RectifiedPage
from ecgtrace.stages.register import content_offset, registered_nodes
from ecgtrace.stages.steps import step

#: A fitted lattice may move nodes at most this many 5 mm boxes from their canonical place
#: (stage 0 already normalized the page; more means the fit latched onto something else).
MAX_SHIFT_BOXES = 3.0
#: The classical grid search runs at most at this resolution (the 200 dpi page scaled by 0.75): stage 1 0.80 ->
#: 0.53 s a page, and ECG-Image-Kit's pages read better (transfer bench 23.72 -> 23.81 dB; at 100 dpi 23.64).
DETECT_DPI = 150.0
#: Below this confidence of its fit (observed share x grid error) a lattice is not used: the page passes
#: through unrectified. The value is the one the stage already called "low confidence".
MIN_CONFIDENCE = 0.3


def lattice_is_plausible(nodes: np.ndarray, page: Page) -> tuple[bool, str]:
    """Reject fits that fold over or move the page far from where stage 0 put it."""
    pitch = L.pitch_px(page)
    shift = np.linalg.norm(nodes - L.canonical_nodes(page), axis=-1)
    if not np.isfinite(nodes).all():
        return False, "lattice fit produced non-finite nodes"
    if np.median(shift) > MAX_SHIFT_BOXES * pitch:
        return False, f"lattice lies {np.median(shift) / pitch:.1f} boxes from the normalized page (stage 0 failed?)"
    ex = np.diff(nodes, axis=1)[:-1]
    ey = np.diff(nodes, axis=0)[:, :-1]
    jac = (ex[..., 0] * ey[..., 1] - ex[..., 1] * ey[..., 0]) / pitch**2
    if jac.min() < 0.3 or jac.max() > 3.0:
        return False, f"lattice folds or stretches (cell area ratio {jac.min():.2f}..{jac.max():.2f})"
    return True, ""


class Stage1:
    """Grid detection and page rectification.

    Args:
        checkpoint: a ``stage1_*.pth`` file (or an exported ``.safetensors``), a
            :class:`~ecgtrace.models.shipped.WeightsSource` (the shipped weights); ``None`` uses the classical path.
        device: torch device for the network.
        page: output geometry (canonical 2200 x 1700 by default).
        method: ``"auto"`` (network if a checkpoint is given, else classical), ``"model"`` or ``"classical"``.
        refine: with the network, re-measure every node on the full-resolution image around the
            network's lattice (classical sub-pixel measurement, network's indices).
        backend: ``"torch"`` or ``"onnx"`` (onnxruntime; an ``.onnx`` checkpoint always).
        detect_dpi: the classical grid search runs on the page scaled to this resolution, when ``page`` has more
            (:data:`DETECT_DPI`); the nodes it finds are given in ``page``'s pixels.
        min_confidence: a fitted lattice less sure than this (share of the lattice observed x grid error,
            as in :attr:`RectifiedPage.confidence`) is not used: the page passes through as stage 0 left it.
    """

    def __init__(self, checkpoint: str | Path | WeightsSource | None = None, device: str = "cpu",
                 page: Page = CANONICAL, method: str = "auto", refine: bool = True, backend: str = "torch",
                 min_confidence: float = MIN_CONFIDENCE, detect_dpi: float = DETECT_DPI) -> None:
        self.min_confidence = float(min_confidence)
        if not detect_dpi >= 25:
            raise EcgTraceError(f"stage-1 detect_dpi must be at least 25 (a 5 mm box of 5 px), got {detect_dpi}")
        self.detect_scale = min(1.0, float(detect_dpi) / page.dpi)
        if method not in ("auto", "model", "classical"):
            raise EcgTraceError(f"unknown stage-1 method {method!r}; use auto, model or classical")
        self.page = page
        self.device = str(resolve_device(device, "stage 1"))
        self.refine = refine
        self.net: LoadedModel | None = None
        self.weights = as_source(None if method == "classical" else checkpoint, 1, backend)
        self.net, self.weights = open_weights(self.weights,
                                              lambda p: load_stage1(p, self.device, self.weights.backend))
        if self.net is None and method == "model":
            raise EcgTraceError("stage 1 method 'model' needs a checkpoint; pass --checkpoint stage1_best.pth")
        self.method = "model" if self.net is not None else "classical"

    # -- detection ------------------------------------------------------------------
    def detect(self, image_bgr: np.ndarray) -> G.GridDetection:
        """Grid nodes with indices on a page of ``self.page.size``."""
        if self.net is None:
            if self.detect_scale == 1.0:
                return G.detect_grid(image_bgr, self.page)
            h, w = image_bgr.shape[:2]
            ws, hs = int(round(w * self.detect_scale)), int(round(h * self.detect_scale))
            small = cv2.resize(image_bgr, (ws, hs), interpolation=cv2.INTER_AREA)
            det = G.detect_grid(small, self.page.scaled_to(ws))
            det.points = (det.points + 0.5) * np.array([w / ws, h / hs]) - 0.5  # back to this page's pixels
            return det
        pts, idx, score = predict_grid(self.net, image_bgr, self.device)
        det = G.GridDetection(points=pts, index=idx, strength=score, feature="model", periodicity=float("nan"))
        if len(pts) < 12:
            det.ok = False
            det.message = f"the network found only {len(pts)} grid nodes; page passed through unrectified"
        det = G.renumber_by_growth(det, self.page)
        if det.ok and self.refine:
            det = G.refine_detection(image_bgr, det, self.page)
        return det

    # -- the stage --------------------------------------------------------------------
    def __call__(self, page_bgr: np.ndarray) -> RectifiedPage:
        """Rectify ``page_bgr`` (stage 0's page; other sizes are scaled to the page first)."""
        with step("stage1"):
            return self._run(page_bgr)

    def _run(self, page_bgr: np.ndarray) -> RectifiedPage:
        img = as_bgr(page_bgr, "stage 1")
        H, W = self.page.size
        h_in, w_in = img.shape[:2]
        work = img if (h_in, w_in) == (H, W) else cv2.resize(img, (W, H), interpolation=cv2.INTER_AREA)
        with step("detect"):
            det = self.detect(work)
        with step("perspective pass"):
            pre = self._perspective_pass(work, det)
        if pre is not None:  # the nodes of the second pass are in the pre-warped page: bring them back
            det, back = pre
        if not det.ok:
            return self._passthrough(img, det.message, det)
        try:
            with step("lattice fit"):
                fit = L.fit_lattice(det.points, det.index, self.page)
        except ValueError as e:
            return self._passthrough(img, f"lattice fit failed ({e}); page passed through unrectified", det)
        nodes = fit.nodes if pre is None else apply_homography(back, fit.nodes)
        ok, why = lattice_is_plausible(nodes, self.page)
        if not ok:
            return self._passthrough(img, f"{why}; page passed through unrectified", det)
        det.fit = fit
        pitch = L.pitch_px(self.page)
        err = fit.heldout_px if np.isfinite(fit.heldout_px) else fit.residual_px
        fit_conf = float(np.clip(fit.coverage / 0.5, 0, 1) * np.clip(1.0 - err / (0.1 * pitch), 0, 1))
        stats = (f"{self.method}: {fit.n_inliers}/{fit.n_points} nodes kept, {100 * fit.coverage:.0f} % of the "
                 f"lattice observed, grid error {err:.2f} px")
        if fit_conf < self.min_confidence:
            # measured on ECG-Image-Kit's pages: a lattice fitted to a few % of the grid, or with errors of a
            # quarter box, warps the page worse than leaving it as stage 0 left it. (Numbering alone in doubt
            # is not such a case: on our photos that lattice is still better than none.) The page on that
            # lattice is made only if a reader asks for it (rarely: dense map, remap and ink map, 0.3 s).
            passed = self._passthrough(img, f"{stats}; lattice unsure ({fit_conf:.2f} < {self.min_confidence}), "
                                            "page passed through unrectified (check lattice_overlay.png)", det)
            passed.unsure_rectify = lambda: self._rectified(img, work, nodes, det, stats, err, fit_conf)
            return passed
        out = self._rectified(img, work, nodes, det, stats, err, fit_conf)
        logger.debug(out.message)
        return out

    def _rectified(self, img: np.ndarray, work: np.ndarray, nodes: np.ndarray, det: G.GridDetection,
                   stats: str, err: float, fit_conf: float) -> RectifiedPage:
        """The page rectified by the lattice ``nodes``, registered by its calibration pulses."""
        map_xy, rect = self._rectify(img, work, nodes)
        # the grid numbers boxes only up to a whole-box shift; the traces say which shift is right
        with step("register"):
            reg = content_offset(rect)
        if reg.confident and reg.shift != (0, 0):
            nodes = registered_nodes(nodes, reg.shift)
            map_xy, rect = self._rectify(img, work, nodes)
        pitch = L.pitch_px(self.page)
        conf = fit_conf
        msg = stats
        if reg.shift != (0, 0):
            msg += (f"; traces {'found' if reg.confident else 'not sure of'} a {reg.shift[0]:+d} / {reg.shift[1]:+d} "
                    f"box offset{' (applied)' if reg.confident else ''}")
        drift = float(np.median(np.linalg.norm(nodes - L.canonical_nodes(self.page), axis=-1)))
        if drift > 0.5 * pitch and not reg.confident:
            # The grid itself cannot tell which box is which: far from the canonical geometry the indices
            # are only the nearest guess (stage 0 did not normalize the page?).
            conf = min(conf, 0.25)
            msg += (f"; the page sits {drift / pitch:.1f} boxes from the canonical geometry, so the 5 mm "
                    "boxes may be numbered off by one or more (was stage 0 able to normalize it?)")
        if conf < MIN_CONFIDENCE:
            msg += "; low confidence, check lattice_overlay.png"
        return RectifiedPage(image=rect, map_xy=map_xy, grid_error_px=float(err), confidence=conf,
                             method=self.method, ok=True, message=msg, detection=det)

    def _perspective_pass(self, work: np.ndarray, det: G.GridDetection
                          ) -> tuple[G.GridDetection, np.ndarray] | None:
        """Second look at a page far from the canonical geometry (stage 0 could not correct the
        perspective): the homography of the largest consistently numbered part of the lattice
        pre-warps the page, the grid is found again there. Returns (detection on the pre-warped
        page, its px -> ``work`` px homography), or None when no second pass is needed or it fails."""
        if not det.ok or len(det.points) < 12:
            return None
        pitch = L.pitch_px(self.page)
        canon = L.canonical_points(det.index, self.page)
        if np.median(np.linalg.norm(det.points - canon, axis=1)) <= 0.5 * pitch:
            return None
        hom, inl = cv2.findHomography(det.points.astype(np.float32), canon.astype(np.float32), cv2.RANSAC,
                                      0.3 * pitch)
        if hom is None or inl is None or int(inl.sum()) < 12:
            return None
        H, W = self.page.size
        warped = cv2.warpPerspective(work, hom, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        det2 = self.detect(warped)
        if not det2.ok:
            return None
        return det2, np.linalg.inv(hom)

    def _rectify(self, img: np.ndarray, work: np.ndarray, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Dense map (canonical px -> ``img`` px) from lattice nodes found on ``work``, and the remapped page."""
        H, W = self.page.size
        with step("dense map"):
            map_xy = L.dense_map(nodes, self.page)
        h_in, w_in = img.shape[:2]
        if (h_in, w_in) != (H, W):
            map_xy = (map_xy * np.array([w_in / W, h_in / H], dtype=np.float32)).astype(np.float32)
        with step("remap"):
            return map_xy, remap(img, map_xy, border_value=255)

    def _passthrough(self, img: np.ndarray, message: str, det: G.GridDetection | None) -> RectifiedPage:
        """Identity result (flagged): never warp a page by a lattice that was not found."""
        H, W = self.page.size
        h_in, w_in = img.shape[:2]
        map_xy = identity_map(H, W)
        if (h_in, w_in) != (H, W):
            map_xy = (map_xy * np.array([w_in / W, h_in / H], dtype=np.float32)).astype(np.float32)
            rect = remap(img, map_xy, border_value=255)
        else:
            rect = img.copy()
        logger.warning(f"stage 1: {message}")
        return RectifiedPage(image=rect, map_xy=map_xy, grid_error_px=float("nan"), confidence=0.0,
                             method="identity", ok=False, message=message, detection=det)


def lattice_overlay(image_bgr: np.ndarray, rect: RectifiedPage, page: Page = CANONICAL) -> np.ndarray:
    """The input page with the fitted lattice (green lines), kept detections (blue) and rejected ones (red)."""
    vis = as_bgr(image_bgr, "stage 1").copy()
    h_in, w_in = vis.shape[:2]
    H, W = page.size
    s = np.array([w_in / W, h_in / H])
    det = rect.detection
    fit = det.fit if det is not None else None
    if fit is not None:
        nodes = fit.nodes * s
        for row in nodes:
            cv2.polylines(vis, [np.round(row * 4).astype(np.int32)], False, (0, 170, 0), 1, cv2.LINE_AA, 2)
        for col in nodes.transpose(1, 0, 2):
            cv2.polylines(vis, [np.round(col * 4).astype(np.int32)], False, (0, 170, 0), 1, cv2.LINE_AA, 2)
    if det is not None and len(det.points):
        keep = fit.inliers if fit is not None else np.ones(len(det.points), dtype=bool)
        for p, k in zip(det.points * s, keep):
            cv2.circle(vis, (int(round(p[0])), int(round(p[1]))), 3, (255, 80, 0) if k else (0, 0, 255), 1)
    text = f"{rect.method}  err {rect.grid_error_px:.2f}px  conf {rect.confidence:.2f}" if rect.ok else rect.message
    cv2.putText(vis, text[:110], (10, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(vis, text[:110], (10, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (0, 255, 255), 1, cv2.LINE_AA)
    return vis
