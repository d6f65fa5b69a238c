"""Reading weights for inference: load a checkpoint safely, say what is wrong with it, rebuild its network.

Writing checkpoints (naming, atomic saves, RNG state, resume) is the trainer's job and
lives in :mod:`ecgtrace.train.checkpoint`; this module only reads them, so inference
never imports training code.

Every checkpoint written now carries a ``pretrained_cfg``: the weights described as
data (timm's ``pretrained_cfg``): the registered architecture and its arguments, the
input size, mean / std and channel order the network was trained on, and its head
names. Inference takes its preprocessing from there. Checkpoints from before it
existed get the same description derived from their ``arch`` and ``config`` entries
(:func:`pretrained_cfg_of`).

Inference-only files (``.safetensors``, written by ``ecgtrace export``; the weights that
ship with the package are such files) hold the fp16 weights and, in their metadata, the
same ``pretrained_cfg`` as JSON: a lone file describes itself. :func:`load_model` reads
both kinds.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ecgtrace.errors import EcgTraceError
from ecgtrace.models.backbone import create_model
from ecgtrace.models.preprocess import MEAN_RGB, STD_RGB

#: Key of the weights description in a checkpoint dict.
PRETRAINED_CFG_KEY = "pretrained_cfg"
#: Suffix of inference-only weights files (safetensors: plain tensors + string metadata, no pickle).
INFERENCE_SUFFIX = ".safetensors"
#: Suffix of networks exported for onnxruntime (``ecgtrace export --onnx``).
ONNX_SUFFIX = ".onnx"
#: Version of the metadata layout of the inference files this code writes.
INFERENCE_FORMAT = 1
#: ``MODEL.INPUT_SIZE`` of a config that does not say (the config default, for very old files).
_DEFAULT_INPUT_SIZE = (1152, 1440)


@dataclass(frozen=True)
class PretrainedCfg:
    """What inference needs to use a set of weights, recorded with them.

    Attributes:
        architecture: registered model name (:func:`ecgtrace.models.backbone.create_model`).
        arch_kwargs: the builder's arguments (no weights file: the weights come with this description).
        stage: the pipeline stage the network serves (0, 1 or 2), or None for a foreign task.
        input_size: (height, width) in px of the picture the network is fed (for stage 2, of the
            whole rectified page its row strips are cut from).
        mean, std: per-channel normalisation, in ``channel_order``, of pixel values in 0..1.
        channel_order: "RGB": the BGR picture is reversed before normalisation.
        interpolation: how the picture is resized to ``input_size`` ("area").
        heads: the names of the network's outputs.
    """

    architecture: str
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    stage: int | None = None
    input_size: tuple[int, int] = _DEFAULT_INPUT_SIZE
    mean: tuple[float, float, float] = tuple(float(v) for v in MEAN_RGB)  # type: ignore[assignment]
    std: tuple[float, float, float] = tuple(float(v) for v in STD_RGB)  # type: ignore[assignment]
    channel_order: str = "RGB"
    interpolation: str = "area"
    heads: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Plain values only, so a checkpoint holding it still loads with ``weights_only=True``."""
        d = asdict(self)
        d["input_size"] = [int(v) for v in self.input_size]
        d["mean"], d["std"], d["heads"] = list(self.mean), list(self.std), list(self.heads)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PretrainedCfg:
        """Inverse of :meth:`to_dict`; unknown keys (from a newer version) are ignored."""
        known = {f for f in cls.__dataclass_fields__}
        kw = {k: v for k, v in d.items() if k in known}
        for k in ("input_size", "mean", "std", "heads"):
            if k in kw:
                kw[k] = tuple(kw[k])
        kw["input_size"] = tuple(int(v) for v in kw.get("input_size", _DEFAULT_INPUT_SIZE))
        return cls(**kw)


