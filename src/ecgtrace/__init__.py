"""ecgtrace: turn pictures of 12-lead paper ECGs back into signals."""

from __future__ import annotations

__version__ = "0.1.0"

from ecgtrace.errors import EcgTraceError

__all__ = ["EcgTraceError", "__version__"]
