"""Plain objects the stages hand to each other.

Stages never reach into each other's internals: stage 0 returns a
:class:`NormalizedPage`, stage 1 a :class:`RectifiedPage`, stage 2
:class:`LeadSignals`. Each carries the transform that produced it so that the
pipeline can map any point back to the original photo.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from ecgtrace.errors import StageError

if TYPE_CHECKING:  # the grid module builds on these types; only the annotation needs it
    from ecgtrace.stages.grid_classical import GridDetection

__all__ = ["LeadSignals", "NormalizedPage", "RectifiedPage", "StageError"]


@dataclass
class NormalizedPage:
    """Stage 0 output: the page upright and warped to the canonical page size.

    ``homography`` maps original-image pixels (x, y, 1) to normalized-page pixels
    (orientation included); ``None`` only when stage 0 was skipped.
    """

    image: np.ndarray
    homography: np.ndarray
    orientation: int = 0
    orientation_confidence: float = 1.0
    markers: dict[str, np.ndarray] = field(default_factory=dict)  # detected label centres, original px
    method: str = "identity"  # "model", "classical" or "identity"
    ok: bool = True
    message: str = ""


@dataclass
class RectifiedPage:
    """Stage 1 output: a page whose 5 mm grid is the perfect lattice of :class:`ecgtrace.paper.Page`.

    ``map_xy`` (H, W, 2) float32 gives, for every rectified pixel, its (x, y) in
    the stage-1 input (the normalized page): ``cv2.remap(input, map_xy[..., 0], map_xy[..., 1])``
    reproduces ``image``.
    """

    image: np.ndarray
    map_xy: np.ndarray
    grid_error_px: float = float("nan")  # residual of the lattice fit, canonical px
    confidence: float = 1.0
    method: str = "identity"
    ok: bool = True
    message: str = ""
    detection: GridDetection | None = field(default=None, repr=False)  # the grid nodes found (overlays, benches)
    #: a page passed through because its lattice was unsure: what makes the rectification by that lattice,
    #: for a reader that finds (almost) nothing on the page as it is (:class:`ecgtrace.pipeline.Pipeline`)
    unsure_rectify: Callable[[], RectifiedPage] | None = field(default=None, repr=False)

    @cached_property
    def unsure_lattice(self) -> RectifiedPage | None:
        """The page rectified by the lattice stage 1 doubted (made on first use), or None when there is none."""
        return None if self.unsure_rectify is None else self.unsure_rectify()


@dataclass
class LeadSignals:
    """Stage 2 output: the 12 leads in mV, plus where they were read on the rectified page."""

    signals: dict[str, np.ndarray]  # lead -> (n,) mV; the rhythm strip replaces lead II when present
    fs: float
    traces_px: dict[str, np.ndarray] = field(default_factory=dict)  # row key -> (N, 2) rectified px
    quality: dict[str, str] = field(default_factory=dict)  # lead -> "ok" / short reason
    method: str = "classical"
