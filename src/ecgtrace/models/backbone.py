"""Encoders (timm ``features_only``) and a tiny model registry shared by every stage.

Nothing here downloads anything: ``pretrained`` weights must be a local file
(``MODEL.BACKBONE.WEIGHTS``). The registry lets a checkpoint name the builder
that made its model, so ``ecgtrace check`` can rebuild it without the task code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import timm
import torch
from loguru import logger
from timm.models import adapt_input_conv
from torch import nn

from ecgtrace.errors import EcgTraceError

#: name -> builder(**kwargs) -> nn.Module
MODEL_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: make ``builder`` available as :func:`create_model(name, **kwargs)`; a name registered twice warns."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in MODEL_REGISTRY and MODEL_REGISTRY[name] is not fn:
            logger.warning(f"model {name!r} registered twice; the later builder ({fn.__module__}) wins")
        MODEL_REGISTRY[name] = fn
        return fn

    return deco


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model by name (e.g. ``"unet"``)."""
    if name not in MODEL_REGISTRY:  # every builder registered when ecgtrace.models was imported
        raise EcgTraceError(f"unknown model {name!r}; known models: {', '.join(sorted(MODEL_REGISTRY))}")
    return MODEL_REGISTRY[name](**kwargs)


def list_encoders(pattern: str = "*") -> list[str]:
    """Encoder names timm can build (no weights needed), e.g. ``list_encoders('resnet*')``."""
    return list(timm.list_models(pattern))


def _unwrap_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """Find the tensor dict inside a saved object (plain state dict, or under a common key)."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model", "module"):
            if key in obj and isinstance(obj[key], dict):
                return _unwrap_state_dict(obj[key])
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    raise EcgTraceError("weights file holds no state dict of tensors; give a timm/torchvision encoder state dict")


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as e:  # pragma: no cover - safetensors ships with timm
            raise EcgTraceError(f"cannot read {path}: safetensors is not installed; pip install safetensors") from e
        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise EcgTraceError(f"cannot read encoder weights {path}: {type(e).__name__}: {e}; "
                            "check the file is a complete torch/safetensors state dict") from e
    return _unwrap_state_dict(obj)


def load_encoder_weights(encoder: nn.Module, path: str | Path) -> None:
    """Load a local state dict into ``encoder``; raise a one-line error if it does not fit.

    Classifier keys (``fc.*``, ``head.*``, ``classifier.*``) and common prefixes
    (``module.``, ``encoder.``, ``model.``) are ignored/stripped. Every encoder
    tensor must be present with the right shape, except the first convolution,
    which is adapted when the input channel count differs (timm's rule).
    """
    p = Path(path)
    if not p.is_file():
        raise EcgTraceError(f"encoder weights file {p} not found; set MODEL.BACKBONE.WEIGHTS to a local file "
                            "or MODEL.BACKBONE.PRETRAINED=False (nothing is downloaded)")
    src = _read_weights(p)
    cleaned: dict[str, torch.Tensor] = {}
    for k, v in src.items():
        for prefix in ("module.", "encoder.", "model.", "backbone."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        cleaned[k] = v
    own = encoder.state_dict()
    missing = [k for k in own if k not in cleaned]
    if len(missing) == len(own):
        raise EcgTraceError(f"encoder weights {p} share no tensor names with this encoder "
                            f"(first expected: {next(iter(own))}); is it for another architecture?")
    if missing:
        raise EcgTraceError(f"encoder weights {p} lack {len(missing)} tensors (e.g. {missing[0]}); "
                            "is it for another architecture?")
    out: dict[str, torch.Tensor] = {}
    for k, target in own.items():
        v = cleaned[k]
        if v.shape != target.shape:
            if v.ndim == 4 and target.ndim == 4 and v.shape[0] == target.shape[0] and v.shape[2:] == target.shape[2:]:
                v = adapt_input_conv(target.shape[1], v)  # a different number of input channels
            else:
                raise EcgTraceError(f"encoder weights {p}: tensor {k} has shape {tuple(v.shape)}, "
                                    f"the encoder needs {tuple(target.shape)}; is it for another architecture?")
        out[k] = v
    encoder.load_state_dict(out, strict=True)


def build_encoder(name: str, pretrained: bool = False, weights: str = "", in_chans: int = 3) -> nn.Module:
    """A timm encoder that returns a list of feature maps (``features_only=True``).

    Args:
        name: any timm model name with features_only support (``resnet18``, ``convnext_tiny`` ...).
        pretrained: load ``weights`` (a local file). Nothing is downloaded.
        weights: path of a local state dict (.pth/.pt/.safetensors); loaded whenever given.
        in_chans: input channels (3 for BGR/RGB, more with CoordConv).

    The returned module has ``feature_info`` (``channels()``, ``reduction()``).
    """
    if pretrained and not weights:
        raise EcgTraceError("MODEL.BACKBONE.PRETRAINED=True needs MODEL.BACKBONE.WEIGHTS=<local weights file>; "
                            "nothing is downloaded")
    try:
        enc = timm.create_model(name, features_only=True, pretrained=False, in_chans=in_chans)
    except RuntimeError as e:  # timm: "Unknown model (...)"
        raise EcgTraceError(f"cannot build encoder {name!r}: {e}; list names with "
                            "`python -c \"import timm; print(timm.list_models('resnet*'))\"`") from e
    if weights:
        load_encoder_weights(enc, weights)
    return enc
