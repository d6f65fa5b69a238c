"""Stage 1 network: 5 mm grid-node heatmap + horizontal / vertical grid-line index maps.

Heads (logits at the input size):

- ``points``: 1 channel, a small disc at every 5 mm node (BCE, positive weight ~10);
- ``hlines``: ``n_hlines + 1`` classes, which horizontal 5 mm line (counted from the page top,
  class ``i + 1``) is nearest to a pixel (within half a pitch), 0 = background beyond the lattice;
- ``vlines``: ``n_vlines + 1`` classes, likewise for vertical lines counted from the left.

Inference (:func:`predict_grid`): connected components of the heatmap give the nodes, a
majority vote of the two index maps inside each component gives its (row, column).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from ecgtrace.models.backbone import register_model
from ecgtrace.models.checkpoint import LoadedModel, load_model
from ecgtrace.models.preprocess import resize_to_input, to_chw
from ecgtrace.models.unet import UNet
from ecgtrace.paper import CANONICAL, Page

POINTS_HEAD = "points"
HLINES_HEAD = "hlines"
VLINES_HEAD = "vlines"


def head_sizes(page: Page = CANONICAL) -> dict[str, int]:
    """Channels of each head for ``page`` (45 / 57 line classes on the letter page)."""
    return {POINTS_HEAD: 1, HLINES_HEAD: page.n_hlines + 1, VLINES_HEAD: page.n_vlines + 1}


#: Width (in 5 mm pitches) of the canonical position prior of the line-index heads; see :class:`GridNet`.
PRIOR_SIGMA_PITCH = 0.25


def index_prior(n_lines: int, centres_px: np.ndarray, length_px: float, out_len: int, sigma_px: float) -> torch.Tensor:
    """Log-prior over (background, line 0 .. n_lines - 1) along one axis of ``out_len`` output pixels.

    Line ``k`` scores ``-0.5 * ((u - centre_k) / sigma)**2`` at canonical position ``u`` of the output
    pixel; background scores what a line scores at half a pitch, so it wins only beyond the lattice.
    Returns (n_lines + 1, out_len) float32.
    """
    u = (np.arange(out_len) + 0.5) * (length_px / out_len) - 0.5
    d = (u[None, :] - np.asarray(centres_px, dtype=np.float64)[:, None]) / sigma_px
    pitch = float(np.median(np.abs(np.diff(centres_px))))
    bg = np.full((1, out_len), -0.5 * (0.5 * pitch / sigma_px) ** 2)
    return torch.from_numpy(np.concatenate([bg, -0.5 * d**2], axis=0).astype(np.float32))


class GridNet(UNet):
    """The stage-1 U-Net; its line-index heads start from the canonical page.

    Which 5 mm line a pixel belongs to is, on a page stage 0 has normalized, mostly a matter of
    where it is: the heads add a fixed log-prior (:func:`index_prior`, from ``paper.py``) that puts
    every line where the canonical page has it, and learn from the image only how far this page's
    lines sit from there. Learning the 45/57-way split by position alone needs logits tens of nats
    apart, which a from-scratch network reaches only after many thousands of steps.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.arch["name"] = "stage1"  # rebuilt by `stage1_unet`, prior included
        self._priors: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def _prior(self, h: int, w: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if (h, w) not in self._priors:  # the input is a whole page: positions scale with the output size
            page = CANONICAL
            sigma = PRIOR_SIGMA_PITCH * float(page.vline_x(1) - page.vline_x(0))
            hp = index_prior(page.n_hlines, page.hline_y(np.arange(page.n_hlines)), page.height_px, h, sigma)
            vp = index_prior(page.n_vlines, page.vline_x(np.arange(page.n_vlines)), page.width_px, w, sigma)
            self._priors[(h, w)] = (hp[None, :, :, None], vp[None, :, None, :])
        hp, vp = self._priors[(h, w)]
        return hp.to(like.device, like.dtype), vp.to(like.device, like.dtype)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = super().forward(x)
        h, w = (int(v) for v in out[HLINES_HEAD].shape[-2:])  # plain ints also while torch.onnx traces
        hp, vp = self._prior(h, w, out[HLINES_HEAD])
        out[HLINES_HEAD] = out[HLINES_HEAD] + hp
        out[VLINES_HEAD] = out[VLINES_HEAD] + vp
        return out


@register_model("stage1")
def stage1_unet(encoder_name: str = "resnet18", decoder_channels: list[int] | tuple[int, ...] = (256, 128, 64, 32),
                pretrained: bool = False, weights: str = "", **kwargs: Any) -> GridNet:
    """Stage-1 network: U-Net with the three heads, CoordConv on the input and at the heads, and the
    canonical position prior on the line-index heads (:class:`GridNet`)."""
    kwargs.setdefault("seg_heads", head_sizes(CANONICAL))
    kwargs.setdefault("coord_conv", True)
    kwargs.setdefault("coord_heads", True)
    return GridNet(encoder_name=encoder_name, decoder_channels=decoder_channels, pretrained=pretrained,
                   weights=weights, **kwargs)


def build_stage1(cfg: Any) -> GridNet:
    """Stage 1 model from a :class:`ecgtrace.config.Config` (``MODEL.BACKBONE.*``, ``MODEL.DECODER_CHANNELS``).

    One decoder block per encoder skip plus one more, so the heads work at full input resolution
    (grid nodes are only a few pixels apart at reduced resolution).
    """
    bb = cfg.MODEL.BACKBONE
    dec = [int(c) for c in cfg.MODEL.DECODER_CHANNELS]
    dec.append(max(8, dec[-1] // 2))  # the extra block past the shallowest skip brings resnets to stride 1
    return stage1_unet(encoder_name=bb.NAME, decoder_channels=dec, pretrained=bool(bb.PRETRAINED), weights=bb.WEIGHTS)


def load_stage1(path: str | Path, device: str = "cpu", backend: str = "torch") -> LoadedModel:
    """A trained stage-1 network and the description of its weights (input size, normalisation)."""
    return load_model(path, device, stage=1, heads=(POINTS_HEAD, HLINES_HEAD, VLINES_HEAD), backend=backend)


def decode_points(points_logit: np.ndarray, hlines_logit: np.ndarray, vlines_logit: np.ndarray,
                  min_prob: float = 0.5, min_votes: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nodes from one image's head outputs (C, h, w) each.

    Returns points (N, 2) in output px (x, y), index (N, 2) (hline i, vline j) and score (N,).
    A component whose index votes are not a clear majority (< ``min_votes``) or that falls on
    background in either index map is dropped.
    """
    prob = 1.0 / (1.0 + np.exp(-points_logit[0].astype(np.float64)))
    mask = (prob >= min_prob).astype(np.uint8)
    n, lab = cv2.connectedComponents(mask, connectivity=8)
    if n <= 1:
        return np.zeros((0, 2)), np.zeros((0, 2), dtype=np.int64), np.zeros(0)
    hl = np.argmax(hlines_logit, axis=0)
    vl = np.argmax(vlines_logit, axis=0)
    flat = lab.ravel()
    sel = flat > 0
    comp = flat[sel]
    w = prob.ravel()[sel]
    h_img, w_img = prob.shape
    ys, xs = np.divmod(np.flatnonzero(sel), w_img)
    wsum = np.bincount(comp, weights=w, minlength=n)
    cx = np.bincount(comp, weights=w * xs, minlength=n) / np.maximum(wsum, 1e-9)
    cy = np.bincount(comp, weights=w * ys, minlength=n) / np.maximum(wsum, 1e-9)
    size = np.bincount(comp, minlength=n)
    peak = np.zeros(n)
    np.maximum.at(peak, comp, w)

    def vote(classes: np.ndarray, n_cls: int) -> tuple[np.ndarray, np.ndarray]:
        counts = np.zeros((n, n_cls))
        np.add.at(counts, (comp, classes.ravel()[sel]), 1.0)
        best = counts.argmax(axis=1)
        frac = counts.max(axis=1) / np.maximum(counts.sum(axis=1), 1)
        return best, frac

    hi, hf = vote(hl, hlines_logit.shape[0])
    vj, vf = vote(vl, vlines_logit.shape[0])
    ok = (np.arange(n) > 0) & (hi > 0) & (vj > 0) & (hf >= min_votes) & (vf >= min_votes) & (size >= 1)
    pts = np.stack([cx, cy], axis=1)[ok]
    idx = np.stack([hi - 1, vj - 1], axis=1)[ok].astype(np.int64)
    return pts, idx, peak[ok]


@torch.no_grad()
def predict_grid(net: LoadedModel, image_bgr: np.ndarray, device: str = "cpu"
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run the network on a page and return its nodes: points (N, 2) in ``image_bgr`` px, index (N, 2), score (N,)."""
    cfg = net.cfg
    H, W = image_bgr.shape[:2]
    x = torch.from_numpy(to_chw(resize_to_input(image_bgr, cfg.input_size), cfg.mean, cfg.std))[None].to(device)
    out = net.model(x)
    get = lambda k: out[k][0].float().cpu().numpy()  # noqa: E731
    pts, idx, score = decode_points(get(POINTS_HEAD), get(HLINES_HEAD), get(VLINES_HEAD))
    oh, ow = out[POINTS_HEAD].shape[-2:]
    # output px -> page px (pixel centres)
    pts = np.stack([(pts[:, 0] + 0.5) * (W / ow) - 0.5, (pts[:, 1] + 0.5) * (H / oh) - 0.5], axis=1)
    return pts, idx, score
