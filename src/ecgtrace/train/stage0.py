"""Stage 0 training task: page orientation (8 classes) + lead-label marker segmentation (14 classes).

Data: synthetic pages rendered on the fly (:class:`ecgtrace.data.synthetic.SyntheticPages`,
distorted by :func:`ecgtrace.data.distort.apply_variant` with a random orientation)
when ``DATA.ROOT`` holds no data set; otherwise the pages of that folder
(:class:`ecgtrace.data.dataset.PageSource`), which must have ground-truth
sidecars (``{id}-{variant}.gt.npz``, as ``ecgtrace synth`` writes them). The
real competition data has no sidecars, so it cannot train this stage's marker
head: say ``DATA.ROOT=''`` to train on synthetic pages.

Targets, at ``MODEL.INPUT_SIZE`` (the page is stretched to it): a disc of class
``MARKERS.index(m) + 1`` around each label centre, and the orientation class.
Loss: cross-entropy on the markers (background weighted down) + soft Dice of the
marker discs + cross-entropy on the orientation. Metrics: orientation accuracy, marker recall, marker-centre
error in canonical page px (through the page's ground-truth homography).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ecgtrace import orient
from ecgtrace.data.dataset import PageSource
from ecgtrace.data.distort import apply_variant
from ecgtrace.errors import EcgTraceError
from ecgtrace.geometry import apply_homography, resize_matrix
from ecgtrace.models.preprocess import from_chw, to_chw
from ecgtrace.models.stage0 import MARKER_HEAD, ORIENT_HEAD, build_stage0
from ecgtrace.paper import CANONICAL, LABEL_HEIGHT_MV, MARKERS, N_MARKER_CLASSES
from ecgtrace.train import augment as aug
from ecgtrace.train.onthefly import OnTheFlyPages, render_dpi, style_mix, train_val_sets  # noqa: F401  (render_dpi: public here too)

#: Loss weight of the background class (markers cover < 1 % of the pixels).
BACKGROUND_WEIGHT = 0.05
#: Marker disc radius as a fraction of the printed label height, and its floor in input px.
DISC_FRACTION = 0.6
MIN_DISC_PX = 2.5
_LABEL_PX = LABEL_HEIGHT_MV * CANONICAL.px_per_mv  # label height on the canonical page (27.6 px)


def marker_scale(markers_xy: np.ndarray, valid: np.ndarray) -> float:
    """Image px per canonical px, from the spread of the valid markers (1.0 if fewer than 2)."""
    idx = np.flatnonzero(valid)
    if len(idx) < 2:
        return 1.0
    a, c = markers_xy[idx], CANONICAL.label_centers[idx]
    da = np.linalg.norm(a[:, None] - a[None], axis=-1)
    dc = np.linalg.norm(c[:, None] - c[None], axis=-1)
    iu = np.triu_indices(len(idx), 1)
    return float(np.median(da[iu] / np.maximum(dc[iu], 1e-6)))


def marker_mask(size: tuple[int, int], markers_xy: np.ndarray, valid: np.ndarray, radius: float) -> np.ndarray:
    """(h, w) int64 target: 0 background, ``k + 1`` in a disc around marker ``k``."""
    mask = np.zeros(size, np.uint8)
    r16 = int(round(radius * 16))
    for k in np.flatnonzero(valid):
        x, y = markers_xy[k]
        cv2.circle(mask, (int(round(x * 16)), int(round(y * 16))), r16, int(k + 1), -1, cv2.LINE_8, shift=4)
    return mask.astype(np.int64)


def canonical_homography(markers_xy: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, bool]:
    """Least-squares homography image px -> canonical page px from the valid markers (identity if < 4)."""
    idx = np.flatnonzero(valid)
    if len(idx) >= 4:
        h, _ = cv2.findHomography(markers_xy[idx].astype(np.float64), CANONICAL.label_centers[idx], 0)
        if h is not None and np.isfinite(h).all():
            return h, True
    return np.eye(3), False


def make_sample(image: np.ndarray, markers_xy: np.ndarray, orientation: int, input_size: tuple[int, int],
                rng: np.random.Generator | None, augment: bool = True) -> dict[str, torch.Tensor]:
    """One training item from an (already oriented, distorted) page image and its marker positions.

    Resizes to ``input_size`` (h, w), optionally augments (perspective, colour, dirt, JPEG), and builds
    the targets. ``rng`` may be None only when ``augment`` is False.
    """
    h, w = int(input_size[0]), int(input_size[1])
    m = resize_matrix(image.shape[:2], (h, w))
    img = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
    pts = apply_homography(m, markers_xy)
    if augment and rng is not None:
        if rng.random() < 0.6:
            img, mp = aug.random_perspective(img, rng, scale=(0.6, 1.05), max_angle_deg=12.0)
            pts = apply_homography(mp, pts)
        if rng.random() < 0.8:
            img = aug.color_jitter(img, rng)
        if rng.random() < 0.5:
            img = aug.add_dirt(img, rng)
        if rng.random() < 0.3:
            img = aug.jpeg(img, rng)
    valid = np.isfinite(pts).all(1) & (pts[:, 0] >= 0) & (pts[:, 0] <= w - 1) & (pts[:, 1] >= 0) & (pts[:, 1] <= h - 1)
    radius = max(MIN_DISC_PX, DISC_FRACTION * _LABEL_PX * marker_scale(pts, valid))
    hom, h_ok = canonical_homography(pts, valid)
    return {
        "image": torch.from_numpy(to_chw(img)),
        "markers": torch.from_numpy(marker_mask((h, w), pts, valid, radius)),
        "orientation": torch.tensor(int(orientation), dtype=torch.int64),
        "markers_xy": torch.from_numpy(np.nan_to_num(pts, nan=-1.0).astype(np.float32)),
        "markers_valid": torch.from_numpy(valid),
        "h_canon": torch.from_numpy(hom.astype(np.float64)),
        "h_ok": torch.tensor(bool(h_ok)),
    }


def _orient_page(image: np.ndarray, gt: Any, c: int) -> tuple[np.ndarray, Any]:
    """Orientation without the distortion module (same rule as ``distort.apply_orientation``)."""
    size = image.shape[:2]
    out = orient.orient_image(image, c)
    return out, gt.transformed(lambda p: orient.orient_points(p, c, size), out.shape[:2], orientation=int(c))


_WARNED: set[str] = set()


def _warn_once(msg: str) -> None:
    from loguru import logger

    key = msg.split(" on record")[0]
    if key not in _WARNED:
        _WARNED.add(key)
        logger.warning(msg)


class Stage0Synthetic(OnTheFlyPages):
    """Synthetic stage-0 items rendered on the fly: a distorted page in a random orientation."""

    def page_sample(self, i: int) -> tuple[np.ndarray, Any, str]:
        """(image, gt, variant) of item ``i``: distorted and oriented, before resizing/augmentation."""
        rec = self.record_index(i)
        rng = np.random.default_rng([self.seed, rec, 1000])
        variant = self.variants[int(rng.integers(len(self.variants)))]
        c = int(rng.integers(orient.N_ORIENTATIONS))
        image, gt, _, _ = self.pages().clean(rec)
        try:
            image, gt = apply_variant(image, gt, variant, rng, orientation=int(c))
        except Exception as e:  # noqa: BLE001 - one bad distortion must not end a long run
            if variant == "0001":
                raise
            _warn_once(f"variant {variant} failed on record {rec} (seed {self.seed}): {type(e).__name__}: "
                       f"{str(e).splitlines()[0][:160]}; using the clean page for such items")
            image, gt = _orient_page(image, gt, c)
            variant = "0001"
        return image, gt, variant

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        image, gt, _ = self.page_sample(i)
        rng = np.random.default_rng([self.seed, self.record_index(i), 2000])
        return make_sample(image, gt.markers, int(gt.orientation), self.input_size, rng, self.augment)



class Stage0Folder(torch.utils.data.Dataset):
    """Stage-0 items from a data set folder with ground-truth sidecars, given a random orientation."""

    def __init__(self, source: Any, indices: list[int], seed: int, input_size: tuple[int, int],
                 augment: bool = True) -> None:
        self.source, self.indices, self.seed = source, list(indices), int(seed)
        self.input_size, self.augment, self.epoch = tuple(int(v) for v in input_size), bool(augment), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        k = self.indices[i]
        s = self.source[k]
        if s.gt is None:
            raise EcgTraceError(f"image {s.record_id}-{s.variant} has no ground-truth sidecar (.gt.npz); "
                                "stage 0 needs marker positions")
        rng = np.random.default_rng([self.seed, self.epoch if self.augment else 0, k])
        image, gt = s.image, s.gt
        if int(gt.orientation) == 0:  # real/synth folders hold upright pages: add the 8-way orientation here
            image, gt = _orient_page(image, gt, int(rng.integers(orient.N_ORIENTATIONS)))
        return make_sample(image, gt.markers, int(gt.orientation), self.input_size, rng, self.augment)


def _folder_has_dataset(root: str) -> bool:
    p = Path(root) if root else None
    return bool(p and p.is_dir() and ((p / "train.csv").is_file() or (p / "test.csv").is_file()))


@dataclass
class Stage0Task:
    """The stage-0 :class:`ecgtrace.train.tasks.Task`."""

    stage: int = 0

    def build_model(self, cfg: Any) -> torch.nn.Module:
        return build_stage0(cfg)

    def build_datasets(self, cfg: Any) -> tuple[torch.utils.data.Dataset, torch.utils.data.Dataset | None]:
        size = tuple(int(v) for v in cfg.MODEL.INPUT_SIZE)
        seed = int(cfg.DATA.SYNTHETIC_SEED)
        variants = tuple(str(v).zfill(4) for v in cfg.DATA.VARIANTS)
        if _folder_has_dataset(cfg.DATA.ROOT):
            return self._folder_datasets(cfg, size, seed, variants)
        if not cfg.DATA.SYNTHETIC:
            raise EcgTraceError(f"DATA.ROOT={cfg.DATA.ROOT!r} holds no data set (no train.csv) and "
                                "DATA.SYNTHETIC is False; point DATA.ROOT at a data set or set DATA.SYNTHETIC=True")
        # validation: other records, fixed across epochs, same augmentation family
        return train_val_sets(cfg, lambda n, s, fresh: Stage0Synthetic(n, s, size, variants, augment=True,
                                                                         fresh_per_epoch=fresh, mix=style_mix(cfg)))

    def _folder_datasets(self, cfg: Any, size: tuple[int, int], seed: int, variants: tuple[str, ...]):
        src = PageSource(cfg.DATA.ROOT, cfg.DATA.SPLIT, variants or None)
        if len(src) == 0:
            raise EcgTraceError(f"no images in {cfg.DATA.ROOT}; check DATA.ROOT/DATA.SPLIT")
        if src[0].gt is None:
            raise EcgTraceError(f"{cfg.DATA.ROOT} has no ground-truth sidecars (.gt.npz): the real competition "
                                "data does not, and stage 0 needs marker positions; set DATA.ROOT='' to train on "
                                "synthetic pages rendered on the fly, or write a set with `ecgtrace synth`")
        # split by record so no page of a validation record is trained on
        records = sorted({it[0] for it in src.items})
        rng = np.random.default_rng(seed)
        n_val = int(round(len(records) * float(cfg.TRAIN.VAL_FRACTION)))
        val_rec = set(rng.permutation(records)[:n_val].tolist()) if n_val and len(records) > 1 else set()
        tr = [k for k, it in enumerate(src.items) if it[0] not in val_rec]
        va = [k for k, it in enumerate(src.items) if it[0] in val_rec]
        return (Stage0Folder(src, tr, seed, size, augment=True),
                Stage0Folder(src, va, seed + 1, size, augment=False) if va else None)

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]
             ) -> tuple[torch.Tensor, dict[str, float]]:
        logits = outputs[MARKER_HEAD]
        target = batch["markers"]
        if logits.shape[-2:] != target.shape[-2:]:  # a model with out_stride > 1
            target = F.interpolate(target[:, None].float(), size=logits.shape[-2:], mode="nearest")[:, 0].long()
        w = torch.ones(N_MARKER_CLASSES, device=logits.device, dtype=torch.float32)
        w[0] = BACKGROUND_WEIGHT
        seg = F.cross_entropy(logits.float(), target, weight=w)
        dice = marker_dice_loss(logits, target)
        ori = F.cross_entropy(outputs[ORIENT_HEAD].float(), batch["orientation"])
        return seg + dice + ori, {"marker_loss": seg.item(), "dice_loss": dice.item(), "orient_loss": ori.item()}

    def metrics(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, float]:
        acc = (outputs[ORIENT_HEAD].argmax(1) == batch["orientation"]).float().mean().item()
        pred, found = soft_centroids(outputs[MARKER_HEAD], batch["image"].shape[-2:])
        valid = batch["markers_valid"].bool() & batch["h_ok"].bool()[:, None]
        errs = []
        for b in range(pred.shape[0]):
            ok = (valid[b] & found[b]).cpu().numpy()
            if ok.any():
                hb = batch["h_canon"][b].double().cpu().numpy()
                p = apply_homography(hb, pred[b].double().cpu().numpy()[ok])
                errs.append(np.linalg.norm(p - CANONICAL.label_centers[ok], axis=1))
        n_valid = int(valid.sum().item())
        recall = float((valid & found).sum().item()) / n_valid if n_valid else float("nan")
        e = np.concatenate(errs) if errs else np.array([])
        return {"orient_acc": acc, "marker_recall": recall,
                "marker_err_px": float(np.mean(e)) if len(e) else float("nan"),
                "marker_err_median_px": float(np.median(e)) if len(e) else float("nan")}

    def debug_images(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], out_dir: Path) -> None:
        """Inputs with ground-truth (green) and predicted (red) marker centres and the orientation guess."""
        out_dir.mkdir(parents=True, exist_ok=True)
        pred, found = soft_centroids(outputs[MARKER_HEAD], batch["image"].shape[-2:])
        ori = outputs[ORIENT_HEAD].softmax(1)
        for b in range(min(4, pred.shape[0])):
            img = from_chw(batch["image"][b].detach().float().cpu().numpy()).copy()
            gt = batch["markers_xy"][b].cpu().numpy()
            for k in range(len(MARKERS)):
                if bool(batch["markers_valid"][b, k]):
                    cv2.circle(img, (int(gt[k, 0]), int(gt[k, 1])), 4, (0, 200, 0), 1)
                if bool(found[b, k]):
                    x, y = pred[b, k].cpu().numpy()
                    cv2.drawMarker(img, (int(x), int(y)), (0, 0, 255), cv2.MARKER_CROSS, 6, 1)
            c = int(ori[b].argmax())
            cv2.putText(img, f"pred {c} ({float(ori[b, c]):.2f}) gt {int(batch['orientation'][b])}", (4, 14),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 0, 0), 1)
            cv2.imwrite(str(out_dir / f"markers_{b}.png"), img)


def marker_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - soft Dice of each label class present in each image, averaged.

    Markers cover well under 1 % of the pixels; cross-entropy alone sits for a long time at
    "all background". The Dice term is scale-free per marker, so it pulls each disc in from the start.
    """
    prob = logits.float().softmax(1)[:, 1:]  # (B, 13, h, w)
    onehot = F.one_hot(target, N_MARKER_CLASSES).permute(0, 3, 1, 2)[:, 1:].float()
    inter = (prob * onehot).sum((2, 3))
    denom = prob.sum((2, 3)) + onehot.sum((2, 3))
    present = onehot.sum((2, 3)) > 0
    if not bool(present.any()):
        return logits.sum() * 0.0
    dice = (2 * inter + 1.0) / (denom + 1.0)
    return (1.0 - dice)[present].mean()


