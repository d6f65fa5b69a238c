"""Stage 0 inference: any ECG picture -> the upright page on the canonical 2200 x 1700 canvas.

With a checkpoint: the network predicts the orientation class (8 = 4 rotations x
flip) and a 14-class lead-label map; the centroids of the labels not in the
first column (:data:`ecgtrace.paper.HOMOGRAPHY_MARKERS`) are matched to their
canonical positions with a RANSAC homography, which already contains the
orientation undo (label identities fix the direction), and the picture is warped
to the canonical page. With fewer than 4 labels found it falls back to the
orientation alone (``ok=False`` and a message say so).

Without a checkpoint (``method="classical"``): the 4 rotations are told apart
from the direction of the long trace rows (ink profiles) and from which edge
the rhythm strip is near (the traces fill the lower 60 % of an upright page);
a mirrored page cannot be told apart this way. When the whole sheet is in view
(:mod:`ecgtrace.stages.paper_outline`), its four corners give the perspective;
otherwise the page is only resized to the canonical size.

``NormalizedPage.homography`` always maps original-image px to canonical px.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from ecgtrace import io, orient
from ecgtrace.geometry import apply_homography, resize_matrix
from ecgtrace.models.checkpoint import LoadedModel, is_inference_file, load_checkpoint, load_model
from ecgtrace.models.device import resolve_device
from ecgtrace.models.preprocess import resize_to_input, to_chw
from ecgtrace.models.shipped import WeightsSource, as_source, open_weights
from ecgtrace.models.stage0 import MARKER_HEAD, ORIENT_HEAD
from ecgtrace.paper import CANONICAL, HOMOGRAPHY_MARKERS, MARKERS, ROW_BASELINES_MV
from ecgtrace.stages.base import NormalizedPage, StageError
from ecgtrace.stages.paper_outline import MAX_FIT_FRACTION, find_paper_outline
from ecgtrace.stages.steps import step
from ecgtrace.stages.trace.ink import channel_max_min, median_blur, on_two_cores, whiten_paper

_PAGE_HW = CANONICAL.size  # (1700, 2200)
#: RANSAC inlier threshold on the canonical page (px): ~1/3 of a label height.
RANSAC_PX = 10.0
MIN_MARKERS = 4


# --- small geometry helpers -------------------------------------------------------------
def unorient_matrix(c: int, oriented_hw: tuple[int, int]) -> np.ndarray:
    """3x3 affine map: px of an image in orientation ``c`` -> px of the upright image."""
    upright_hw = orient.oriented_size(oriented_hw, c)  # the swap is its own inverse
    src = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    dst = orient.unorient_points(src, c, upright_hw)
    m = cv2.getAffineTransform(src.astype(np.float32), dst.astype(np.float32)).astype(np.float64)
    return np.vstack([m, [0.0, 0.0, 1.0]])


def _flip_class_map() -> np.ndarray:
    """``m[c]``: the orientation class of a left-right mirrored image of a page in class ``c``."""
    probe = np.arange(6, dtype=np.uint8).reshape(2, 3)
    views = [orient.orient_image(probe, c) for c in range(orient.N_ORIENTATIONS)]
    out = np.zeros(orient.N_ORIENTATIONS, dtype=np.int64)
    for c, v in enumerate(views):
        mirrored = np.ascontiguousarray(v[:, ::-1])
        out[c] = next(k for k, w in enumerate(views) if w.shape == mirrored.shape and np.array_equal(w, mirrored))
    return out


FLIP_CLASS = _flip_class_map()


def check_image(image_bgr: Any) -> np.ndarray:
    """A BGR uint8 (h, w, 3) copy of the input, or StageError saying what is wrong (too small, blank, no picture)."""
    return io.check_image(image_bgr, "stage 0", min_side=64, reject_blank=True)


# --- classical orientation -----------------------------------------------------------------
def _ink_mask(image_bgr: np.ndarray, max_side: int = 900) -> np.ndarray:
    """Dark, low-saturation strokes (traces, text) on a downscaled copy; grid colours mostly drop out.

    Darkness and saturation are judged against the local paper colour, channel by channel, so a
    black trace on orange or blue paper counts as ink and a red grid on it does not.
    """
    h, w = image_bgr.shape[:2]
    s = min(1.0, max_side / max(h, w))
    small = cv2.resize(image_bgr, (max(1, int(w * s)), max(1, int(h * s))), interpolation=cv2.INTER_AREA)
    bg = median_blur(small, 31 if min(small.shape[:2]) > 62 else 3).astype(np.float32)
    g = small.astype(np.float32) / np.maximum(bg, 1.0)  # paper -> (1, 1, 1)
    v, gmin = channel_max_min(g)
    sat = (v - gmin) / np.maximum(v, 1e-3)
    bgv = channel_max_min(bg)[0]
    dark = v < 1.0 - np.maximum(40.0 / np.maximum(bgv, 1.0), 0.25)  # much darker than its surroundings
    ink = dark & (sat < 110 / 255)  # red/pink/blue grids are saturated; traces are black/grey
    return ink.astype(np.uint8)


#: Ink centre (fraction of the page height from the top) below which a landscape page is upside down.
UPSIDE_DOWN_CENTRE = 0.41
#: A picture at least this much wider than tall shows a landscape sheet the right way round or upside down,
#: unless its column profile is clearly the banded one (by :data:`TURNED_RATIO`): a sheet turned by 90
#: degrees makes a portrait picture. On a faint, folded photo (own bench 0010) long straight folds made the
#: columns a little peakier than the trace rows (1.9 vs 1.7), and the page was read across its traces.
LANDSCAPE_ASPECT = 1.15
TURNED_RATIO = 1.5


def _peakiness(profile: np.ndarray, window: int) -> float:
    """How much a 1-D ink profile concentrates into bands (trace rows), scale-free."""
    if profile.sum() <= 0:
        return 0.0
    k = max(3, window | 1)
    sm = np.convolve(profile.astype(np.float64), np.ones(k) / k, mode="same")
    return float(sm.std() / (sm.mean() + 1e-9))


def classical_orientation(image_bgr: np.ndarray) -> tuple[int, float, dict[str, float]]:
    """Rotation class 0..3 of a page from ink profiles (no flips), a confidence in 0..1, and the cues.

    Upright pages have their trace rows horizontal (a banded row profile) and
    their traces in the lower ~60 % (header/empty band on top, rhythm strip
    near the bottom edge).
    """
    ink = _ink_mask(image_bgr)
    h, w = ink.shape
    rows, cols = ink.sum(1), ink.sum(0)
    frac = float(ink.mean())
    pr = _peakiness(rows, h // 60)
    pc = _peakiness(cols, w // 60)
    horizontal = pr >= pc or (w >= LANDSCAPE_ASPECT * h and pc < TURNED_RATIO * pr)
    prof = rows if horizontal else cols
    n = len(prof)
    pos = (np.arange(n) + 0.5) / n
    centre = float((prof * pos).sum() / max(prof.sum(), 1e-9))
    # upright: ink centre ~0.5-0.65 of the way down; rotated 180: ~0.35-0.5. The two overlap (real
    # pages fill more of the sheet than ours), and most pictures people digitize are upright, so
    # only a clearly high ink centre turns a page over: on the 52 real samples no upright page
    # has its centre below 0.42.
    if horizontal:
        c = 2 if centre < UPSIDE_DOWN_CENTRE else 0
    else:  # rows run vertically; the bottom of the page is on the left for rot90cw
        c = 1 if centre < 0.5 else 3
    ratio = (pr if horizontal else pc) / ((pc if horizontal else pr) + 1e-9)  # < 1: chosen by the shape alone
    margin = abs(centre - (UPSIDE_DOWN_CENTRE if horizontal else 0.5))
    conf = float(np.clip((ratio - 1.0), 0.0, 1.0) * np.clip(margin / 0.1, 0.0, 1.0))
    return c, conf, {"row_peakiness": pr, "col_peakiness": pc, "ink_centre": centre, "ink_fraction": frac}


# --- marker decoding ---------------------------------------------------------------------------
def decode_markers(prob: np.ndarray, min_pixels: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Per label class: centroid (prob-weighted) of its strongest connected component.

    Args:
        prob: (14, h, w) softmax probabilities.
    Returns:
        (13, 2) centres in prob-map px (NaN if not found) and (13,) confidences (mean prob in the component).
    """
    lab = prob.argmax(0)
    k_n = prob.shape[0] - 1
    cents = np.full((k_n, 2), np.nan)
    conf = np.zeros(k_n)
    for k in range(1, prob.shape[0]):
        m = (lab == k).astype(np.uint8)
        if m.sum() < min_pixels:
            continue
        n, cc = cv2.connectedComponents(m, connectivity=8)
        pk = prob[k]
        best, best_mass = -1, 0.0
        for j in range(1, n):
            sel = cc == j
            if sel.sum() < min_pixels:
                continue
            mass = float(pk[sel].sum())
            if mass > best_mass:
                best, best_mass = j, mass
        if best < 0:
            continue
        ys, xs = np.nonzero(cc == best)
        wts = pk[ys, xs]
        cents[k - 1] = [(xs * wts).sum() / wts.sum(), (ys * wts).sum() / wts.sum()]
        conf[k - 1] = float(wts.mean())
    return cents, conf


