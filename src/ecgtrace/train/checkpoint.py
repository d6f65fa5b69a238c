"""Writing training checkpoints: naming, atomic saves, RNG state, fine-tuning starts.

Reading them for inference (safe loading, diagnosis, rebuilding the network, the
weights description) is :mod:`ecgtrace.models.checkpoint`; the trainer uses it too.

A checkpoint is a dict saved with ``torch.save``; the keys our users' guide
promises are ``epoch``, ``model_state_dict``, ``optimizer_state_dict``, ``loss``
and ``config``. We add what an exact resume and ``ecgtrace check`` need:
``scheduler_state_dict``, ``scaler_state_dict``, ``rng_state``, ``stage``,
``arch``, ``best_loss``, ``val_loss``, ``metrics``, ``history``, ``saved_at``.
Everything is stored as plain Python values and tensors so files load with
``torch.load(weights_only=True)`` (no arbitrary pickles are executed). Each file also
holds ``pretrained_cfg`` (:class:`ecgtrace.models.checkpoint.PretrainedCfg`): what
inference needs to use the weights, without the training config.
"""

from __future__ import annotations

import os
import random
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ecgtrace.config import Config, flatten, set_key
from ecgtrace.io import atomic_write
from ecgtrace.models.checkpoint import build_model, load_checkpoint, pretrained_cfg_of
from ecgtrace.models.shipped import load_init_weights
from ecgtrace.train.tasks import get_task

__all__ = ["load_checkpoint"]  # the resume path reads checkpoints with the inference reader

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
    """Write ``state`` to ``path`` atomically (temp file in the same folder + ``os.replace``), fsynced."""
    state = dict(state)
    state.setdefault("format_version", FORMAT_VERSION)
    state.setdefault("saved_at", time.time())
    with atomic_write(path) as tmp:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())


def build_model_from_checkpoint(ckpt: dict[str, Any]) -> torch.nn.Module:
    """A fresh (untrained) model of a checkpoint: its recorded architecture, else its task's builder.

    Only a network of a custom task records no architecture; its builder is training code.
    """
    cfg = pretrained_cfg_of(ckpt)
    if cfg.architecture:
        return build_model(cfg)
    config = Config()
    for k, v in flatten(ckpt.get("config") or {}).items():
        try:
            set_key(config, k, v)
        except (KeyError, ValueError):
            pass  # a key from a newer/older version; the rest still describes the run
    return get_task(int(ckpt.get("stage", config.STAGE))).build_model(config)


def init_weights(model: torch.nn.Module, path: str | Path, stage: int | None = None) -> Path:
    """Load ``MODEL.INIT`` into ``model`` (fine-tuning): a ``.pth`` checkpoint, an exported ``.safetensors``, or
    ``"shipped"`` (the weights that ship for ``stage``). Returns the file used; a mismatch is a one-line error."""
    return load_init_weights(model, str(path), stage)
