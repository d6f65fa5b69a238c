"""Per-step wall and CPU time inside the stages, for profiles (``bench/bench_e2e.py --profile``).

The stages mark their costly steps with ``with step("ink map"): ...``. Nothing is recorded
unless a caller opened :func:`recording`, so the marks cost one context-variable look-up in
normal runs. Steps nest: a step opened inside another is recorded as ``outer/inner``, so a
profile reads as a tree (``stage1/detect/features``). The CPU time is the process's, all threads
together: CPU over wall time says how many cores a step kept busy (on two cores, a step near 1 is
one that runs on one of them alone).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field


@dataclass
class StepTimes:
    """Wall seconds, process CPU seconds and call counts per step path (``outer/inner``), in first-seen order."""

    seconds: dict[str, float] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    _stack: list[str] = field(default_factory=list, repr=False)

    def add(self, name: str, dt: float, dcpu: float = 0.0) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + dt
        self.calls[name] = self.calls.get(name, 0) + 1
        self.cpu[name] = self.cpu.get(name, 0.0) + dcpu


_ACTIVE: ContextVar[StepTimes | None] = ContextVar("ecgtrace_steps", default=None)


@contextmanager
def recording() -> Iterator[StepTimes]:
    """Record every :func:`step` opened inside this block (in this thread / context)."""
    times = StepTimes()
    token = _ACTIVE.set(times)
    try:
        yield times
    finally:
        _ACTIVE.reset(token)


@contextmanager
def step(name: str) -> Iterator[None]:
    """Time the block as step ``name`` (nested under the steps open around it) when recording."""
    times = _ACTIVE.get()
    if times is None:
        yield
        return
    path = "/".join([*times._stack, name])
    times._stack.append(name)
    t, c = time.perf_counter(), time.process_time()
    try:
        yield
    finally:
        times._stack.pop()
        times.add(path, time.perf_counter() - t, time.process_time() - c)