def soft_centroids(logits: torch.Tensor, input_hw: tuple[int, int] | torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
    """Per marker class: probability-weighted centroid of the pixels whose argmax is that class.

    Returns (B, 13, 2) centres in input px and (B, 13) found flags. Fast and differentiable-free;
    :class:`ecgtrace.stages.stage0.Stage0` uses connected components instead (robust to stray pixels).
    """
    prob = logits.float().softmax(1)
    b, c, h, w = prob.shape
    lab = prob.argmax(1)
    ys = torch.arange(h, device=prob.device, dtype=torch.float32)
    xs = torch.arange(w, device=prob.device, dtype=torch.float32)
    sy, sx = input_hw[0] / h, input_hw[1] / w
    cents = torch.zeros(b, c - 1, 2, device=prob.device)
    found = torch.zeros(b, c - 1, dtype=torch.bool, device=prob.device)
    for k in range(1, c):
        m = prob[:, k] * (lab == k)
        s = m.sum((1, 2))
        ok = s > 0
        cx = (m.sum(1) * xs).sum(1) / s.clamp_min(1e-9)
        cy = (m.sum(2) * ys).sum(1) / s.clamp_min(1e-9)
        # output px -> input px (pixel centres)
        cents[:, k - 1, 0] = (cx + 0.5) * sx - 0.5
        cents[:, k - 1, 1] = (cy + 0.5) * sy - 0.5
        found[:, k - 1] = ok
    return cents, found


TASK = Stage0Task()
