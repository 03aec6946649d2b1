"""Worker process pools that stop at once on Ctrl-C or an error.

Workers ignore SIGINT (a Ctrl-C reaches the whole process group): the parent alone
reacts, terminates its workers and removes what it was writing. Without this, a worker
interrupted while writing to a pipe can block the pool's shutdown forever, and cancelled
futures make the pool's manager thread print ``InvalidStateError`` tracebacks.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any


def _init_worker(initializer: Callable[..., Any] | None, initargs: tuple[Any, ...]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if initializer is not None:
        initializer(*initargs)


@contextlib.contextmanager
def process_pool(workers: int, initializer: Callable[..., Any] | None = None,
                 initargs: tuple[Any, ...] = ()) -> Iterator[ProcessPoolExecutor]:
    """A spawn-context ``ProcessPoolExecutor`` whose workers ignore SIGINT; when the
    block ends with an exception (``KeyboardInterrupt`` included), the workers are
    terminated (not waited for) before the exception goes on.

    Args:
        workers: number of worker processes.
        initializer: run in each worker with ``initargs`` (after SIGINT is ignored).
    """
    import multiprocessing as mp

    # spawn: a forked child of a process that already ran cv2 can deadlock (MEASURED.md)
    pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"),
                               initializer=_init_worker, initargs=(initializer, initargs))
    try:
        yield pool
    except BaseException:
        terminate_pool(pool)
        pool.shutdown(wait=False)  # the workers are gone: nothing to wait for
        raise
    pool.shutdown(wait=True)


def submit(pool: ProcessPoolExecutor, fn: Callable[..., Any], *args: Any) -> Any:
    """``pool.submit(fn, *args)`` with SIGINT blocked meanwhile: a worker the pool starts
    now (spawned on demand) inherits the blocked signal, so a Ctrl-C cannot kill it
    half-started (which can hang the pool); the Ctrl-C is delivered right after."""
    if threading.current_thread() is not threading.main_thread():
        return pool.submit(fn, *args)
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        return pool.submit(fn, *args)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def terminate_pool(pool: ProcessPoolExecutor, timeout: float = 3.0) -> None:
    """Terminate every worker of ``pool`` (SIGTERM, then SIGKILL after ``timeout`` s).

    Futures are left alone: the pool marks them broken itself (cancelling them first
    makes its manager thread fail on ``set_exception``)."""
    procs = list((getattr(pool, "_processes", None) or {}).values())  # no public handle
    queue = getattr(pool, "_call_queue", None)
    if queue is not None:  # its feeder thread may block on a pipe no worker reads any more:
        with contextlib.suppress(Exception):  # do not make the interpreter's exit wait for it
            queue.cancel_join_thread()
    for p in procs:
        with contextlib.suppress(Exception):
            p.terminate()
    for p in procs:
        with contextlib.suppress(Exception):
            p.join(timeout)
            if p.is_alive():
                p.kill()
                p.join(timeout)
