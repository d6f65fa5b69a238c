"""Ground truth that travels with every rendered image.

Everything is in pixel coordinates of the *final* image (after distortions),
and every geometric distortion moves all of it with the same point map, so
that targets for every stage can be made from it. Saved next to the image as
``{id}-{NNNN}.gt.npz``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from ecgtrace.io import atomic_write
from ecgtrace.paper import MARKERS

PointMap = Callable[[np.ndarray], np.ndarray]  # (N, 2) -> (N, 2), clean page -> image


@dataclass
class GroundTruth:
    """Exact geometry of one rendered page.

    Attributes:
        image_size: (h, w) of the final image.
        traces: key (lead name, or ``"II_rhythm"``) -> (N, 2) px polyline of the drawn trace.
        trace_times: same keys -> (N,) signal time in seconds of each polyline vertex.
        trace_mv: same keys -> (N,) value in mV that each vertex encodes (before clipping at the page edge).
        markers: (13, 2) label centres in :data:`ecgtrace.paper.MARKERS` order.
        grid_points: (M, 2) 5 mm grid intersections; ``grid_index`` (M, 2) int = (hline from top, vline from left).
        orientation: class 0..7 (see :mod:`ecgtrace.orient`) applied to the page.
        fwd_map: (gh, gw, 2) image position of the clean-page point (x, y) = (j, i) * ``map_stride``.
        map_stride: spacing of ``fwd_map`` in clean-page pixels.
        page_dpi: resolution the clean page was drawn at.
        variant: variant code, e.g. ``"0001"``.
        grid_visible: False when the variant draws no grid (points are still the paper's lattice).
    """

    image_size: tuple[int, int]
    traces: dict[str, np.ndarray]
    trace_times: dict[str, np.ndarray]
    trace_mv: dict[str, np.ndarray]
    markers: np.ndarray
    grid_points: np.ndarray
    grid_index: np.ndarray
    fwd_map: np.ndarray
    map_stride: int = 20
    orientation: int = 0
    page_dpi: float = 200.0
    variant: str = "0001"
    grid_visible: bool = True
    extra: dict = field(default_factory=dict)

    def transformed(self, point_map: PointMap, new_size: tuple[int, int], **changes) -> "GroundTruth":
        """Move every point through ``point_map`` (old image px -> new image px); returns a new object."""

        def mv(a: np.ndarray) -> np.ndarray:
            flat = np.asarray(a, dtype=np.float64).reshape(-1, 2)
            return np.asarray(point_map(flat), dtype=np.float64).reshape(a.shape)

        return replace(
            self,
            image_size=tuple(int(v) for v in new_size),
            traces={k: mv(v) for k, v in self.traces.items()},
            markers=mv(self.markers),
            grid_points=mv(self.grid_points),
            fwd_map=mv(self.fwd_map).astype(np.float32),
            **changes,
        )

    # -- persistence ---------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write to ``path`` (.npz) atomically."""
        path = Path(path)
        arrays: dict[str, np.ndarray] = {
            "image_size": np.asarray(self.image_size, dtype=np.int64),
            "markers": self.markers.astype(np.float32),
            "grid_points": self.grid_points.astype(np.float32),
            "grid_index": self.grid_index.astype(np.int16),
            "fwd_map": self.fwd_map.astype(np.float32),
            "meta": np.array([self.map_stride, self.orientation, self.page_dpi, float(self.grid_visible)]),
            "variant": np.array(self.variant),
            "trace_keys": np.array(list(self.traces.keys())),
        }
        for k in self.traces:
            arrays[f"trace/{k}"] = self.traces[k].astype(np.float32)
            arrays[f"time/{k}"] = self.trace_times[k].astype(np.float32)
            arrays[f"mv/{k}"] = self.trace_mv[k].astype(np.float32)
        for k, v in self.extra.items():
            arrays[f"extra/{k}"] = np.asarray(v)
        # through a file object: np.savez adds ".npz" to a file name that lacks it
        with atomic_write(path) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> "GroundTruth":
        """Read a ``.gt.npz`` written by :meth:`save`."""
        try:
            z = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read ground truth {path}: {e}; re-render it with `ecgtrace synth`") from e
        keys = [str(k) for k in z["trace_keys"]]
        stride, orient, dpi, grid_vis = z["meta"]
        return cls(
            image_size=tuple(int(v) for v in z["image_size"]),
            traces={k: z[f"trace/{k}"].astype(np.float64) for k in keys},
            trace_times={k: z[f"time/{k}"].astype(np.float64) for k in keys},
            trace_mv={k: z[f"mv/{k}"].astype(np.float64) for k in keys},
            markers=z["markers"].astype(np.float64),
            grid_points=z["grid_points"].astype(np.float64),
            grid_index=z["grid_index"].astype(np.int64),
            fwd_map=z["fwd_map"],
            map_stride=int(stride),
            orientation=int(orient),
            page_dpi=float(dpi),
            variant=str(z["variant"]),
            grid_visible=bool(grid_vis),
            extra={k.split("/", 1)[1]: z[k] for k in z.files if k.startswith("extra/")},
        )

    def marker_dict(self) -> dict[str, np.ndarray]:
        return {m: self.markers[i] for i, m in enumerate(MARKERS)}
