"""Many pictures on one machine: a pool of worker processes, each building its pipeline once.

``run_pool(tasks, work, init, init_args, workers=N)`` yields ``(index, Outcome)`` as the
tasks finish. Every worker runs ``state = init(*init_args)`` once (the pipeline, its
models), then ``work(state, task)`` for one task at a time, so the parent always knows
which task a worker holds: a task that raises is reported as that task's failure, and a
worker that dies under a task (killed, out of memory, a crash in native code) is reported
as a failure of that task alone and replaced; the rest of the batch goes on. Workers are
started with ``spawn`` (no inherited threads or locks) and each runs
``max(1, cores // N)`` threads (torch, OpenCV, OpenMP), so N workers share the cores
instead of fighting over them.

With ``workers=1`` the tasks run in this process, in order, exactly as a plain loop would.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

from loguru import logger

from ecgtrace.errors import EcgTraceError


@dataclass
class Outcome:
    """What became of one task: ``ok`` with ``value``, or not with ``error`` (one line first)."""

    ok: bool
    value: Any = None
    error: str = ""


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """Threads each of ``workers`` processes runs so that together they use the cores once."""
    return max(1, (cores or available_cores()) // max(1, workers))


#: Thread-count variables the numeric libraries read when they load.
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def set_threads(n: int) -> None:
    """Limit this process's compute threads: torch's intra-op pool and OpenCV's (the libraries that read
    :data:`THREAD_VARS` have read them when they loaded: a worker gets them in its environment)."""
    import cv2
    import torch

    torch.set_num_threads(n)
    cv2.setNumThreads(n)


@contextmanager
def _environment(**values: str) -> Iterator[None]:
    """``os.environ`` with ``values`` while a child process is started (it copies the environment)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def build_pipeline(checkpoints: str | None, kwargs: dict[str, Any]) -> Any:
    """``Pipeline(checkpoints, **kwargs)``: the per-worker state of the batch commands."""
    from ecgtrace.pipeline import Pipeline

    return Pipeline(checkpoints, **kwargs)


def error_text(e: BaseException) -> str:
    """A failure as the batch commands report it: our own errors by their message, others by type too."""
    return str(e) if isinstance(e, EcgTraceError) else f"{type(e).__name__}: {e}"


def _worker_main(conn: Connection, init: Callable, init_args: tuple, work: Callable, threads: int) -> None:
    """A worker: build the state once, then answer (index, task) messages until told to stop (None)."""
    set_threads(threads)
    logger.remove()  # as the command line sets it up (a spawned process starts with loguru's default)
    logger.add(sys.stderr, format="[{time:HH:mm:ss}] {message}", level=os.environ.get("ECGTRACE_LOG", "INFO"))
    try:
        state = init(*init_args)
    except Exception as e:  # noqa: BLE001 - handed to the parent, which raises it
        conn.send(("init_failed", error_text(e)))
        return
    conn.send(("ready", None))
    while True:
        msg = conn.recv()
        if msg is None:
            return
        index, task = msg
        try:
            out = Outcome(True, work(state, task))
        except Exception as e:  # noqa: BLE001 - one bad picture never stops the batch
            out = Outcome(False, error=error_text(e))
        conn.send((index, out))


class _Worker:
    """One worker process and the task it holds."""

    def __init__(self, ctx: Any, init: Callable, init_args: tuple, work: Callable, threads: int) -> None:
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, init, init_args, work, threads), daemon=True)
        with _environment(**{k: str(threads) for k in THREAD_VARS}):
            self.proc.start()
        child.close()
        self.ready = False
        self.index: int | None = None  # the task it holds

    def give(self, index: int, task: Any) -> bool:
        """Hand the worker a task; False if it can no longer take one (it died)."""
        try:
            self.conn.send((index, task))
        except (OSError, EOFError):
            return False
        self.index = index
        return True

    def receive(self) -> tuple | None:
        """The worker's next message, or None when its end of the pipe is closed (it died)."""
        try:
            return self.conn.recv()
        except (OSError, EOFError):
            return None

    def reap(self) -> int | None:
        """Wait for a dying worker to end; its exit code."""
        self.proc.join(timeout=10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()
        return self.proc.exitcode

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except (OSError, EOFError):
            pass
        self.reap()


def run_pool(tasks: Sequence[Any], work: Callable[[Any, Any], Any], init: Callable[..., Any],
             init_args: tuple = (), workers: int = 1, raise_errors: bool = False) -> Iterator[tuple[int, Outcome]]:
    """Run ``work(state, task)`` for every task, ``state = init(*init_args)`` built once per worker.

    Yields ``(task index, Outcome)`` as tasks finish (in order when ``workers == 1``). ``init``,
    ``work`` and the tasks must be picklable (module-level functions, plain data) when
    ``workers > 1``. An ``init`` that fails raises its error (:class:`EcgTraceError` with its
    message from a worker). ``raise_errors`` (one worker only: ``--debug``) lets a task's error
    propagate with its traceback instead of reporting it.
    """
    if workers <= 1 or len(tasks) <= 1:
        state = init(*init_args)
        for i, task in enumerate(tasks):
            try:
                value = work(state, task)
            except Exception as e:  # noqa: BLE001 - one bad picture never stops the batch
                if raise_errors:
                    raise
                yield i, Outcome(False, error=error_text(e))
            else:
                yield i, Outcome(True, value)
        return
    ctx = mp.get_context("spawn")
    n = min(workers, len(tasks))
    threads = threads_per_worker(n)
    todo = list(range(len(tasks)))[::-1]  # popped from the end: the first task first
    pool = [_Worker(ctx, init, init_args, work, threads) for _ in range(n)]
    logger.debug(f"{n} worker processes, {threads} thread(s) each")

    def hand_out(w: _Worker) -> None:
        if todo and not w.give(todo[-1], tasks[todo[-1]]):
            return  # it died: the death is handled when its process ends
        if todo:
            todo.pop()

    try:
        while todo or any(w.index is not None for w in pool):
            ready = set(wait([w.conn for w in pool] + [w.proc.sentinel for w in pool]))
            for w in list(pool):
                if w.conn in ready:
                    msg = w.receive()
                    if msg is not None:
                        if msg[0] == "init_failed":
                            raise EcgTraceError(msg[1])
                        if msg[0] == "ready":
                            w.ready = True
                        else:
                            w.index = None
                            yield msg
                        hand_out(w)
                        continue
                elif w.proc.sentinel not in ready:
                    continue
                # the pipe closed or the process ended: it died (under its task, if it held one)
                code = w.reap()
                pool.remove(w)
                if w.index is not None:
                    yield w.index, Outcome(False, error=f"the worker process died (exit code {code}) on this picture")
                elif not w.ready:
                    raise EcgTraceError(f"a worker process died while starting (exit code {code})")
                if todo:
                    nw = _Worker(ctx, init, init_args, work, threads)
                    pool.append(nw)
    finally:
        for w in pool:
            w.stop()
