"""Keep freed memory in the process for the next picture instead of handing it back to the kernel.

glibc's malloc serves every block over 32 MB (a 200 dpi page in float32 colour is 45 MB) with a fresh
``mmap`` and unmaps it when it is freed, so each of the page-sized temporaries a picture goes through
(casts, blurs, borders, products) is faulted in page by page again: a cast of such a page took 24 ms
where the same cast into memory already held takes 11. Raising the mmap and trim thresholds keeps
those blocks on the heap for reuse. ECG-Image-Kit's pages: 1.66, 1.74, 1.65 s a picture end to end
without, 1.61, 1.55, 1.56 s with (runs in turn), the same outputs, peak memory 1.73 -> 1.82 GB
(``bench/bench_e2e.py --images ../shared/eik-dev --n 20``).

It changes how the whole process allocates, so :class:`ecgtrace.pipeline.Pipeline` asks for it once;
``ECGTRACE_MALLOC=system`` leaves the C library's own settings. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import os
import platform

from loguru import logger

#: ``ECGTRACE_MALLOC=system`` keeps the C library's defaults.
ENV = "ECGTRACE_MALLOC"
#: glibc's ``mallopt`` parameter numbers (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: Blocks up to this size come from the heap (the largest page a picture makes is well under it) ...
MMAP_THRESHOLD = 512 << 20
#: ... and this much free memory at the top of the heap is kept before any is returned.
TRIM_THRESHOLD = 1 << 30

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds (once a process); True where they are raised.

    False where ``ECGTRACE_MALLOC=system`` is set, or the C library is not glibc (macOS, Windows, musl).
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get(ENV, "").strip().lower() == "system":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        _applied = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD,
                                                                                              TRIM_THRESHOLD))
    except (OSError, AttributeError) as e:  # no mallopt: the defaults stay, only slower
        logger.debug(f"malloc thresholds left as they are: {e}")
    return _applied
