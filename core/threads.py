"""CPU threads: one default, set once at a command's start, so hpatk degrades gracefully
on a machine it shares.

Why (tests/benchmarks/bench_busy.py measures it): PyTorch's CPU kernels run on an OpenMP
pool with one thread per core, and GNU OpenMP's threads *spin* at every barrier while
they wait for each other. With another CPU job on the machine, a spinning thread burns
the time slice its descheduled peer needs, so every small parallel region (a GAN step has
hundreds) waits a whole scheduler slice: steps slowed ~10x where a fair share of the
cores would cost ~2-3x. A passive wait policy (threads sleep at once) and a thread count
no larger than the CPUs this process may use remove the collapse.

The rules, applied by :func:`configure_threads`:

- threads: ``--threads N``, else ``OMP_NUM_THREADS`` when set, else the CPUs this process
  may run on (affinity mask and cgroup quota: a container limited to 2 CPUs on a 64-core
  host gets 2, not 64);
- ``OMP_WAIT_POLICY=PASSIVE`` unless set: it must be in the environment before torch is
  imported (OpenMP reads it once), which the ``hpatk`` command line guarantees;
- one inter-op thread (hpatk launches no inter-op work), and ONNX Runtime sessions take
  the same intra-op count, without spinning (see the export package's runtime).

DataLoader workers already run one torch thread each, and the cache builder's worker
processes one OpenCV/torch thread each, so neither multiplies the pool.

Call :func:`configure_threads` before importing torch in a script of your own to get the
same behaviour; once torch is loaded only the thread count can still change.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

WAIT_POLICY = "PASSIVE"
_configured: int | None = None


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2/v1 CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        n = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        n = min(n, max(1, math.ceil(quota)))
    return max(1, n)


def _cgroup_quota() -> float | None:
    """The CPU quota in CPUs (cgroup ``cpu.max`` or v1 ``cfs_quota/period``), None if unlimited."""
    try:
        text = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if text and text[0] != "max":
            return int(text[0]) / int(text[1])
        return None
    except (OSError, ValueError, IndexError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def default_threads() -> int:
    """The thread count hpatk uses without ``--threads``: ``OMP_NUM_THREADS`` if it is a
    positive integer, else :func:`available_cpus`."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return available_cpus()


def thread_count() -> int:
    """The intra-op thread count in force: the configured one, else :func:`default_threads`.

    ONNX Runtime sessions and anything else that sizes a CPU pool use this.
    """
    return _configured if _configured is not None else default_threads()


def configure_threads(threads: int | None = None) -> int:
    """Apply hpatk's thread policy (see the module doc) and return the thread count.

    Sets ``OMP_WAIT_POLICY`` (unless set) and ``OMP_NUM_THREADS`` for torch not yet
    imported and child processes, and, when torch is already loaded, its intra-op count
    (and one inter-op thread if its pool has not started).

    Args:
        threads: intra-op threads; None for :func:`default_threads`.

    Raises:
        ValueError: ``threads`` below 1.
    """
    global _configured
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be at least 1, not {threads}")
    n = int(threads) if threads is not None else default_threads()
    os.environ.setdefault("OMP_WAIT_POLICY", WAIT_POLICY)
    os.environ["OMP_NUM_THREADS"] = str(n)
    os.environ.setdefault("MKL_NUM_THREADS", str(n))
    _configured = n
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # the inter-op pool has started: its size is fixed
            pass
    return n


def threads_option(f: F) -> F:
    """Click decorator: ``--threads N`` on a heavy command, applied before the command runs.

    The same option on every command that trains, builds or evaluates (``train``,
    ``evaluate``, ``experiment``, ``cache build``, ``predict``, ``demo``, ``gan train``; a
    plugin's command may use it too). The value is not passed to the command function.
    """
    import click

    def apply(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
        configure_threads(value)
        return value

    return click.option(
        "--threads", type=click.IntRange(min=1), default=None, expose_value=False,
        callback=apply, is_eager=True,
        help="CPU threads for torch and ONNX Runtime. [default: OMP_NUM_THREADS, else the "
        "CPUs this process may use]")(f)
