"""Stage 0 network: lead-label marker segmentation (14 classes) + page orientation (8 classes)."""

from __future__ import annotations

from typing import Any

from ecgtrace.models.backbone import register_model
from ecgtrace.models.unet import UNet
from ecgtrace.orient import N_ORIENTATIONS
from ecgtrace.paper import N_MARKER_CLASSES

#: Head names (also the keys of the model's output dict).
MARKER_HEAD = "markers"
ORIENT_HEAD = "orientation"


@register_model("stage0")
def stage0_unet(encoder_name: str = "resnet18", decoder_channels: list[int] | tuple[int, ...] = (256, 128, 64, 32),
                pretrained: bool = False, weights: str = "", **kwargs: Any) -> UNet:
    """U-Net with a 14-class ``markers`` head (background + 13 labels) and an 8-class ``orientation`` head."""
    kwargs.setdefault("seg_heads", {MARKER_HEAD: N_MARKER_CLASSES})
    kwargs.setdefault("cls_heads", {ORIENT_HEAD: N_ORIENTATIONS})
    kwargs.setdefault("cls_pool", 2)  # orientation needs coarse layout (where the traces/labels are)
    return UNet(encoder_name=encoder_name, decoder_channels=decoder_channels, pretrained=pretrained,
                weights=weights, **kwargs)


def build_stage0(cfg: Any) -> UNet:
    """Stage 0 model from a :class:`ecgtrace.config.Config` (``MODEL.BACKBONE.*``, ``MODEL.DECODER_CHANNELS``)."""
    bb = cfg.MODEL.BACKBONE
    return stage0_unet(encoder_name=bb.NAME, decoder_channels=list(cfg.MODEL.DECODER_CHANNELS),
                       pretrained=bool(bb.PRETRAINED), weights=bb.WEIGHTS)
