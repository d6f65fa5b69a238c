"""The stage-2 trace core shared by the classical and the learned reader, one module per job.

- :mod:`~ecgtrace.stages.trace.params`: :class:`ClassicalParams`, the tunable constants of the search.
- :mod:`~ecgtrace.stages.trace.ink`: the ink map (per-pixel trace-ink score, grid lines and long
  straight strokes removed), page furniture masked out, and the ink under a path read elsewhere.
- :mod:`~ecgtrace.stages.trace.path`: :class:`RowTrace`, the Viterbi path search through a row's
  cost band, and the sub-pixel centre line along it.
- :mod:`~ecgtrace.stages.trace.leads`: row paths to (time, mV), cut into the 12 leads at ``fs``.
- :mod:`~ecgtrace.stages.trace.row_start`: a row's first columns read past the calibration pulse's edge.
- :mod:`~ecgtrace.stages.trace.switch_marks`: the columns beside a lead-switch mark read again on the page's own ink.
- :mod:`~ecgtrace.stages.trace.quality`: per-lead quality flags of a set of row paths.

The classical reader that strings them together is :mod:`ecgtrace.stages.trace_classical`.
"""

from ecgtrace.stages.trace.ink import (LINE_VISIBLE, ink_map, ink_near_path, mask_furniture, path_ink_radius,
                                      trace_probability)
from ecgtrace.stages.trace.leads import EDGE_COLUMNS, cut_leads, lead_indices, resample_window, row_values
from ecgtrace.stages.trace.params import ClassicalParams
from ecgtrace.stages.trace.path import RUN_THRESHOLD, RowTrace, thin, viterbi
from ecgtrace.stages.trace.quality import RowPaths, quality_flags

__all__ = [
    "ClassicalParams",
    "EDGE_COLUMNS",
    "LINE_VISIBLE",
    "RUN_THRESHOLD",
    "RowPaths",
    "RowTrace",
    "cut_leads",
    "ink_map",
    "ink_near_path",
    "lead_indices",
    "mask_furniture",
    "path_ink_radius",
    "quality_flags",
    "resample_window",
    "row_values",
    "thin",
    "trace_probability",
    "viterbi",
]
