"""Many pictures on many machines: the batch commands' tasks run by Ray (``--engine ray``).

``run_ray(tasks, work, init, init_args, workers=N, batch_size=K, address=ADDR)`` yields
``(index, Outcome)`` like :func:`ecgtrace.batch.run_pool`, so ``digitize`` and ``predict``
handle its results exactly as on one machine. Ray is imported only here and only when
asked for (``pip install 'ecgtrace[ray]'``).

How the work is spread:

* One Ray actor per worker (``workers``, default one per CPU of the cluster), each holding
  one CPU and running one compute thread: it builds ``state = init(*init_args)`` once (the
  pipeline and its models), then runs batches of tasks. Each batch of up to ``batch_size``
  pictures is one Ray (actor) task; every worker holds one batch at a time, so the driver
  always knows which pictures a worker has.
* A picture that fails inside a batch is reported as that picture's failure and the rest of
  the batch goes on (the same error text as on one machine).
* A worker that dies (killed, out of memory, its node lost) fails its batch: a batch of one
  picture is reported as that picture's failure; the pictures of a longer batch are run
  again one per batch, so that only the picture a worker dies on is reported. A new worker
  replaces the dead one while work remains. A worker that cannot build its state (or dies
  while doing so) stops the run with its error, as on one machine.

What travels: the workers do not read the driver's files. The commands give ``pack``, which
runs on the driver just before a batch is sent and turns a task into what travels
(:func:`ship_picture`: the picture's bytes with its task); the worker writes the bytes to a
temporary file and works on that (:func:`unpacked`), and the commands write every output on
the driver. So a cluster needs no shared storage for the pictures or the results, only the
same ``ecgtrace`` (and the weights it ships) installed on every node; ``--checkpoints DIR``
is read by the workers, so a folder of checkpoints has to be at the same path on every node.

Where Ray runs: ``address`` (``--ray-address``), else ``RAY_ADDRESS``, else a Ray instance
started on this machine for the run (``num_cpus`` = ``workers`` or the cores here, bound to
the loopback interface when Ray is first imported here) and stopped after it. ``auto``
connects to the cluster ``ray start`` made on this machine; ``ray://HEAD:10001`` goes through
the Ray client. When Ray is already initialised in this process (a notebook, a test), that
connection is used and left open.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loguru import logger

from ecgtrace.batch import Outcome, available_cores, error_text, set_threads
from ecgtrace.errors import EcgTraceError

RAY_MISSING = "--engine ray needs Ray: pip install 'ecgtrace[ray]'"

#: The most pictures one Ray task carries when ``batch_size`` is not given.
MAX_AUTO_BATCH = 8


def import_ray(address: str | None = None) -> Any:
    """The ``ray`` module, or one clear line saying how to install it. Without an ``address`` (or
    ``RAY_ADDRESS``) the run starts a Ray instance of its own: on the loopback interface only (Ray reads
    this setting when it is first imported)."""
    if not (address or os.environ.get("RAY_ADDRESS")):
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ImportError:
        raise EcgTraceError(RAY_MISSING) from None
    return ray


def auto_batch_size(n_tasks: int, workers: int) -> int:
    """Pictures per Ray task: at least 4 batches per worker (so they finish together), at most 8 pictures."""
    return max(1, min(MAX_AUTO_BATCH, n_tasks // (4 * max(1, workers))))


# --------------------------------------------------------------------------- what travels
@dataclass
class Shipped:
    """A task with its picture's bytes: what a worker without the driver's files needs."""

    task: Any
    data: bytes
    filename: str  # the picture's file name (kept: its suffix, and messages that name it)
    source: str  # the path on the driver, as given: error messages name it, not the worker's copy


def ship_picture(task: Any, path: str | Path) -> Shipped:
    """``task`` with the bytes of ``path``, read on the driver. A missing, empty or non-file picture raises the
    error one machine gives for it (:func:`ecgtrace.io.read_image`), so it is reported before it travels."""
    from ecgtrace import io

    p = Path(path)
    if not p.is_file() or p.stat().st_size == 0:
        io.read_image(p)  # raises: not found / a folder / empty
    return Shipped(task, p.read_bytes(), p.name, str(path))


@contextmanager
def unpacked(shipped: Shipped) -> Iterator[Path]:
    """On a worker: the shipped picture as a temporary file (removed afterwards). An error raised inside names
    the driver's path, as the same error on one machine does."""
    with tempfile.TemporaryDirectory(prefix="ecgtrace-ray-") as tmp:
        local = Path(tmp) / shipped.filename
        local.write_bytes(shipped.data)
        try:
            yield local
        except Exception as e:  # noqa: BLE001 - re-raised with the driver's path in its message
            raise EcgTraceError(error_text(e).replace(str(local), shipped.source)) from e