def orientation_of_homography(h: np.ndarray, image_hw: tuple[int, int]) -> int:
    """The orientation class whose undo is closest to the rotation/flip part of ``h`` (orig px -> canonical)."""
    cy, cx = image_hw[0] / 2.0, image_hw[1] / 2.0
    p = apply_homography(h, np.array([[cx, cy], [cx + 10.0, cy], [cx, cy + 10.0]]))
    ex, ey = p[1] - p[0], p[2] - p[0]  # where the image's +x and +y axes point on the upright page
    best, best_score = 0, -np.inf
    for c in range(orient.N_ORIENTATIONS):
        m = unorient_matrix(c, image_hw)[:2, :2]
        a, b = m[:, 0], m[:, 1]
        score = float(ex @ a / (np.linalg.norm(ex) + 1e-9) + ey @ b / (np.linalg.norm(ey) + 1e-9))
        if score > best_score:
            best, best_score = c, score
    return best


class Stage0:
    """Normalize an ECG picture: upright, on the canonical page.

    Args:
        checkpoint: a stage-0 ``.pth`` from ``ecgtrace train --stage 0`` (or an exported ``.safetensors``),
            a :class:`~ecgtrace.models.shipped.WeightsSource` (the shipped weights), or None = classical path.
        device: torch device for the network.
        flip_tta: also run the mirrored image and average (slower, a little more robust).
        backend: ``"torch"`` or ``"onnx"`` (onnxruntime; an ``.onnx`` checkpoint always).

    ``weights`` says where the weights came from (``kind`` "classical" when no network runs).
    """

    def __init__(self, checkpoint: str | Path | WeightsSource | None = None, device: str = "cpu",
                 flip_tta: bool = False, backend: str = "torch") -> None:
        self.device = str(resolve_device(device, "stage 0"))
        self.flip_tta = bool(flip_tta)
        self.net: LoadedModel | None
        source = as_source(checkpoint, 0, backend)
        self.net, self.weights = open_weights(
            source, lambda p: load_model(p, self.device, stage=0, heads=(MARKER_HEAD, ORIENT_HEAD),
                                         backend=source.backend))
        self.checkpoint = str(self.weights.path) if self.net is not None else None

    @property
    def model(self) -> torch.nn.Module | None:
        """The network (None on the classical path)."""
        return self.net.model if self.net is not None else None

    # -- network ------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, image_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Orientation probabilities (8,) and marker probabilities (14, h, w) at the network input size."""
        cfg = self.net.cfg
        x = resize_to_input(image_bgr, cfg.input_size)
        batch = [to_chw(x, cfg.mean, cfg.std)]
        if self.flip_tta:
            batch.append(to_chw(np.ascontiguousarray(x[:, ::-1]), cfg.mean, cfg.std))
        out = self.net.model(torch.from_numpy(np.stack(batch)).to(self.device))
        po = out[ORIENT_HEAD].float().softmax(1).cpu().numpy()
        pm = out[MARKER_HEAD].float().softmax(1).cpu().numpy()
        p_or, p_mk = po[0], pm[0]
        if self.flip_tta:
            p_or = 0.5 * (p_or + po[1][FLIP_CLASS])  # class c of the image is class FLIP_CLASS[c] mirrored
            p_mk = 0.5 * (p_mk + pm[1][:, :, ::-1])
        return p_or, p_mk

    def __call__(self, image_bgr: np.ndarray) -> NormalizedPage:
        """Normalize one picture (BGR uint8); see the module docstring."""
        img = check_image(image_bgr)
        with step("stage0"):
            return self._classical(img) if self.net is None else self._learned(img)

    def _learned(self, img: np.ndarray) -> NormalizedPage:
        hw = img.shape[:2]
        p_or, p_mk = self.predict(img)
        c = int(p_or.argmax())
        conf = float(p_or[c])
        cents, mconf = decode_markers(p_mk)
        # prob-map px -> original px
        to_orig = np.linalg.inv(resize_matrix(hw, p_mk.shape[1:]))
        found = np.isfinite(cents).all(1)
        pts = np.full_like(cents, np.nan)
        pts[found] = apply_homography(to_orig, cents[found])
        markers = {m: pts[i] for i, m in enumerate(MARKERS) if found[i]}
        use = [MARKERS.index(m) for m in HOMOGRAPHY_MARKERS if found[MARKERS.index(m)]]
        if len(use) < MIN_MARKERS:  # too few reliable labels: take the first-column ones too
            use = [i for i in range(len(MARKERS)) if found[i]]
        hom, message, ok = None, "", True
        if len(use) >= MIN_MARKERS:
            hom, inl = cv2.findHomography(pts[use], CANONICAL.label_centers[use], cv2.RANSAC, RANSAC_PX)
            n_in = int(inl.sum()) if inl is not None else 0
            if hom is None or n_in < MIN_MARKERS or not _sane(hom, hw):
                hom, message = None, f"homography from {len(use)} labels was degenerate"
            else:
                c_h = orientation_of_homography(hom, hw)
                if c_h != c:
                    message = (f"orientation head says {orient.describe(c)} but the labels say "
                               f"{orient.describe(c_h)}; using the labels")
                    c = c_h
        else:
            message = f"only {len(use)} lead labels found (need {MIN_MARKERS})"
        if len(markers) < 2 and conf < 0.5:
            # the network sees no page here: the classical path decides (it raises on pictures without traces)
            page = self._classical(img)
            page.ok = False
            page.message = (f"the network found {len(markers)} lead labels and is unsure of the orientation "
                            f"({conf:.2f}); used the classical path: " + page.message)
            return page
        if hom is None:
            ok = False
            # no label homography: the orientation alone decides the page. An unsure network is
            # overruled on the quarter turn by a confident classical reading (it cannot see flips).
            if conf < 0.9:
                c_cl, conf_cl, cues = classical_orientation(img)
                ratio = max(cues["row_peakiness"], cues["col_peakiness"]) / (
                    min(cues["row_peakiness"], cues["col_peakiness"]) + 1e-9)
                # the row direction (ratio) is a reliable cue even where up/down (conf_cl) is not
                axis_wrong = ratio >= 1.3 and (c_cl % 2) != (c % 2)
                if (conf_cl >= 0.3 and c_cl != c % 4) or axis_wrong:
                    message += (f"; network unsure ({orient.describe(c)}, {conf:.2f}), trace rows say "
                                f"{orient.describe(c_cl)}: used that")
                    c = c_cl
            hom = resize_matrix(orient.oriented_size(hw, c), _PAGE_HW) @ unorient_matrix(c, hw)
            message += "; fell back to undoing the orientation and resizing (no perspective correction)"
        warped = cv2.warpPerspective(img, hom, (_PAGE_HW[1], _PAGE_HW[0]), flags=cv2.INTER_LINEAR,
                                     borderMode=cv2.BORDER_CONSTANT, borderValue=(255, 255, 255))
        return NormalizedPage(image=warped, homography=hom, orientation=c, orientation_confidence=conf,
                              markers=markers, method="model", ok=ok, message=message.strip("; "))

    def _classical(self, img: np.ndarray) -> NormalizedPage:
        hw = img.shape[:2]
        with step("orientation"):
            c, conf, cues = classical_orientation(img)
        if cues["ink_fraction"] < 1e-4:
            raise StageError("no dark strokes in this image (no ECG traces); check that it is an ECG picture")
        hom = resize_matrix(orient.oriented_size(hw, c), _PAGE_HW) @ unorient_matrix(c, hw)
        msg = "classical: rotation from trace-row direction and rhythm-strip side; mirror images are not corrected"
        with step("sheet outline"):
            sheet = outline_homography(img, c)
        if sheet is not None:
            hom = sheet
            msg += "; perspective from the sheet's outline"
        else:
            msg += "; no whole sheet outline in view, so perspective is not corrected"
            with step("skew"):
                skew, gain = estimate_skew(cv2.warpPerspective(img, resize_matrix(_PAGE_HW, _SKEW_HW) @ hom,
                                                         (_SKEW_HW[1], _SKEW_HW[0]), flags=cv2.INTER_AREA,
                                                         borderMode=cv2.BORDER_REPLICATE))
            if abs(skew) >= MIN_SKEW_DEG and gain >= MIN_SKEW_GAIN:
                hom = rotation_about_centre(-skew, _PAGE_HW) @ hom
                msg += f"; deskewed by {skew:+.1f} degrees (grid and trace rows)"
        with step("warp"):
            warped = cv2.warpPerspective(img, hom, (_PAGE_HW[1], _PAGE_HW[0]), flags=cv2.INTER_AREA
                                         if max(hw) > max(_PAGE_HW) else cv2.INTER_LINEAR,
                                         borderMode=cv2.BORDER_REPLICATE)
        return NormalizedPage(image=warped, homography=hom, orientation=c, orientation_confidence=conf,
                              markers={}, method="classical", ok=conf > 0.2, message=msg)