def describe_weights(model: nn.Module, stage: int | None, input_size: tuple[int, int] | list[int]) -> PretrainedCfg:
    """The :class:`PretrainedCfg` of ``model`` (a network that records ``.arch``) trained at ``input_size``."""
    arch = getattr(model, "arch", None) or {}  # networks of custom tasks may record none
    kwargs = dict(arch.get("kwargs") or {})
    heads = tuple(kwargs.get("seg_heads", {})) + tuple(kwargs.get("cls_heads", {}))
    return PretrainedCfg(architecture=str(arch.get("name") or ""), arch_kwargs=kwargs,
                         stage=None if stage is None else int(stage),
                         input_size=(int(input_size[0]), int(input_size[1])), heads=heads)


def pretrained_cfg_of(ckpt: dict[str, Any]) -> PretrainedCfg:
    """The weights description of a checkpoint: its own, or derived from ``arch`` + ``config`` (older files)."""
    if isinstance(ckpt.get(PRETRAINED_CFG_KEY), dict):
        return PretrainedCfg.from_dict(ckpt[PRETRAINED_CFG_KEY])
    arch = ckpt.get("arch") or {}
    kwargs = dict(arch.get("kwargs") or {})
    model_cfg = (ckpt.get("config") or {}).get("MODEL") or {}
    size = model_cfg.get("INPUT_SIZE") or _DEFAULT_INPUT_SIZE
    stage = ckpt.get("stage")
    heads = tuple(kwargs.get("seg_heads", {})) + tuple(kwargs.get("cls_heads", {}))
    return PretrainedCfg(architecture=str(arch.get("name") or ""), arch_kwargs=kwargs,
                         stage=None if stage is None else int(stage),
                         input_size=(int(size[0]), int(size[1])), heads=heads)


