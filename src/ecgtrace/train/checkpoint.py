"""Checkpoint files: naming, atomic writes, safe loading, diagnosis and rebuilding the model.

A checkpoint is a dict saved with ``torch.save``; the keys our users' guide
promises are ``epoch``, ``model_state_dict``, ``optimizer_state_dict``, ``loss``
and ``config``. We add what an exact resume and ``ecgtrace check`` need:
``scheduler_state_dict``, ``scaler_state_dict``, ``rng_state``, ``stage``,
``arch``, ``best_loss``, ``val_loss``, ``metrics``, ``history``, ``saved_at``.
Everything is stored as plain Python values and tensors so files load with
``torch.load(weights_only=True)`` (no arbitrary pickles are executed).
"""

from __future__ import annotations

import os
import random
import re
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ecgtrace.errors import EcgTraceError

FORMAT_VERSION = 1
#: Keys the seed guide promises in every .pth file.
GUIDE_KEYS = ("epoch", "model_state_dict", "optimizer_state_dict", "loss", "config")
#: Keys every checkpoint written by this engine has.
REQUIRED_KEYS = GUIDE_KEYS + ("scheduler_state_dict", "scaler_state_dict", "rng_state", "stage", "arch",
                              "best_loss", "val_loss", "metrics")

_EPOCH_RE = re.compile(r"stage(\d+)_epoch_(\d+)\.pth$")


# --- names -----------------------------------------------------------------------
def checkpoint_dir(output_root: str, stage: int) -> str:
    """``./outputs/stage0_checkpoints`` spelled as the guide spells it (keeps a leading ``./``)."""
    return os.path.join(output_root, f"stage{stage}_checkpoints")


def epoch_path(ckpt_dir: str, stage: int, epoch: int) -> str:
    return os.path.join(ckpt_dir, f"stage{stage}_epoch_{epoch}.pth")


def best_path(ckpt_dir: str, stage: int) -> str:
    return os.path.join(ckpt_dir, f"stage{stage}_best.pth")


def final_path(ckpt_dir: str, stage: int) -> str:
    return os.path.join(ckpt_dir, f"stage{stage}_final.pth")


def epoch_checkpoints(ckpt_dir: str | Path, stage: int | None = None) -> list[tuple[int, Path]]:
    """``[(epoch, path)]`` of the per-epoch files in ``ckpt_dir``, oldest epoch first."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        return []
    out = []
    for p in d.iterdir():
        m = _EPOCH_RE.search(p.name)
        if m and (stage is None or int(m.group(1)) == stage):
            out.append((int(m.group(2)), p))
    return sorted(out)


# --- RNG state as plain values ------------------------------------------------------
def get_rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU + CUDA) RNG states, as tensors/plain values (weights_only-safe)."""
    py = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": [int(py[0]), [int(v) for v in py[1]], py[2]],
        "numpy": {"name": str(np_name), "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
                  "pos": int(np_pos), "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned."""
    if not state:
        return
    if "python" in state:
        v, internal, gauss = state["python"]
        random.setstate((int(v), tuple(int(x) for x in internal), gauss))
    if "numpy" in state:
        n = state["numpy"]
        np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), int(n["pos"]), int(n["has_gauss"]),
                             float(n["cached_gaussian"])))
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        try:
            torch.cuda.set_rng_state_all(state["cuda"])
        except (RuntimeError, IndexError):  # a different number of GPUs: keep the fresh CUDA state
            pass


# --- write / read -------------------------------------------------------------------
def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` to ``path`` atomically (temp file in the same folder + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = dict(state)
    state.setdefault("format_version", FORMAT_VERSION)
    state.setdefault("saved_at", time.time())
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


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
    if "central directory" in msg or "failed reading zip" in msg or isinstance(err, (EOFError, zipfile.BadZipFile)):
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


# --- rebuilding the model ------------------------------------------------------------
def config_from_checkpoint(ckpt: dict[str, Any]):
    """The :class:`ecgtrace.config.Config` a checkpoint was trained with (unknown keys are dropped)."""
    from ecgtrace.config import Config, set_key
    from ecgtrace.config import _flatten  # noqa: PLC2701 - same package, the flattening rule must match

    raw = ckpt.get("config") or {}
    cfg = Config()
    for k, v in _flatten(raw).items():
        try:
            set_key(cfg, k, v)
        except (KeyError, ValueError):
            pass  # a key from a newer/older version; the rest still describes the run
    if "stage" in ckpt:
        cfg.STAGE = int(ckpt["stage"])
    return cfg


def build_model_from_checkpoint(ckpt: dict[str, Any]) -> torch.nn.Module:
    """A fresh (untrained) model with the architecture recorded in ``ckpt``."""
    arch = ckpt.get("arch") or {}
    if arch.get("name"):
        from ecgtrace.models.backbone import create_model

        return create_model(arch["name"], **dict(arch.get("kwargs") or {}))
    from ecgtrace.train.tasks import get_task

    cfg = config_from_checkpoint(ckpt)
    return get_task(cfg.STAGE).build_model(cfg)


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


def compare_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> StateDictReport:
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


def load_weights(model: torch.nn.Module, ckpt: dict[str, Any], what: str, fix: str) -> None:
    """Load ``ckpt``'s weights into ``model`` (strict); a mismatch is one line: ``what: <what differs>; fix``."""
    state = strip_module_prefix(ckpt["model_state_dict"])
    rep = compare_state_dict(model, state)
    if not rep.ok:
        raise EcgTraceError(f"{what}: {rep.summary()}; {fix}")
    model.load_state_dict(state, strict=True)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the model a checkpoint describes, load its weights (strict), eval mode. Returns (model, ckpt)."""
    ckpt = load_checkpoint(path, map_location="cpu")
    model = build_model_from_checkpoint(ckpt)
    load_weights(model, ckpt, f"{path}: architecture mismatch",
                 "the file does not belong to the architecture recorded with it")
    model.to(device).eval()
    return model, ckpt


def init_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Load the weights of checkpoint ``path`` into ``model`` (fine-tuning); a mismatch is a one-line error."""
    load_weights(model, load_checkpoint(path, map_location="cpu"), f"MODEL.INIT={path} does not fit this model",
                 "use the MODEL.* settings it was trained with (`ecgtrace check --test CKPT` prints them)")