# --------------------------------------------------------------------------- the workers
class _RayWorker:
    """One worker: its state built once, then batches of ``(index, task)``. Made a Ray actor by :func:`run_ray`."""

    def __init__(self, init: Callable, init_args: tuple, work: Callable, threads: int) -> None:
        set_threads(threads)
        logger.remove()  # as the command line sets it up
        logger.add(sys.stderr, format="[{time:HH:mm:ss}] {message}", level=os.environ.get("ECGTRACE_LOG", "INFO"))
        self.work = work
        self.error: str | None = None
        try:
            self.state = init(*init_args)
        except Exception as e:  # noqa: BLE001 - handed to the driver, which raises it
            self.error = error_text(e)

    def ready(self) -> str | None:
        """None once the state is built, else the error that stopped it."""
        return self.error

    def run(self, batch: list[tuple[int, Any]]) -> list[tuple[int, Outcome]]:
        out = []
        for index, task in batch:
            try:
                out.append((index, Outcome(True, self.work(self.state, task))))
            except Exception as e:  # noqa: BLE001 - one bad picture never stops the batch
                out.append((index, Outcome(False, error=error_text(e))))
        return out


def _died(e: BaseException) -> str:
    """A short reason for a dead worker, from Ray's (long) error."""
    text = str(e)
    for line in text.splitlines():
        if "Worker exit detail:" in line:
            detail = line.split("Worker exit detail:", 1)[1].strip()
            return f"{type(e).__name__}: {detail.split('. ')[0]}"
    return f"{type(e).__name__}: {text.splitlines()[0] if text else 'no reason given'}"


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """One line, at once, when nothing answers at a ``HOST:PORT`` or ``ray://HOST:PORT`` address (Ray itself
    retries for minutes). Other forms (``auto``, ``local``) are left to Ray."""
    import socket

    rest = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise EcgTraceError(f"could not connect to the Ray cluster at {address}: nothing answers at "
                            f"{host}:{port} ({e.strerror or e})") from None


@contextmanager
def connected(address: str | None, workers: int | None) -> Iterator[Any]:
    """Ray, connected as the module docstring says; disconnected afterwards if connected here."""
    ray = import_ray(address)
    if ray.is_initialized():
        yield ray
        return
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING}
    if address == "local":
        kwargs.update(num_cpus=workers or available_cores(), include_dashboard=False)
    else:
        check_reachable(address)
    try:
        ray.init(address=address, **kwargs)
    except Exception as e:  # noqa: BLE001 - any failure to reach Ray is one line
        where = "start a local Ray instance" if address == "local" else f"connect to the Ray cluster at {address}"
        raise EcgTraceError(f"could not {where}: {error_text(e).splitlines()[0]}") from e
    try:
        yield ray
    finally:
        ray.shutdown()


