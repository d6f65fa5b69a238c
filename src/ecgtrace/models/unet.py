"""A light U-Net over any timm encoder, with named segmentation and classification heads.

Every stage uses this network: stage 0 (lead-label markers + orientation),
stage 1 (grid points / line indices), stage 2 (trace rows). ``forward(x)``
returns a dict ``{head name: tensor}``: segmentation heads give logits of shape
(B, C, H / out_stride, W / out_stride), classification heads (B, C) from the
pooled deepest features.

The decoder upsamples to each skip's exact size, so any input size works (no
padding to a multiple of 32 is needed).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ecgtrace.models.backbone import build_encoder, register_model


class ConvBNReLU(nn.Sequential):
    """3x3 conv (no bias) + BatchNorm + ReLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class DecoderBlock(nn.Module):
    """Upsample to the skip's size, concatenate it (if any), two 3x3 convs."""

    def __init__(self, cin: int, cskip: int, cout: int) -> None:
        super().__init__()
        self.conv1 = ConvBNReLU(cin + cskip, cout)
        self.conv2 = ConvBNReLU(cout, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None, size: tuple[int, int]) -> torch.Tensor:
        x = F.interpolate(x, size=size, mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


def coord_channels(x: torch.Tensor) -> torch.Tensor:
    """Two channels with x and y in [-1, 1] (CoordConv), same batch/size/dtype as ``x``."""
    b, _, h, w = x.shape
    ys = torch.linspace(-1.0, 1.0, h, device=x.device, dtype=x.dtype).view(1, 1, h, 1).expand(b, 1, h, w)
    xs = torch.linspace(-1.0, 1.0, w, device=x.device, dtype=x.dtype).view(1, 1, 1, w).expand(b, 1, h, w)
    return torch.cat([xs, ys], dim=1)


def adaptive_avg_pool(x: torch.Tensor, n: int) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(x, n)`` as slices and means (the same bins, floor(i h / n) to ceil((i + 1) h / n)):
    torch's ONNX export refuses the adaptive pool when ``n`` does not divide the feature size."""
    h, w = int(x.shape[-2]), int(x.shape[-1])
    ys = [((i * h) // n, -(-(i + 1) * h // n)) for i in range(n)]
    xs = [((j * w) // n, -(-(j + 1) * w // n)) for j in range(n)]
    return torch.stack([torch.stack([x[..., y0:y1, x0:x1].mean(dim=(-2, -1)) for x0, x1 in xs], -1)
                        for y0, y1 in ys], -2)


class UNet(nn.Module):
    """timm encoder + U-Net decoder + named heads.

    Args:
        encoder_name: timm model name (``resnet18`` ...).
        decoder_channels: channels of each decoder block, deepest first. Block ``i``
            works at encoder stride ``s_max / 2**(i+1)``; blocks past the shallowest
            skip have no skip (e.g. a 5th block brings resnet18 to stride 1).
        seg_heads: name -> number of classes/channels of a per-pixel head.
        cls_heads: name -> number of classes of a per-image head (pooled deepest features).
        cls_pool: the deepest features are average-pooled to a ``cls_pool x cls_pool`` grid before the
            classification heads (1 = global pooling; 2 keeps a coarse layout, which page orientation needs).
        coord_conv: add two coordinate channels to the input.
        coord_heads: also give the segmentation heads the two coordinate channels. A head that
            classifies by absolute position (which grid line is this?) then needs only a linear
            function of x or y, instead of carrying coordinates through the whole network.
        pretrained, weights: see :func:`ecgtrace.models.backbone.build_encoder`.
        out_stride: seg logits are returned at input size / out_stride.
        in_chans: image channels (3).
    """

    def __init__(
        self,
        encoder_name: str = "resnet18",
        decoder_channels: list[int] | tuple[int, ...] = (256, 128, 64, 32),
        seg_heads: dict[str, int] | None = None,
        cls_heads: dict[str, int] | None = None,
        coord_conv: bool = False,
        pretrained: bool = False,
        weights: str = "",
        out_stride: int = 1,
        in_chans: int = 3,
        cls_pool: int = 1,
        coord_heads: bool = False,
    ) -> None:
        super().__init__()
        seg_heads = dict(seg_heads or {})
        cls_heads = dict(cls_heads or {})
        if not seg_heads and not cls_heads:
            raise ValueError("UNet needs at least one head (seg_heads or cls_heads)")
        if out_stride < 1:
            raise ValueError(f"out_stride must be >= 1, got {out_stride}")
        # What `ecgtrace check` needs to rebuild this exact network (no weights file: they come from the checkpoint).
        self.arch: dict[str, Any] = {
            "name": "unet",
            "kwargs": {
                "encoder_name": encoder_name,
                "decoder_channels": [int(c) for c in decoder_channels],
                "seg_heads": {k: int(v) for k, v in seg_heads.items()},
                "cls_heads": {k: int(v) for k, v in cls_heads.items()},
                "coord_conv": bool(coord_conv),
                "out_stride": int(out_stride),
                "in_chans": int(in_chans),
                "cls_pool": int(cls_pool),
                "coord_heads": bool(coord_heads),
            },
        }
        self.coord_conv = coord_conv
        if cls_pool < 1:
            raise ValueError(f"cls_pool must be >= 1, got {cls_pool}")
        self.cls_pool = int(cls_pool)
        self.out_stride = out_stride
        self.encoder = build_encoder(encoder_name, pretrained=pretrained, weights=weights,
                                     in_chans=in_chans + (2 if coord_conv else 0))
        chans = list(self.encoder.feature_info.channels())
        self.strides = list(self.encoder.feature_info.reduction())
        skips = chans[:-1][::-1]  # shallower features, deepest skip first
        blocks = []
        cin = chans[-1]
        for i, cout in enumerate(decoder_channels):
            cskip = skips[i] if i < len(skips) else 0
            blocks.append(DecoderBlock(cin, cskip, int(cout)))
            cin = int(cout)
        self.decoder = nn.ModuleList(blocks)
        self.final_stride = self.strides[-1] / 2 ** len(blocks) if blocks else self.strides[-1]
        if self.final_stride < 1:
            raise ValueError(f"{len(blocks)} decoder blocks go below stride 1 for {encoder_name} "
                             f"(deepest stride {self.strides[-1]}); use fewer decoder_channels")
        self.coord_heads = bool(coord_heads)
        feat = cin + (2 if self.coord_heads else 0)
        self.seg_heads = nn.ModuleDict({k: nn.Conv2d(feat, n, 3, padding=1) for k, n in seg_heads.items()})
        self.cls_heads = nn.ModuleDict({
            k: nn.Sequential(nn.Dropout(0.1), nn.Linear(chans[-1] * cls_pool * cls_pool, n))
            for k, n in cls_heads.items()
        })

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``{head: tensor}``; see the class docstring for shapes."""
        h, w = x.shape[-2:]
        inp = torch.cat([x, coord_channels(x)], dim=1) if self.coord_conv else x
        feats = self.encoder(inp)
        deepest = feats[-1]
        out: dict[str, torch.Tensor] = {}
        if self.seg_heads:
            skips = feats[:-1][::-1]
            y = deepest
            for i, block in enumerate(self.decoder):
                if i < len(skips):
                    skip, size = skips[i], skips[i].shape[-2:]
                else:  # past the shallowest skip: just double the size
                    skip, size = None, (y.shape[-2] * 2, y.shape[-1] * 2)
                y = block(y, skip, tuple(size))
            if self.coord_heads:
                y = torch.cat([y, coord_channels(y)], dim=1)
            oh, ow = max(1, h // self.out_stride), max(1, w // self.out_stride)
            for name, head in self.seg_heads.items():
                logits = head(y)
                if logits.shape[-2:] != (oh, ow):
                    logits = F.interpolate(logits, size=(oh, ow), mode="bilinear", align_corners=False)
                out[name] = logits
        if self.cls_heads:
            if self.cls_pool == 1:
                pooled = deepest.mean(dim=(2, 3))
            else:
                pooled = adaptive_avg_pool(deepest, self.cls_pool).flatten(1)
            for name, head in self.cls_heads.items():
                out[name] = head(pooled)
        return out


@register_model("unet")
def build_unet(**kwargs: Any) -> UNet:
    """Registry entry: ``create_model("unet", encoder_name=..., seg_heads=...)``."""
    return UNet(**kwargs)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
