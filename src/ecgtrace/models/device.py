"""Which torch device to run on: the one resolver for inference, the seed-guide loader and training."""

from __future__ import annotations

import torch
from loguru import logger


def resolve_device(want: str | torch.device | None, what: str = "running") -> torch.device:
    """``want`` as a torch device; ``cuda`` without a visible GPU falls back to the CPU with one warning.

    ``None``/empty means the CPU. ``what`` names the job in the warning ("training", "stage 0").
    """
    name = str(want or "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        logger.warning(f"device {name} requested but no GPU is visible; {what} on the CPU")
        return torch.device("cpu")
    return torch.device(name)
