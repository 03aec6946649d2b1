"""CPU backend: OpenCV on each image plane, planes spread over a thread pool.

OpenCV releases the GIL, so a plain thread pool over planes scales with cores. OpenCV's
own threading is switched off (``cv2.setNumThreads(0)``, process-wide, before the first
call here): its worker pool would only compete with ours (MEASURED: ThreadPool(2) 3.3 ms
vs cv2 2 threads 3.5 ms per image), and a live OpenCV pool in a parent process makes
fork-started DataLoader workers deadlock (MEASURED.md). Our own pool is dropped in a
forked child (``os.register_at_fork``) and rebuilt there on first use.

Thread count: ``threads=None`` means every CPU this process may use, except inside a
child process (DataLoader / multiprocessing workers: already one per core), where planes
run one after another in the calling thread.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_configured_pid: int | None = None


def _after_fork_in_child() -> None:
    global _lock, _pool, _pool_size, _configured_pid
    # the parent's pool threads do not exist here, and its lock may be held forever
    _lock, _pool, _pool_size, _configured_pid = threading.Lock(), None, 0, None


if hasattr(os, "register_at_fork"):  # POSIX; there is no fork on Windows
    os.register_at_fork(after_in_child=_after_fork_in_child)


def cv2_module() -> Any:
    """``cv2``, with OpenCV's internal threading off in this process (see module doc)."""
    global _configured_pid
    import cv2

    if _configured_pid != os.getpid():
        cv2.setNumThreads(0)
        _configured_pid = os.getpid()
    return cv2


def available_cpus() -> int:
    """CPUs this process may run on (affinity-aware)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def default_threads() -> int:
    """One thread in a worker process, every available CPU otherwise."""
    if multiprocessing.parent_process() is not None:
        return 1
    return available_cpus()


def _executor(size: int) -> ThreadPoolExecutor:
    global _pool, _pool_size
    with _lock:
        if _pool is None or _pool_size < size:
            old = _pool
            _pool, _pool_size = ThreadPoolExecutor(size, thread_name_prefix="hpatk-enhance"), size
            if old is not None:
                old.shutdown(wait=False)
        return _pool


def map_planes(make_op: Callable[[], Callable[[np.ndarray, np.ndarray], Any]],
               planes: np.ndarray, threads: int | None = None) -> np.ndarray:
    """Apply an OpenCV op to every plane of a uint8 (N, H, W) array.

    Args:
        make_op: builds ``op(src, dst)`` writing one (H, W) plane into ``dst``; called once
            per thread (OpenCV's CLAHE objects keep buffers and are not thread-safe).
        planes: uint8 planes, C-contiguous.
        threads: pool size; None for :func:`default_threads`.

    Returns:
        uint8 (N, H, W), a new array.

    Shape:
        (N, H, W) -> (N, H, W)
    """
    planes = np.ascontiguousarray(planes)
    out = np.empty_like(planes)
    n = planes.shape[0]
    cv2_module()
    workers = min(n, threads or default_threads())

    def run(block: range) -> None:
        op = make_op()
        for i in block:
            op(planes[i], out[i])

    if workers <= 1:
        run(range(n))
        return out
    blocks = [range(int(b[0]), int(b[-1]) + 1) for b in np.array_split(np.arange(n), workers)]
    pool = _executor(workers)
    futures = [pool.submit(run, b) for b in blocks[1:]]
    run(blocks[0])  # the calling thread takes a share instead of waiting idle
    for f in futures:
        f.result()
    return out


def clahe_planes(planes: np.ndarray, clip_limit: float, grid_size: tuple[int, int],
                 threads: int | None = None) -> np.ndarray:
    """``cv2.createCLAHE(clip_limit, grid_size).apply`` on each uint8 plane.

    Shape:
        (N, H, W) -> (N, H, W)
    """
    cv2 = cv2_module()

    def make_op() -> Callable[[np.ndarray, np.ndarray], Any]:
        return cv2.createCLAHE(clip_limit, tuple(grid_size)).apply

    return map_planes(make_op, planes, threads)


def equalize_hist_planes(planes: np.ndarray, threads: int | None = None) -> np.ndarray:
    """``cv2.equalizeHist`` on each uint8 plane.

    Shape:
        (N, H, W) -> (N, H, W)
    """
    cv2 = cv2_module()
    return map_planes(lambda: cv2.equalizeHist, planes, threads)