#: Size (h, w) at which the skew is measured (the 5 mm lines are 20 px apart there).
_SKEW_HW = (850, 1100)
#: Largest skew looked for, and the smallest one corrected (degrees). Stage 1 follows a lattice that
#: is a little off, but its first ring of nodes must lie within half a box of the prediction: ~3 degrees.
MAX_SKEW_DEG = 7.0
MIN_SKEW_DEG = 0.4
#: ... and only a flat, turned page: its line profile at the best angle is at least this many times
#: peakier than unturned (ECG-Image-Kit's rotated pages: 40-300, ours turned 3 degrees: 23; phone
#: photos, whose lines converge under perspective: 3-16, and stage 1's own perspective pass does
#: better on them: deskewing them cost 4.5 dB on variant 0006).
MIN_SKEW_GAIN = 20.0


def estimate_skew(page_bgr: np.ndarray) -> tuple[float, float]:
    """Angle (degrees, image y down: positive = the page is turned clockwise) of the horizontal lines of
    an upright page (its grid lines and trace rows), and how much peakier the line profile is at that
    angle than at 0 (1 for an upright page; large for a flat page turned as a whole).

    The angle that makes the row profile of the page's line darkness peakiest (largest variance): at
    the true angle every horizontal grid line falls into one row. Coarse search in 0.5 degree steps,
    then 0.05 degree steps around the best.
    """
    g = whiten_paper(page_bgr, coarse=True)  # the paper colour to 5e-4: the angle is searched in 0.05 degree steps
    dark = 1.0 - channel_max_min(g)[1]  # any line, coloured or black, on any paper
    dark = np.clip(dark - cv2.GaussianBlur(dark, (0, 0), 6.0), 0.0, None)  # thin lines, no shading
    h, w = dark.shape
    centre = (w / 2.0, h / 2.0)
    # the central part only (rotated-in borders would count as empty rows): the turned page is made
    # there alone, by the same matrix moved to the part's corner (half the pixels of the whole page)
    y0, x0 = h // 8, w // 8
    y1, x1 = h + (-h // 8), w + (-w // 8)  # the ends of the slice [h // 8: -h // 8] it replaces
    part = (x1 - x0, y1 - y0)

    def score(deg: float) -> float:
        m = cv2.getRotationMatrix2D(centre, deg, 1.0)
        m[:, 2] -= (x0, y0)
        rot = cv2.warpAffine(dark, m, part, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        return float(rot.mean(axis=1).var())

    coarse = np.arange(-MAX_SKEW_DEG, MAX_SKEW_DEG + 1e-9, 0.5)  # holds 0.0 exactly: the unturned score
    coarse_scores = on_two_cores(score, coarse)  # (each turn is independent: the same scores on two cores)
    at_zero = coarse_scores[int(np.argmin(np.abs(coarse)))]
    start = float(coarse[int(np.argmax(coarse_scores))])
    fine = np.arange(start - 0.5, start + 0.5 + 1e-9, 0.05)
    fine_scores = on_two_cores(score, fine)
    k = int(np.argmax(fine_scores))
    # cv2's positive angle turns the image anticlockwise: the page itself was turned clockwise by that much
    return float(fine[k]), fine_scores[k] / max(at_zero, 1e-12)


def rotation_about_centre(deg: float, hw: tuple[int, int]) -> np.ndarray:
    """3x3 matrix turning a (h, w) image clockwise by ``deg`` degrees (image y down) about its centre."""
    h, w = hw
    m = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), -deg, 1.0)
    return np.vstack([m, [0.0, 0.0, 1.0]])


