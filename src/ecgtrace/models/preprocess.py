"""Picture -> network input: the one conversion every stage's network, trained or shipped, is fed by.

A weights description (:class:`ecgtrace.models.checkpoint.PretrainedCfg`) records the
mean, std and channel order its network saw in training; inference reads them from
there, never from a training config (timm's ``resolve_model_data_config`` idea).
"""

from __future__ import annotations

import cv2
import numpy as np

#: ImageNet statistics in RGB order (what timm encoders expect, pretrained or not).
MEAN_RGB = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD_RGB = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def to_chw(image_bgr: np.ndarray, mean: np.ndarray | tuple[float, ...] = MEAN_RGB,
           std: np.ndarray | tuple[float, ...] = STD_RGB) -> np.ndarray:
    """BGR uint8 (H, W, 3) -> normalized RGB float32 (3, H, W), the network input."""
    if image_bgr.ndim == 2:
        image_bgr = cv2.cvtColor(image_bgr, cv2.COLOR_GRAY2BGR)
    mean = np.asarray(mean, dtype=np.float32)
    std = np.asarray(std, dtype=np.float32)
    rgb = image_bgr[..., 2::-1].astype(np.float32) / 255.0
    return np.ascontiguousarray(((rgb - mean) / std).transpose(2, 0, 1))


def from_chw(x: np.ndarray, mean: np.ndarray | tuple[float, ...] = MEAN_RGB,
             std: np.ndarray | tuple[float, ...] = STD_RGB) -> np.ndarray:
    """Inverse of :func:`to_chw` (for debug pictures)."""
    rgb = x.transpose(1, 2, 0) * np.asarray(std, dtype=np.float32) + np.asarray(mean, dtype=np.float32)
    return np.clip(rgb[..., ::-1] * 255.0, 0, 255).astype(np.uint8)


def resize_to_input(image_bgr: np.ndarray, input_hw: tuple[int, int]) -> np.ndarray:
    """``image_bgr`` at the network's (h, w) input size (area interpolation, as in training); unchanged if it fits."""
    h, w = int(input_hw[0]), int(input_hw[1])
    if image_bgr.shape[:2] == (h, w):
        return image_bgr
    return cv2.resize(image_bgr, (w, h), interpolation=cv2.INTER_AREA)
