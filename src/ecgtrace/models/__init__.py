"""The networks of the three stages, and how their weights are read for inference.

Importing the package imports every model module, so the registry of
:func:`ecgtrace.models.backbone.create_model` is complete (timm's rule).
"""

from ecgtrace.models import stage0, stage1, stage2, unet  # noqa: F401  (registers the builders)
from ecgtrace.models.backbone import MODEL_REGISTRY, create_model, register_model

__all__ = ["MODEL_REGISTRY", "create_model", "register_model"]