def outline_homography(img: np.ndarray, c: int) -> np.ndarray | None:
    """Picture px -> canonical px from the sheet's four corners (the sheet is the page), given the
    rotation class ``c``; None when no clean outline is seen or it disagrees with ``c``."""
    hw = img.shape[:2]
    out = find_paper_outline(img)
    if out is None or out.fit_px > MAX_FIT_FRACTION * max(hw):
        return None
    up = apply_homography(unorient_matrix(c, hw), out.corners)  # corners in the upright picture
    order = [int(np.argmin(up.sum(1))), int(np.argmin(up[:, 1] - up[:, 0])),
             int(np.argmax(up.sum(1))), int(np.argmax(up[:, 1] - up[:, 0]))]  # TL, TR, BR, BL
    if len(set(order)) != 4:
        return None
    h, w = _PAGE_HW
    dst = np.array([[-0.5, -0.5], [w - 0.5, -0.5], [w - 0.5, h - 0.5], [-0.5, h - 0.5]], np.float32)
    hom = cv2.getPerspectiveTransform(out.corners[order].astype(np.float32), dst).astype(np.float64)
    if not _sane(hom, hw) or orientation_of_homography(hom, hw) != c:
        return None
    return hom


def _sane(h: np.ndarray, image_hw: tuple[int, int]) -> bool:
    """A usable page homography: finite, orientation-preserving or mirrored but not folded, sensible scale."""
    if not np.isfinite(h).all():
        return False
    corners = np.array([[0, 0], [_PAGE_HW[1] - 1, 0], [_PAGE_HW[1] - 1, _PAGE_HW[0] - 1], [0, _PAGE_HW[0] - 1]],
                       dtype=np.float64)
    try:
        back = apply_homography(np.linalg.inv(h), corners)  # canonical page corners in the picture
    except np.linalg.LinAlgError:
        return False
    if not np.isfinite(back).all():
        return False
    area = abs(cv2.contourArea(back.astype(np.float32)))
    img_area = float(image_hw[0] * image_hw[1])
    if not (0.02 * img_area < area < 25.0 * img_area):
        return False
    return bool(cv2.isContourConvex(back.astype(np.float32).reshape(-1, 1, 2)))