def run_ray(tasks: Sequence[Any], work: Callable[[Any, Any], Any], init: Callable[..., Any],
            init_args: tuple = (), workers: int | None = None, batch_size: int | None = None,
            address: str | None = None, pack: Callable[[Any], Any] | None = None) -> Iterator[tuple[int, Outcome]]:
    """Run ``work(state, pack(task))`` for every task on Ray workers, ``state = init(*init_args)`` built once per
    worker; yields ``(task index, Outcome)`` as batches finish (a batch's tasks in order).

    ``workers``: Ray actors (default: one per CPU of the cluster). ``batch_size``: tasks per Ray task (default
    :func:`auto_batch_size`). ``pack`` runs on the driver as a batch is sent (a task it fails on is reported as
    that task's failure). ``init``, ``work`` and what ``pack`` returns must be picklable and importable on the
    workers (module-level functions of ``ecgtrace``, plain data). An ``init`` that fails raises its error.
    """
    if workers is not None and workers < 1:
        raise EcgTraceError(f"--workers must be at least 1, got {workers}")
    if batch_size is not None and batch_size < 1:
        raise EcgTraceError(f"--batch-size must be at least 1, got {batch_size}")
    if not tasks:
        return
    with connected(address, workers) as ray:
        from ray.exceptions import RayError, RayTaskError

        cpus = int(ray.cluster_resources().get("CPU", 1))
        n = workers or max(1, cpus)
        k = batch_size or auto_batch_size(len(tasks), n)
        queue = deque(list(range(i, min(i + k, len(tasks)))) for i in range(0, len(tasks), k))
        n = min(n, len(queue))
        remote = ray.remote(num_cpus=1, max_restarts=0, max_task_retries=0)(_RayWorker)
        logger.debug(f"Ray: {n} workers on {cpus} CPUs, {len(queue)} batches of up to {k} pictures")
        pending: dict[Any, tuple[Any, list[int] | None]] = {}  # ref -> (worker, its batch; None: starting)
        alive: list[Any] = []  # every worker not known dead
        idle: list[Any] = []  # started workers holding no batch

        def start() -> None:
            w = remote.remote(init, init_args, work, 1)
            alive.append(w)
            pending[w.ready.remote()] = (w, None)

        def feed() -> list[tuple[int, Outcome]]:
            """Send the idle workers the next batches; the tasks ``pack`` failed on, to report."""
            failed = []
            while queue and idle:
                batch, items = queue.popleft(), []
                for i in batch:
                    try:
                        items.append((i, pack(tasks[i]) if pack else tasks[i]))
                    except Exception as e:  # noqa: BLE001 - reported as this task's failure
                        failed.append((i, Outcome(False, error=error_text(e))))
                if items:
                    w = idle.pop()
                    pending[w.run.remote(items)] = (w, [i for i, _ in items])
            return failed

        try:
            for _ in range(n):
                start()
            # until no batch is out and none waits (a worker still starting when all is done is not waited for)
            while any(b is not None for _, b in pending.values()) or (queue and pending):
                [ref], _ = ray.wait(list(pending), num_returns=1)
                w, batch = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except RayTaskError as e:  # the call itself failed (not a picture's error: those are caught)
                    if batch is None:
                        raise EcgTraceError(f"a Ray worker could not start: {error_text(e).splitlines()[0]}") from e
                    for i in batch:
                        yield i, Outcome(False, error=error_text(e).splitlines()[0])
                    idle.append(w)
                except RayError as e:  # the worker died
                    alive.remove(w)
                    if batch is None:
                        raise EcgTraceError(f"a Ray worker died while starting ({_died(e)}); is the same ecgtrace "
                                            "installed on every node?") from e
                    if len(batch) == 1:
                        yield batch[0], Outcome(False, error=f"the Ray worker died on this picture ({_died(e)})")
                    else:  # which picture was it? each runs again alone
                        queue.extendleft([i] for i in reversed(batch))
                    if queue and len(alive) < n:
                        start()
                else:
                    if batch is None:
                        if result is not None:  # its init failed: as on one machine, the run stops
                            raise EcgTraceError(result)
                    else:
                        yield from result
                    idle.append(w)
                yield from feed()
        finally:
            for w in alive:
                ray.kill(w)
