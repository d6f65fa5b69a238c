"""Stage 2 network: where the trace of one row passes in each pixel column of a rectified page.

The network reads one *row strip* at a time: the band of the rectified page from
``BAND_ABOVE_MV`` above a row's baseline to ``BAND_BELOW_MV`` below it, full page
width, full resolution (resolution is what moved the score most in prior work).
The four rows of a page (three 2.5 s lead rows + the rhythm strip) go through the
same weights as a batch of four, so the four-channel page output of the design is
the stack of the four strip outputs. CoordConv gives the network the strip's
vertical position, so it learns to follow the trace that belongs to *this* row
where a neighbouring row's peaks reach into the band.

Head ``trace``: one logit per pixel; a softmax down each column gives the
probability that the row's centre line crosses that column at that y. Decoding
(:func:`decode_columns`) takes a probability-weighted mean around the column's
mode: a sub-pixel y per column.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from ecgtrace import paper
from ecgtrace.models.backbone import register_model
from ecgtrace.models.unet import UNet
from ecgtrace.paper import CANONICAL, N_ROWS, Page

TRACE_HEAD = "trace"
#: Strip extent around a row's baseline (mV): taller excursions are clipped at the strip edge.
BAND_ABOVE_MV = 3.2
BAND_BELOW_MV = 2.6
#: Half-width (px) of the window around the column mode (or the path's span) used for the sub-pixel mean.
DECODE_RADIUS = 3
#: Path decoding: cost (nats of -log p) per pixel of vertical move between columns.
PATH_STEP_NATS = 0.05


@register_model("stage2")
def stage2_unet(encoder_name: str = "resnet18", decoder_channels: list[int] | tuple[int, ...] = (256, 128, 64, 32, 16),
                pretrained: bool = False, weights: str = "", **kwargs: Any) -> UNet:
    """U-Net with one ``trace`` head at full input resolution, CoordConv on."""
    kwargs.setdefault("seg_heads", {TRACE_HEAD: 1})
    kwargs.setdefault("coord_conv", True)
    return UNet(encoder_name=encoder_name, decoder_channels=decoder_channels, pretrained=pretrained,
                weights=weights, **kwargs)


def build_stage2(cfg: Any) -> UNet:
    """Stage 2 model from a :class:`ecgtrace.config.Config`.

    One decoder block per encoder skip plus one, so the head is at stride 1 (a trace is 2 px thick).
    """
    bb = cfg.MODEL.BACKBONE
    dec = list(cfg.MODEL.DECODER_CHANNELS)
    if len(dec) == 4:  # the shared default has 4 blocks (stride 2 on resnets): add one for full resolution
        dec = dec + [max(8, dec[-1] // 2)]
    return stage2_unet(encoder_name=bb.NAME, decoder_channels=dec, pretrained=bool(bb.PRETRAINED), weights=bb.WEIGHTS)


# --------------------------------------------------------------------------- strips
def strip_height(page: Page) -> int:
    """Pixel height of a row strip on ``page`` (a multiple of 8)."""
    h = (BAND_ABOVE_MV + BAND_BELOW_MV) * page.px_per_mv
    return int(np.ceil(h / 8.0) * 8)


def strip_top(page: Page, row: int) -> int:
    """Pixel y of the first strip row of ``row`` (may be negative near the page top)."""
    return int(np.floor(page.baseline_y(row) - BAND_ABOVE_MV * page.px_per_mv))


def row_strip(image: np.ndarray, page: Page, row: int) -> tuple[np.ndarray, int]:
    """The strip of ``row`` (H, W, 3), padded with the page's paper colour outside the image; and its top y."""
    h, w = image.shape[:2]
    top = strip_top(page, row)
    sh = strip_height(page)
    out = np.empty((sh, w, 3), np.uint8)
    out[:] = np.median(image[:: max(1, h // 64), :: max(1, w // 64)].reshape(-1, 3), axis=0).astype(np.uint8)
    a, b = max(0, top), min(h, top + sh)
    if b > a:
        out[a - top:b - top] = image[a:b]
    return out, top


def decode_columns(logits: torch.Tensor | np.ndarray, radius: int = DECODE_RADIUS) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) logits of one strip -> (sub-pixel y per column, confidence = probability mass near the mode)."""
    t = torch.as_tensor(logits).float()
    p = torch.softmax(t, dim=0)
    mode = p.argmax(dim=0)
    offs = torch.arange(-radius, radius + 1, device=p.device)
    idx = (mode[None, :] + offs[:, None]).clamp(0, p.shape[0] - 1)
    w = torch.gather(p, 0, idx)
    y = (w * idx.float()).sum(0) / w.sum(0).clamp_min(1e-8)
    return y.cpu().numpy().astype(np.float64), w.sum(0).cpu().numpy().astype(np.float64)


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
    from ecgtrace.stages.trace_classical import viterbi

    t = torch.as_tensor(logits).float()
    logp = torch.log_softmax(t, dim=0)
    cost = (-logp).cpu().numpy().astype(np.float64)
    step = np.full_like(cost, float(step_nats))
    for c in free_cols:  # the drawn jump sits on the switch column; wider, the path may jump early
        step[:, max(0, c - 1):c + 2] = 0.0
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


class Stage2Model:
    """A trained stage-2 network wrapped for inference on rectified pages."""

    def __init__(self, model: torch.nn.Module, page_size: tuple[int, int], device: str = "cpu",
                 tta: bool = True) -> None:
        self.model = model
        self.page_size = (int(page_size[0]), int(page_size[1]))
        self.device = device
        #: also read the strips mirrored in time and average the column probabilities (+0.3 dB on
        #: clean pages, twice the network time)
        self.tta = tta

    @torch.no_grad()
    def read_rows(self, rect_bgr: np.ndarray):
        """Per-row traces (:class:`ecgtrace.stages.trace_classical.RowTrace`) in ``rect_bgr`` px."""
        from ecgtrace.stages.trace_classical import ROW_KEYS, RowTrace
        from ecgtrace.train.augment import to_chw

        h0, w0 = rect_bgr.shape[:2]
        ph, pw = self.page_size
        img = rect_bgr if (h0, w0) == (ph, pw) else cv2.resize(rect_bgr, (pw, ph), interpolation=cv2.INTER_AREA)
        page = CANONICAL.scaled_to(pw)
        strips, tops = [], []
        for r in range(N_ROWS):
            s, top = row_strip(img, page, r)
            strips.append(to_chw(s))
            tops.append(top)
        x = torch.from_numpy(np.stack(strips)).to(self.device)
        out = self.model(x)[TRACE_HEAD][:, 0].float()
        if self.tta:
            flipped = self.model(torch.flip(x, [3]))[TRACE_HEAD][:, 0].float().flip(-1)
            out = torch.log((torch.softmax(out, 1) + torch.softmax(flipped, 1)) / 2 + 1e-12)
        x0 = int(np.ceil(float(page.time_to_x(0.0))))
        x1 = int(min(pw - 1, np.floor(float(page.time_to_x(paper.DURATION_S)))))
        xs = np.arange(x0, x1 + 1)
        sx, sy = w0 / pw, h0 / ph
        rows = {}
        switches = tuple(int(round(page.column_x(c))) for c in range(1, paper.N_COLUMNS))
        for r in range(N_ROWS):
            y, conf = decode_path(out[r], free_cols=switches if r < N_ROWS - 1 else ())
            y, conf = y[x0:x1 + 1], conf[x0:x1 + 1]
            hs = out.shape[1]
            clipped = (y <= 1) | (y >= hs - 2)
            # pixel centres: column c of the resized page covers input px [c * sx, (c + 1) * sx)
            rows[ROW_KEYS[r]] = RowTrace(key=ROW_KEYS[r], row=r, x=(xs + 0.5) * sx - 0.5,
                                         y=(y + tops[r] + 0.5) * sy - 0.5, ink=conf, clipped=clipped)
        return rows


def load_stage2(path: str | Path, device: str = "cpu") -> Stage2Model:
    """Load a ``stage2_*.pth`` checkpoint for inference."""
    from ecgtrace.errors import EcgTraceError
    from ecgtrace.train.checkpoint import config_from_checkpoint, load_model

    model, ckpt = load_model(path, device)
    if TRACE_HEAD not in set(getattr(model, "seg_heads", {}).keys()):
        raise EcgTraceError(f"{path} is not a stage-2 checkpoint (no '{TRACE_HEAD}' head); give a stage2_*.pth "
                            "from `ecgtrace train --stage 2`")
    cfg = config_from_checkpoint(ckpt)
    return Stage2Model(model, (int(cfg.MODEL.INPUT_SIZE[0]), int(cfg.MODEL.INPUT_SIZE[1])), device=device)