def expected_row_fractions() -> np.ndarray:
    """Fractions of the page height (from the top) of the four trace baselines (for tests/diagnostics)."""
    return 1.0 - np.asarray(ROW_BASELINES_MV) / CANONICAL.height_mv


# --- the seed guide's loader API -------------------------------------------------------------
class ECGModelLoader:
    """Load a stage-0 checkpoint and run it on picture files (the API the seed guide documents).

    ``ECGModelLoader(path, device).load_model()`` -> ``(model, config_dict)``;
    ``.inference(image_path)`` -> dict with ``orientation_class``, ``orientation_confidence``,
    ``markers`` ({label: [x, y]} in picture px), ``homography`` (3x3, picture px -> canonical px),
    ``normalized_image`` (BGR 1700x2200), plus ``orientation_name``, ``method``, ``ok``, ``message``.
    ``path=None`` uses the classical path (no network).
    """

    def __init__(self, checkpoint_path: str | Path | WeightsSource | None, device: str = "cpu",
                 flip_tta: bool = False, backend: str = "torch") -> None:
        self.source = as_source(checkpoint_path, 0, backend)
        self.checkpoint_path = str(self.source.path) if self.source.path else None
        self.device = str(resolve_device(device, "stage 0"))
        self.flip_tta = flip_tta
        self._stage: Stage0 | None = None
        self.config: dict[str, Any] = {}

    def load_model(self) -> tuple[Any, dict[str, Any]]:
        """Build the network and load the weights; returns (model in eval mode, training config dict)."""
        if self._stage is None:
            self._stage = Stage0(self.source, device=self.device, flip_tta=self.flip_tta)
            if self._stage.net is not None and not (is_inference_file(self._stage.checkpoint)
                                                    or self._stage.weights.backend == "onnx"):
                self.config = dict(load_checkpoint(self._stage.checkpoint).get("config") or {})
            elif self._stage.net is not None:  # an inference or ONNX file keeps no training config, only its description
                self.config = {"pretrained_cfg": self._stage.net.cfg.to_dict()}
        return self._stage.model, self.config

    def inference(self, image_path: str | Path, output_dir: str | Path | None = None) -> dict[str, Any]:
        """Run stage 0 on a picture file; with ``output_dir`` also write marker_prediction.jpg + normalized.png."""
        p = Path(image_path)
        if not p.is_file():
            raise StageError(f"image {p} not found")
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is None:
            raise StageError(f"cannot read {p} as an image (damaged file or unsupported format)")
        self.load_model()
        page = self._stage(img)
        res = {
            "orientation_class": int(page.orientation),
            "orientation_name": orient.describe(page.orientation),
            "orientation_confidence": float(page.orientation_confidence),
            "markers": {k: [float(v[0]), float(v[1])] for k, v in page.markers.items()},
            "homography": page.homography,
            "normalized_image": page.image,
            "method": page.method,
            "weights": self._stage.weights.label(),
            "ok": page.ok,
            "message": page.message,
        }
        if output_dir is not None:
            out = Path(output_dir)
            out.mkdir(parents=True, exist_ok=True)
            io.write_image(draw_markers(img, page), out / "marker_prediction.jpg")
            io.write_image(page.image, out / "normalized.png")
        return res


