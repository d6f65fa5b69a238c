"""Stage 1 training task (grid points + line indices) and the stage-0 simulation it trains on."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from ecgtrace.geometry import apply_homography, resize_matrix
from ecgtrace.models.preprocess import from_chw, to_chw
from ecgtrace.paper import CANONICAL, HOMOGRAPHY_MARKERS, MARKERS, Page

_H_IDX = np.array([MARKERS.index(m) for m in HOMOGRAPHY_MARKERS])


def simulate_stage0(image: np.ndarray, gt: Any, page: Page = CANONICAL, rng: np.random.Generator | None = None,
                    marker_noise_px: float = 0.0) -> tuple[np.ndarray, Any, np.ndarray]:
    """What stage 0 would hand to stage 1: the page warped by the homography from its lead-label
    markers (the ground-truth ones, plus ``marker_noise_px`` of Gaussian noise) to ``page``'s canonical
    label centres. Returns (normalized image of ``page.size``, moved ground truth, 3x3 homography).
    """
    src = np.asarray(gt.markers, dtype=np.float64)[_H_IDX]
    if rng is not None and marker_noise_px > 0:
        src = src + rng.normal(0.0, marker_noise_px, src.shape)
    dst = page.label_centers[_H_IDX]
    ok = np.isfinite(src).all(axis=1)
    h, _ = cv2.findHomography(src[ok], dst[ok], 0)
    if h is None:
        h = np.eye(3)
    H, W = page.size
    out = cv2.warpPerspective(image, h, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                              borderValue=(255, 255, 255))

    def fwd(p: np.ndarray) -> np.ndarray:
        q = np.c_[p, np.ones(len(p))] @ h.T
        return q[:, :2] / q[:, 2:3]

    return out, gt.transformed(fwd, (H, W)), h


# --- training task -----------------------------------------------------------------------
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from ecgtrace.data.synthetic import apply_variant  # noqa: E402
from ecgtrace.errors import EcgTraceError  # noqa: E402
from ecgtrace.models.stage1 import HLINES_HEAD, POINTS_HEAD, VLINES_HEAD, build_stage1, decode_points  # noqa: E402
from ecgtrace.train import augment as aug  # noqa: E402
from ecgtrace.train.onthefly import OnTheFlyPages, style_mix, train_val_sets  # noqa: E402

#: BCE positive weight of the node heatmap (nodes cover ~2 % of the pixels).
POS_WEIGHT = 10.0
#: Cross-entropy weight of the background class of the line-index maps.
LINE_BACKGROUND_WEIGHT = 0.2
#: Node disc radius as a fraction of the 5 mm pitch at the input size (floor in px).
DISC_FRACTION, MIN_DISC_PX = 0.16, 1.5
#: Line-index bands: every pixel within half a pitch of line i is labelled i + 1, so the index maps are
#: dense (each pixel says which line is nearest) rather than thin lines on background. A thin-line target
#: gives the 45/57-way heads a few pixels each to learn from; the dense one trains in a fraction of the
#: steps, and a node disc, centred on its lines, sits in the middle of its bands.
LINE_FRACTION, MIN_LINE_PX = 0.5, 1.0
#: Std of the label-marker noise of the simulated stage 0, canonical px.
MARKER_NOISE_PX = 2.0


def make_targets(nodes: np.ndarray, size: tuple[int, int], page: Page = CANONICAL) -> dict[str, np.ndarray]:
    """Targets at an input of ``size`` (h, w) from node positions (n_hlines, n_vlines, 2) in input px.

    ``points`` float32 (h, w) discs; ``hlines`` / ``vlines`` int64 (h, w) index + 1 of the nearest line
    within half a pitch (0 = background: beyond the lattice's outer lines).
    """
    h, w = size
    nh, nv = page.n_hlines, page.n_vlines
    pitch = float(np.median(np.linalg.norm(np.diff(nodes, axis=1), axis=-1)))
    r = max(MIN_DISC_PX, DISC_FRACTION * pitch)
    t = max(MIN_LINE_PX, LINE_FRACTION * pitch)
    pts = np.zeros((h, w), np.uint8)
    hl = np.zeros((h, w), np.uint8)
    vl = np.zeros((h, w), np.uint8)
    s = 16
    for i in range(nh):
        cv2.polylines(hl, [np.round(nodes[i] * s).astype(np.int32)], False, i + 1, max(1, int(np.ceil(2 * t)) + 1),
                      cv2.LINE_8, 4)
    for j in range(nv):
        cv2.polylines(vl, [np.round(nodes[:, j] * s).astype(np.int32)], False, j + 1, max(1, int(np.ceil(2 * t)) + 1),
                      cv2.LINE_8, 4)
    for p in nodes.reshape(-1, 2):
        if -r <= p[0] < w + r and -r <= p[1] < h + r:
            cv2.circle(pts, (int(round(p[0] * s)), int(round(p[1] * s))), int(round(r * s)), 1, -1, cv2.LINE_8, 4)
    return {"points": pts.astype(np.float32), "hlines": hl.astype(np.int64), "vlines": vl.astype(np.int64)}


def make_sample(image: np.ndarray, gt: Any, input_size: tuple[int, int], rng: np.random.Generator | None,
                augment: bool = True, page: Page = CANONICAL) -> dict[str, torch.Tensor]:
    """One item from a normalized page (stage 0's output) and its ground truth."""
    h, w = int(input_size[0]), int(input_size[1])
    m = resize_matrix(image.shape[:2], (h, w))
    img = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
    nh, nv = page.n_hlines, page.n_vlines
    nodes = np.full((nh, nv, 2), np.nan)
    gi = np.asarray(gt.grid_index)
    nodes[gi[:, 0], gi[:, 1]] = apply_homography(m, np.asarray(gt.grid_points, dtype=np.float64))
    if augment and rng is not None:
        if rng.random() < 0.8:
            img = aug.color_jitter(img, rng)
        if rng.random() < 0.3:
            img = aug.add_dirt(img, rng)
        if rng.random() < 0.3:
            img = aug.jpeg(img, rng)
    tg = make_targets(np.nan_to_num(nodes, nan=-1e4), (h, w), page)
    valid = np.isfinite(nodes).all(-1) & (nodes[..., 0] >= 0) & (nodes[..., 0] <= w - 1) \
        & (nodes[..., 1] >= 0) & (nodes[..., 1] <= h - 1)
    return {
        "image": torch.from_numpy(to_chw(img)),
        "points": torch.from_numpy(tg["points"]),
        "hlines": torch.from_numpy(tg["hlines"]),
        "vlines": torch.from_numpy(tg["vlines"]),
        "nodes": torch.from_numpy(np.nan_to_num(nodes, nan=-1.0).astype(np.float32)),
        "nodes_valid": torch.from_numpy(valid),
        "grid_visible": torch.tensor(bool(getattr(gt, "grid_visible", True))),
    }


class Stage1Synthetic(OnTheFlyPages):
    """Synthetic stage-1 items rendered on the fly: a distorted page, normalized as stage 0 would."""

    def normalized(self, i: int) -> tuple[np.ndarray, Any, str]:
        """(normalized image at the render page size, moved gt, variant) of item ``i``."""
        rec = self.record_index(i)
        rng = np.random.default_rng([self.seed, rec, 1001])
        variant = self.variants[int(rng.integers(len(self.variants)))]
        image, gt, _, _ = self.pages().clean(rec)
        image, gt = apply_variant(image, gt, variant, rng, orientation=0)
        u = self.page.width_px / CANONICAL.width_px
        image, gt, _ = simulate_stage0(image, gt, self.page, rng, MARKER_NOISE_PX * u)
        return image, gt, variant

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        image, gt, _ = self.normalized(i)
        rng = np.random.default_rng([self.seed, self.record_index(i), 2001])
        return make_sample(image, gt, self.input_size, rng, self.augment)



class Stage1Task:
    """The stage-1 :class:`ecgtrace.train.tasks.Task`: loss = 2 * points + hlines + vlines."""

    stage: int = 1

    def build_model(self, cfg: Any) -> torch.nn.Module:
        return build_stage1(cfg)

    def build_datasets(self, cfg: Any) -> tuple[torch.utils.data.Dataset, torch.utils.data.Dataset | None]:
        from pathlib import Path

        root = Path(cfg.DATA.ROOT) if cfg.DATA.ROOT else None
        if root is not None and root.is_dir() and (root / "train.csv").is_file():
            raise EcgTraceError(f"stage 1 trains on synthetic pages only (it needs exact grid ground truth, which "
                                f"{root} does not carry); set DATA.ROOT='' to render pages on the fly")
        if not cfg.DATA.SYNTHETIC:
            raise EcgTraceError("stage 1 trains on synthetic pages rendered on the fly; set DATA.SYNTHETIC=True")
        size = tuple(int(v) for v in cfg.MODEL.INPUT_SIZE)
        variants = tuple(str(v).zfill(4) for v in cfg.DATA.VARIANTS)
        return train_val_sets(cfg, lambda n, s, fresh: Stage1Synthetic(n, s, size, variants, augment=fresh,
                                                                         fresh_per_epoch=fresh, mix=style_mix(cfg)))

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]
             ) -> tuple[torch.Tensor, dict[str, float]]:
        pl = outputs[POINTS_HEAD][:, 0].float()
        tgt = batch["points"].float()
        if pl.shape[-2:] != tgt.shape[-2:]:
            tgt = F.interpolate(tgt[:, None], size=pl.shape[-2:], mode="nearest")[:, 0]
        pw = torch.tensor(POS_WEIGHT, device=pl.device)
        lp = F.binary_cross_entropy_with_logits(pl, tgt, pos_weight=pw)
        parts = {"points_loss": lp.item()}
        total = 2.0 * lp
        for head in (HLINES_HEAD, VLINES_HEAD):
            logits = outputs[head].float()
            t = batch[head]
            if logits.shape[-2:] != t.shape[-2:]:
                t = F.interpolate(t[:, None].float(), size=logits.shape[-2:], mode="nearest")[:, 0].long()
            wt = torch.ones(logits.shape[1], device=logits.device)
            wt[0] = LINE_BACKGROUND_WEIGHT
            lc = F.cross_entropy(logits, t, weight=wt)
            parts[f"{head}_loss"] = lc.item()
            total = total + lc
        return total, parts

    def metrics(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """Decoded node error in canonical px, node recall and index accuracy."""
        errs, found, wrong, n_valid = [], 0, 0, 0
        h, w = batch["image"].shape[-2:]
        scale = CANONICAL.width_px / float(w)
        for b in range(batch["image"].shape[0]):
            get = lambda k: outputs[k][b].detach().float().cpu().numpy()  # noqa: E731
            pts, idx, _ = decode_points(get(POINTS_HEAD), get(HLINES_HEAD), get(VLINES_HEAD))
            oh, ow = outputs[POINTS_HEAD].shape[-2:]
            pts = np.stack([(pts[:, 0] + 0.5) * (w / ow) - 0.5, (pts[:, 1] + 0.5) * (h / oh) - 0.5], axis=1) \
                if len(pts) else pts
            nodes = batch["nodes"][b].cpu().numpy()
            valid = batch["nodes_valid"][b].cpu().numpy()
            n_valid += int(valid.sum())
            if not len(pts):
                continue
            ok = valid[idx[:, 0], idx[:, 1]]
            d = np.linalg.norm(pts[ok] - nodes[idx[ok, 0], idx[ok, 1]], axis=1) * scale
            good = d < 0.5 * L_PITCH
            errs.append(d[good])
            found += int(good.sum())
            wrong += int((~good).sum())
        e = np.concatenate(errs) if errs else np.array([])
        return {
            "point_err_px": float(np.mean(e)) if len(e) else float("nan"),
            "point_err_median_px": float(np.median(e)) if len(e) else float("nan"),
            "node_recall": found / n_valid if n_valid else float("nan"),
            "index_error_rate": wrong / max(found + wrong, 1),
        }

    def debug_images(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], out_dir) -> None:
        """Inputs with the decoded nodes coloured by their row index parity (green/blue) on the heatmap."""
        from pathlib import Path

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        for b in range(min(4, batch["image"].shape[0])):
            img = from_chw(batch["image"][b].detach().float().cpu().numpy()).copy()
            get = lambda k: outputs[k][b].detach().float().cpu().numpy()  # noqa: E731
            pts, idx, _ = decode_points(get(POINTS_HEAD), get(HLINES_HEAD), get(VLINES_HEAD))
            for p, ij in zip(pts, idx):
                col = (0, 200, 0) if (ij[0] + ij[1]) % 2 == 0 else (255, 0, 0)
                cv2.circle(img, (int(round(p[0])), int(round(p[1]))), 2, col, 1)
            cv2.imwrite(str(out_dir / f"grid_{b}.png"), img)


L_PITCH = float(CANONICAL.vline_x(1) - CANONICAL.vline_x(0))
TASK = Stage1Task()