# --- reading ------------------------------------------------------------------------------
def diagnose_load_error(path: Path, err: BaseException) -> str:
    """One line saying what is wrong with a checkpoint that would not load, and what to do."""
    size = path.stat().st_size if path.exists() else -1
    msg = f"{type(err).__name__}: {err}".splitlines()[0]
    if size == 0:
        return f"{path} is empty (0 bytes): the save was interrupted or the copy failed; use another checkpoint"
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        return f"{path} cannot be read ({e}); check the file permissions"
    if head[:2] != b"PK" and head[:1] != b"\x80":  # neither torch's zip format nor a legacy pickle
        return f"{path} is not a torch checkpoint (it starts with {head!r}); give a .pth written by `ecgtrace train`"
    # a zip whose end record is gone (cut short) fails in torch with varying messages (even EINVAL)
    cut_zip = head[:2] == b"PK" and not zipfile.is_zipfile(path)
    if (cut_zip or "central directory" in msg or "failed reading zip" in msg
            or isinstance(err, (EOFError, zipfile.BadZipFile))):
        return (f"{path} is truncated or corrupt ({size:,} bytes; {msg[:120]}); the copy or save did not finish: "
                "copy it again or use an earlier stage*_epoch_*.pth")
    if "Weights only load failed" in msg or "Unsupported global" in msg:
        return (f"{path} holds Python objects that are not plain tensors/values (not written by ecgtrace?); "
                "if you trust it, re-save its state dicts with plain torch.save")
    if "invalid load key" in msg or "magic number" in msg or "could not find MARK" in msg:
        return f"{path} is not a torch checkpoint ({msg[:100]}); give a .pth written by `ecgtrace train`"
    return f"{path} could not be loaded: {msg[:200]}"


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict; any failure becomes a one-line :class:`EcgTraceError` that says what to do."""
    p = Path(path)
    if not p.is_file():
        raise EcgTraceError(f"checkpoint {p} not found; list what exists with `ecgtrace check --list`")
    try:
        obj = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - every failure gets one diagnosis line
        raise EcgTraceError(diagnose_load_error(p, e)) from e
    if not isinstance(obj, dict):
        raise EcgTraceError(f"{p} holds a {type(obj).__name__}, not a checkpoint dict; "
                            "give a .pth written by `ecgtrace train`")
    if "model_state_dict" not in obj:
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise EcgTraceError(f"{p} is a bare state dict, not a training checkpoint (no epoch/config); "
                                "give a .pth written by `ecgtrace train`")
        raise EcgTraceError(f"{p} has no model_state_dict (keys: {', '.join(list(obj)[:8])}); "
                            "give a .pth written by `ecgtrace train`")
    return obj


def is_inference_file(path: str | Path) -> bool:
    """True for an inference-only weights file (``.safetensors``)."""
    return Path(path).suffix.lower() == INFERENCE_SUFFIX


def is_onnx_file(path: str | Path) -> bool:
    """True for a network exported for onnxruntime (``.onnx``)."""
    return Path(path).suffix.lower() == ONNX_SUFFIX


def read_inference_file(path: str | Path) -> dict[str, Any]:
    """Read a ``.safetensors`` weights file as a checkpoint-like dict; failures are one-line errors.

    Returns ``model_state_dict`` (floating tensors cast to float32: the file stores fp16),
    ``pretrained_cfg`` (from the file's metadata), ``epoch`` and ``metadata`` (all string entries).
    """
    p = Path(path)
    if not p.is_file():
        raise EcgTraceError(f"weights file {p} not found; export one with `ecgtrace export CKPT --out FILE`")
    try:
        from safetensors import safe_open

        with safe_open(str(p), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - every failure gets one diagnosis line
        size = p.stat().st_size
        msg = f"{e}".splitlines()[0][:120] if str(e) else type(e).__name__
        what = "is empty (0 bytes)" if size == 0 else f"is truncated or not a safetensors file ({size:,} bytes; {msg})"
        raise EcgTraceError(f"{p} {what}; copy it again or export it again with `ecgtrace export CKPT --out FILE`") from e
    if PRETRAINED_CFG_KEY not in meta:
        raise EcgTraceError(f"{p} is a safetensors file without a pretrained_cfg (not written by `ecgtrace export`); "
                            "export the training checkpoint with `ecgtrace export CKPT --out FILE`")
    try:
        cfg = json.loads(meta[PRETRAINED_CFG_KEY])
        PretrainedCfg.from_dict(cfg)
    except (ValueError, TypeError) as e:
        raise EcgTraceError(f"{p}: its pretrained_cfg metadata is not valid ({e}); export the checkpoint again") from e
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    return {"model_state_dict": state, PRETRAINED_CFG_KEY: cfg, "epoch": int(meta.get("epoch", 0) or 0),
            "stage": cfg.get("stage"), "metadata": meta}


def load_weights_file(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A training checkpoint (``.pth``, :func:`load_checkpoint`) or an inference file (:func:`read_inference_file`)."""
    return read_inference_file(path) if is_inference_file(path) else load_checkpoint(path, map_location)


def find_checkpoint(checkpoints: str | Path | None, stage: int) -> Path | None:
    """The ``stage{stage}_*.pth`` (or exported ``stage{stage}*.safetensors`` / ``.onnx``) to use from a folder
    (``*best*`` first, else the newest), or the file itself.

    None when ``checkpoints`` is None or the folder holds none for this stage.
    """
    if checkpoints is None:
        return None
    p = Path(checkpoints)
    if p.is_file():
        return p
    if not p.is_dir():
        raise EcgTraceError(f"checkpoint folder {p} not found; pass --checkpoints DIR holding stage{stage}_*.pth, "
                            "or leave it out")
    cands = sorted(p.glob(f"stage{stage}_*.pth")) + sorted(p.glob(f"stage{stage}_checkpoints/*.pth"))
    for suffix in (INFERENCE_SUFFIX, ONNX_SUFFIX):
        cands += sorted(p.glob(f"stage{stage}{suffix}")) + sorted(p.glob(f"stage{stage}_*{suffix}"))
    if not cands:
        return None
    best = [c for c in cands if "best" in c.name]
    return (best or sorted(cands, key=lambda c: c.stat().st_mtime))[-1]


# --- rebuilding and loading ------------------------------------------------------------------
def build_model(cfg: PretrainedCfg) -> nn.Module:
    """A fresh (untrained) network of the architecture ``cfg`` describes."""
    if not cfg.architecture:
        raise EcgTraceError("the checkpoint records no architecture (written by a custom task?); "
                            "rebuild it with the task that trained it")
    return create_model(cfg.architecture, **cfg.arch_kwargs)


@dataclass
class StateDictReport:
    """How well a state dict fits a model."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[tuple[str, tuple, tuple]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.shape_mismatch)

    def summary(self) -> str:
        parts = []
        if self.shape_mismatch:
            k, a, b = self.shape_mismatch[0]
            parts.append(f"{len(self.shape_mismatch)} tensors differ in shape (e.g. {k}: checkpoint {a} vs model {b})")
        if self.missing:
            parts.append(f"{len(self.missing)} model tensors missing from the checkpoint (e.g. {self.missing[0]})")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} checkpoint tensors the model does not have (e.g. {self.unexpected[0]})")
        return "; ".join(parts) or "all tensors match"


def compare_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> StateDictReport:
    """Missing / unexpected / wrongly shaped tensors between ``model`` and ``state``."""
    own = model.state_dict()
    rep = StateDictReport()
    for k, v in own.items():
        if k not in state:
            rep.missing.append(k)
        elif tuple(state[k].shape) != tuple(v.shape):
            rep.shape_mismatch.append((k, tuple(state[k].shape), tuple(v.shape)))
    rep.unexpected = [k for k in state if k not in own]
    return rep


def strip_module_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the ``module.`` prefix DDP/DataParallel adds (files saved from a wrapped model)."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def load_weights(model: nn.Module, ckpt: dict[str, Any], what: str, fix: str) -> None:
    """Load ``ckpt``'s weights into ``model`` (strict); a mismatch is one line: ``what: <what differs>; fix``."""
    state = strip_module_prefix(ckpt["model_state_dict"])
    rep = compare_state_dict(model, state)
    if not rep.ok:
        raise EcgTraceError(f"{what}: {rep.summary()}; {fix}")
    model.load_state_dict(state, strict=True)


@dataclass
class LoadedModel:
    """A network ready for inference, with the description of its weights."""

    model: nn.Module
    cfg: PretrainedCfg
    path: Path
    epoch: int = 0


def check_fits(path: str | Path, cfg: PretrainedCfg, stage: int | None, heads: tuple[str, ...]) -> None:
    """A one-line error when the weights ``cfg`` describes are of another stage than ``stage``, or lack a head."""
    if stage is not None and cfg.stage is not None and cfg.stage != stage:
        raise EcgTraceError(f"{path} is a stage {cfg.stage} checkpoint; give a stage {stage} checkpoint "
                            f"(outputs/stage{stage}_checkpoints/stage{stage}_best.pth)")
    if any(h not in cfg.heads for h in heads):
        raise EcgTraceError(f"{path} is not a stage-{stage} checkpoint (heads: {', '.join(cfg.heads) or 'none'}; "
                            f"needs {', '.join(heads)}); give a stage{stage}_*.pth from `ecgtrace train --stage {stage}`")


def load_model(path: str | Path, device: str | torch.device = "cpu", stage: int | None = None,
               heads: tuple[str, ...] = (), backend: str = "torch") -> LoadedModel:
    """Rebuild the network a checkpoint (``.pth``) or an exported ``.safetensors`` file describes,
    load its weights (strict), eval mode.

    ``stage`` / ``heads``: what the caller needs; a checkpoint of another stage, or one
    whose network lacks a head, is a one-line error that says which file to give.
    ``backend="onnx"`` (or an ``.onnx`` file) runs the network with onnxruntime
    (:mod:`ecgtrace.models.onnx_backend`).
    """
    if backend == "onnx" or is_onnx_file(path):
        from ecgtrace.models.onnx_backend import load_onnx_model

        return load_onnx_model(path, str(device), stage, heads)
    ckpt = load_weights_file(path, map_location="cpu")
    cfg = pretrained_cfg_of(ckpt)
    check_fits(path, cfg, stage, heads)
    model = build_model(cfg)
    load_weights(model, ckpt, f"{path}: architecture mismatch",
                 "the file does not belong to the architecture recorded with it")
    model.to(device).eval()
    return LoadedModel(model=model, cfg=cfg, path=Path(path), epoch=int(ckpt.get("epoch", 0) or 0))