def draw_markers(img: np.ndarray, page: NormalizedPage) -> np.ndarray:
    """The picture with each found lead label (circle + name) and the orientation written on it."""
    out = img.copy()
    s = max(1.0, max(img.shape[:2]) / 1200.0)
    colours = [tuple(int(c) for c in cv2.applyColorMap(np.uint8([[int(255 * i / 12)]]), cv2.COLORMAP_JET)[0, 0])
               for i in range(len(MARKERS))]
    for name, (x, y) in page.markers.items():
        col = colours[MARKERS.index(name)]
        cv2.circle(out, (int(round(x)), int(round(y))), int(10 * s), col, max(1, int(2 * s)), cv2.LINE_AA)
        cv2.putText(out, name, (int(x + 12 * s), int(y - 8 * s)), cv2.FONT_HERSHEY_SIMPLEX, 0.6 * s, col,
                    max(1, int(1.5 * s)), cv2.LINE_AA)
    if page.homography is not None:  # outline of the canonical page as found in the picture
        h, w = _PAGE_HW
        try:
            corners = apply_homography(np.linalg.inv(page.homography), np.array([[0, 0], [w - 1, 0], [w - 1, h - 1],
                                                                         [0, h - 1]], dtype=np.float64))
            cv2.polylines(out, [corners.astype(np.int32)], True, (0, 200, 0), max(1, int(2 * s)), cv2.LINE_AA)
        except np.linalg.LinAlgError:
            pass
    text = f"{orient.describe(page.orientation)} ({page.orientation_confidence:.2f}) [{page.method}]"
    cv2.putText(out, text, (int(10 * s), int(30 * s)), cv2.FONT_HERSHEY_SIMPLEX, 0.8 * s, (0, 0, 255),
                max(1, int(2 * s)), cv2.LINE_AA)
    return out
