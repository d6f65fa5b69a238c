"""What a stage must provide to be trained by :func:`ecgtrace.train.engine.fit`.

Each stage module ``ecgtrace.train.stage{K}`` exposes ``TASK``, an object with:

- ``build_model(cfg) -> nn.Module`` (a :class:`ecgtrace.models.unet.UNet` records its
  architecture in ``.arch``, which goes into every checkpoint),
- ``build_datasets(cfg) -> (train_ds, val_ds | None)``; items are dicts of tensors
  with at least ``"image"`` (C, H, W) float; a dataset may have ``set_epoch(e)``
  (called before each epoch so on-the-fly randomness depends on the epoch only),
- ``loss(outputs, batch) -> (loss_tensor, {name: float})``,
- ``metrics(outputs, batch) -> {name: float}`` (means over the batch),
- optional ``collate(items) -> batch`` and ``debug_images(outputs, batch, out_dir)``.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol, runtime_checkable

from ecgtrace.errors import EcgTraceError

STAGES = (0, 1, 2)


@runtime_checkable
class Task(Protocol):
    """The interface :func:`ecgtrace.train.engine.fit` trains."""

    stage: int

    def build_model(self, cfg: Any) -> Any: ...

    def build_datasets(self, cfg: Any) -> tuple[Any, Any]: ...

    def loss(self, outputs: dict, batch: dict) -> tuple[Any, dict[str, float]]: ...

    def metrics(self, outputs: dict, batch: dict) -> dict[str, float]: ...


class StageNotAvailable(EcgTraceError):
    """The training module of a stage is not installed (not written yet)."""


def get_task(stage: int | str) -> Task:
    """Import ``ecgtrace.train.stage{K}`` and return its ``TASK``.

    ``stage`` may also be an import string ``"package.module:ATTR"`` (used by tests
    and by users who bring their own task).
    """
    if isinstance(stage, str) and ":" in stage:
        mod_name, attr = stage.split(":", 1)
        try:
            return getattr(importlib.import_module(mod_name), attr)
        except (ImportError, AttributeError) as e:
            raise EcgTraceError(f"cannot load task {stage!r}: {e}; give 'package.module:ATTR'") from e
    try:
        k = int(stage)
    except (TypeError, ValueError):
        raise EcgTraceError(f"unknown stage {stage!r}; use 0, 1 or 2") from None
    if k not in STAGES:
        raise EcgTraceError(f"unknown stage {k}; use 0, 1 or 2")
    name = f"ecgtrace.train.stage{k}"
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name == name:
            raise StageNotAvailable(f"stage {k} training is not available yet ({name} is not installed)") from e
        raise
    task = getattr(module, "TASK", None)
    if task is None:
        raise StageNotAvailable(f"stage {k} training is not available yet ({name} defines no TASK)")
    return task
