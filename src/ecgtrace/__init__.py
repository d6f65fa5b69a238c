"""ecgtrace: turn pictures of 12-lead paper ECGs back into signals."""

from __future__ import annotations

__version__ = "0.1.0"

from ecgtrace.errors import EcgTraceError

__all__ = ["EcgTraceError", "__version__", "digitize", "Result", "Pipeline", "ECGModelLoader"]

_LAZY = {"digitize": "ecgtrace.pipeline", "Result": "ecgtrace.pipeline", "Pipeline": "ecgtrace.pipeline",
         "ECGModelLoader": "ecgtrace.stages.stage0"}


def __getattr__(name: str):
    # lazy: `import ecgtrace` stays light (no torch/OpenCV) until the pipeline is used
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ecgtrace' has no attribute {name!r}")
