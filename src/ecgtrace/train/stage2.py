"""Stage 2 training task: per-row trace position on ground-truth-rectified pages.

Input: the page as the variant's camera/scanner saw it, rectified with its *ground
truth* geometry (``GroundTruth.fwd_map``), so stage 2 trains in parallel with
stages 0 and 1 and sees the variant's photometric effects (lighting, stains, B/W,
blur, JPEG) on an exactly rectified page. Each page gives four row strips
(:func:`ecgtrace.models.stage2.row_strip`); training uses a random horizontal window
of ``CROP_S`` seconds of all four, validation the full width.

Target: for each pixel column, the fractional y of the row's drawn centre line,
split over the two nearest pixels (weights ``1 - f`` and ``f``), so that the
expected y under the target is exact. Loss: cross-entropy of a softmax down each
column against that two-pixel target (a "coordinate loss"). Metric: mean absolute
y error of the decoded column position (px, and mV).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ecgtrace import paper
from ecgtrace.data.distort import VARIANTS, apply_variant
from ecgtrace.data.render import StyleMix
from ecgtrace.errors import EcgTraceError
from ecgtrace.models.preprocess import from_chw, to_chw
from ecgtrace.models.stage2 import TRACE_HEAD, build_stage2, decode_columns, row_strip
from ecgtrace.paper import BAND_ABOVE_MV, BAND_BELOW_MV, CANONICAL, LAYOUT_3X4, N_ROWS, RHYTHM_KEY, Page
from ecgtrace.train.onthefly import OnTheFlyPages, style_mix, train_val_sets

#: Width of the random training window, in seconds of signal (the page is read at full resolution).
CROP_S = 3.0


def gt_rectify(image: np.ndarray, gt: Any, page_size: tuple[int, int]) -> np.ndarray:
    """Warp a distorted picture back onto the clean page with its ground-truth forward map."""
    h, w = page_size
    s = float(gt.map_stride)
    xx, yy = np.meshgrid(np.arange(w, dtype=np.float32) / s, np.arange(h, dtype=np.float32) / s)
    fmap = np.ascontiguousarray(gt.fwd_map.astype(np.float32))
    full = cv2.remap(fmap, xx, yy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return cv2.remap(image, full[..., 0], full[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def row_polyline(gt: Any, row: int) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of the drawn centre line of ``row`` on the clean page, sorted by x."""
    keys = (RHYTHM_KEY,) if row == N_ROWS - 1 else LAYOUT_3X4[row]
    x = np.concatenate([gt.traces[k][:, 0] for k in keys])
    y = np.concatenate([gt.traces[k][:, 1] for k in keys])
    o = np.argsort(x, kind="stable")
    return x[o], y[o]


