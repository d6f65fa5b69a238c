"""The last results computed from a page's pixels, handed out again when the same pixels come back.

Steps of one picture read the same page more than once (stage 1 registers its page by the ink and
the calibration pulses that stage 2 and the pulse fallback read again). Each memo keeps a copy of
the page with each result, so a hit depends on the pixels alone: any other or changed picture is
a miss, never a stale result.
"""

from __future__ import annotations

import copy
import threading
from typing import Generic, TypeVar

import numpy as np

T = TypeVar("T")


class PageMemo(Generic[T]):
    """The results of the last ``size`` pages (newest last); ``get`` returns a deep copy (callers may
    write into theirs)."""

    def __init__(self, size: int = 2) -> None:
        self._lock = threading.Lock()
        self._size = size
        self._items: list[tuple[np.ndarray, object, T]] = []

    def get(self, page: np.ndarray, key: object = None) -> T | None:
        """The result kept for these pixels (and ``key``, e.g. the parameters it was made with), or None."""
        with self._lock:
            for i, (kept, k, result) in enumerate(self._items):
                if k == key and kept.shape == page.shape and kept.dtype == page.dtype and np.array_equal(kept, page):
                    self._items.append(self._items.pop(i))
                    return copy.deepcopy(result)
        return None

    def put(self, page: np.ndarray, result: T, key: object = None) -> None:
        """Keep ``result`` for these pixels (a copy of both), dropping the oldest beyond ``size``."""
        with self._lock:
            self._items.append((page.copy(), key, copy.deepcopy(result)))
            del self._items[:-self._size]