def column_targets(gt: Any, page: Page, width: int, tops: list[int], strip_h: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row: target y (strip px) at every page column, and which columns hold a target."""
    ty = np.zeros((N_ROWS, width), np.float32)
    valid = np.zeros((N_ROWS, width), bool)
    cols = np.arange(width, dtype=np.float64)
    x0 = float(page.time_to_x(0.0))
    x1 = float(page.time_to_x(paper.DURATION_S))
    for r in range(N_ROWS):
        gx, gy = row_polyline(gt, r)
        y = np.interp(cols, gx, gy) - tops[r]
        ok = (cols >= max(x0, gx.min())) & (cols <= min(x1, gx.max())) & (y >= 0) & (y <= strip_h - 1.001)
        if r < N_ROWS - 1:  # the lead switch is a jump: no target in the columns next to it
            for c in range(1, paper.N_COLUMNS):
                ok &= np.abs(cols - page.column_x(c)) > 1.5
        ty[r], valid[r] = np.where(ok, y, 0.0), ok
    return ty, valid


class Stage2Pages(OnTheFlyPages):
    """Synthetic pages rendered on the fly, GT-rectified; item = the four row strips of one page."""

    def __init__(self, n: int, seed: int, page_size: tuple[int, int], variants: tuple[str, ...] = (),
                 crop: bool = True, fresh_per_epoch: bool = True, mix: StyleMix = StyleMix()) -> None:
        self.page_size = (int(page_size[0]), int(page_size[1]))
        super().__init__(n, seed, self.page_size, tuple(variants) or ("0001",), augment=False,
                         fresh_per_epoch=fresh_per_epoch, page=CANONICAL.scaled_to(self.page_size[1]), mix=mix)
        self.crop = crop

    def page_item(self, i: int) -> tuple[np.ndarray, Any]:
        """(GT-rectified page image, clean-page ground truth) of item ``i`` this epoch."""
        k = self.record_index(i)
        image, gt, _, _ = self.pages().clean(k)
        variant = self.variants[k % len(self.variants)]
        if variant != "0001":
            rng = np.random.default_rng([self.seed, k, 77])
            dist, dgt = apply_variant(image, gt, variant, rng, orientation=0)
            image = gt_rectify(dist, dgt, image.shape[:2])
        return image, gt

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        image, gt = self.page_item(i)
        page = self.page
        strips, tops = [], []
        for r in range(N_ROWS):
            s, top = row_strip(image, page, r)
            strips.append(s)
            tops.append(top)
        sh, w = strips[0].shape[:2]
        ty, valid = column_targets(gt, page, w, tops, sh)
        if self.crop:
            cw = min(w, int(round(CROP_S * page.px_per_s / 32.0)) * 32)
            rng = np.random.default_rng([self.seed, self.epoch, int(i), 5])
            lo = int(max(0, page.time_to_x(0.0) - 0.2 * page.px_per_s))
            hi = int(min(w - cw, page.time_to_x(paper.DURATION_S) + 0.1 * page.px_per_s - cw))
            a = int(rng.integers(lo, max(lo, hi) + 1))
            strips = [s[:, a:a + cw] for s in strips]
            ty, valid = ty[:, a:a + cw], valid[:, a:a + cw]
        return {
            "image": torch.from_numpy(np.stack([to_chw(s) for s in strips])),
            "ty": torch.from_numpy(ty),
            "valid": torch.from_numpy(valid),
        }


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Pages -> one batch of row strips (4 per page)."""
    return {k: torch.cat([it[k] for it in items], dim=0) for k in items[0]}


def _two_pixel(ty: torch.Tensor, h: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    y0 = ty.floor().clamp(0, h - 1)
    f = (ty - y0).clamp(0, 1)
    y1 = (y0 + 1).clamp(0, h - 1)
    return y0.long(), y1.long(), f


class Stage2Task:
    """The stage-2 :class:`ecgtrace.train.tasks.Task`."""

    stage: int = 2
    collate = staticmethod(collate)

    def build_model(self, cfg: Any) -> torch.nn.Module:
        return build_stage2(cfg)

    def build_datasets(self, cfg: Any) -> tuple[torch.utils.data.Dataset, torch.utils.data.Dataset | None]:
        size = tuple(int(v) for v in cfg.MODEL.INPUT_SIZE)
        if abs(size[1] / size[0] - CANONICAL.width_px / CANONICAL.height_px) > 0.02:
            raise EcgTraceError(f"stage 2 reads the rectified page at its own aspect; MODEL.INPUT_SIZE={list(size)} "
                                f"should be [{CANONICAL.height_px}, {CANONICAL.width_px}] (or scaled, e.g. [850, 1100])")
        if not cfg.DATA.SYNTHETIC:
            raise EcgTraceError("stage 2 trains on synthetic pages with exact trace ground truth; set "
                                "DATA.SYNTHETIC=True (the competition images carry no trace geometry)")
        variants = tuple(str(v).zfill(4) for v in cfg.DATA.VARIANTS) or VARIANTS
        return train_val_sets(cfg, lambda n, s, fresh: Stage2Pages(n, s, size, variants, crop=True,
                                                                     fresh_per_epoch=fresh, mix=style_mix(cfg)),
                              min_val=2)

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]
             ) -> tuple[torch.Tensor, dict[str, float]]:
        logits = outputs[TRACE_HEAD][:, 0].float()  # (N, H, W)
        logp = F.log_softmax(logits, dim=1)
        y0, y1, f = _two_pixel(batch["ty"], logits.shape[1])
        lp0 = torch.gather(logp, 1, y0[:, None]).squeeze(1)
        lp1 = torch.gather(logp, 1, y1[:, None]).squeeze(1)
        nll = -((1 - f) * lp0 + f * lp1)
        v = batch["valid"].float()
        loss = (nll * v).sum() / v.sum().clamp_min(1.0)
        return loss, {"coord_loss": float(loss.item())}

    def metrics(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, float]:
        logits = outputs[TRACE_HEAD][:, 0].detach().float().cpu()
        ty, valid = batch["ty"].cpu().numpy(), batch["valid"].cpu().numpy()
        errs = []
        for k in range(logits.shape[0]):
            y, _ = decode_columns(logits[k])
            if valid[k].any():
                errs.append(np.abs(y - ty[k])[valid[k]])
        e = np.concatenate(errs) if errs else np.array([np.nan])
        # strips are BAND_ABOVE_MV + BAND_BELOW_MV tall (rounded up to a multiple of 8 px)
        px_per_mv = logits.shape[1] / (BAND_ABOVE_MV + BAND_BELOW_MV)
        return {"y_err_px": float(np.mean(e)), "y_err_median_px": float(np.median(e)),
                "y_err_p95_px": float(np.percentile(e, 95)), "y_err_mv": float(np.mean(e) / px_per_mv)}

    def debug_images(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], out_dir: Path) -> None:
        """Strips with the target (green) and decoded (red) y per column."""
        out_dir.mkdir(parents=True, exist_ok=True)
        logits = outputs[TRACE_HEAD][:, 0].detach().float().cpu()
        for k in range(min(4, logits.shape[0])):
            img = from_chw(batch["image"][k].cpu().numpy())
            y, _ = decode_columns(logits[k])
            ty, v = batch["ty"][k].cpu().numpy(), batch["valid"][k].cpu().numpy()
            for x in range(img.shape[1]):
                if v[x]:
                    cv2.circle(img, (x, int(round(ty[x]))), 1, (0, 200, 0), -1)
                cv2.circle(img, (x, int(round(y[x]))), 0, (0, 0, 255), -1)
            cv2.imwrite(str(out_dir / f"stage2_strip{k}.png"), img)


TASK = Stage2Task()
