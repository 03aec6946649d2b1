"""Running under ``torchrun``: the process group, who writes, and the collectives the
engine needs (barrier, all-gather of variable-length arrays, agreement on a failure).

``torchrun`` (or ``srun torchrun``, or any launcher that sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``) starts one process per device;
:func:`distributed` joins them into a process group (NCCL on CUDA, gloo on CPU) and
tears it down on every exit path. Outside a launch everything here is a no-op for a
single process, so the engine calls these helpers unconditionally.

A second group, always gloo, carries the small CPU collectives (gathers of validation
outputs, error agreement) and the long waits (rank 0 building the cache), whatever the
backend of the gradients is.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
from hpatk.core.errors import HpatkError, first_line

BACKENDS = ("auto", "nccl", "gloo")
DEFAULT_TIMEOUT_S = 600.0  # a collective that waits longer than this stops the run
LONG_WAIT_S = 24 * 3600.0  # rank 0 building the cache
JOIN_WAIT_S = 7 * 24 * 3600.0  # ranks done with their share of an experiment's jobs


class StoppedByPeer(HpatkError):
    """This rank stops because another rank failed and has reported why; the CLI exits
    with status 1 without repeating the message."""

    already_reported = True


@dataclass(frozen=True)
class Dist:
    """The process group this process trains in (a single process by default)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""

    @property
    def enabled(self) -> bool:
        """True when gradients and outputs are shared with other processes."""
        return self.world_size > 1


_current = Dist()
_cpu_group: Any = None
_timeout = timedelta(seconds=DEFAULT_TIMEOUT_S)


def current() -> Dist:
    """The active group (``Dist()``, a single process, outside :func:`distributed`)."""
    return _current


def is_main() -> bool:
    """True on the rank that writes files and prints (rank 0, or a single process)."""
    return _current.rank == 0


def launched() -> bool:
    """True when a launcher (torchrun, srun torchrun) started this process as one of a
    group: ``WORLD_SIZE`` is set in the environment."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


@contextmanager
def distributed(backend: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S,
                device: str = "auto") -> Iterator[Dist]:
    """Join the process group of a ``torchrun`` launch for the body; a no-op otherwise.

    Args:
        backend: ``auto`` (NCCL when training on CUDA, else gloo), ``nccl`` or ``gloo``.
        timeout_s: how long a collective may wait before the run stops with an error.
        device: the training ``--device`` (``cpu`` picks gloo under ``auto``).

    Yields:
        The group; ``destroy_process_group`` runs on every exit path. A collective that
        fails because another rank died or timed out becomes one :class:`HpatkError`.
    """
    global _current, _cpu_group, _timeout
    if not launched() or _current.enabled:
        yield _current
        return
    import torch
    import torch.distributed as dist

    if backend not in BACKENDS:
        raise HpatkError(f"--dist-backend must be one of {', '.join(BACKENDS)}, not '{backend}'")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    cuda = torch.cuda.is_available() and device != "cpu"
    if backend == "auto":
        backend = "nccl" if cuda else "gloo"
    if backend == "nccl" and not cuda:
        raise HpatkError("--dist-backend nccl needs CUDA devices; use gloo on CPU")
    if cuda:
        torch.cuda.set_device(local_rank)
    _timeout = timedelta(seconds=timeout_s)
    try:
        dist.init_process_group(backend, rank=rank, world_size=world, timeout=_timeout)
    except (RuntimeError, ValueError) as exc:
        raise HpatkError(f"rank {rank}: cannot join the process group ({backend}, "
                         f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}): "
                         f"{first_line(exc)}") from exc
    try:
        _cpu_group = dist.new_group(backend="gloo", timeout=_timeout) if backend != "gloo" \
            else dist.group.WORLD
        _current = Dist(rank, world, local_rank, backend)
        yield _current
    except RuntimeError as exc:
        if not _lost_peer(exc):
            raise
        why = re.sub(r"^\[[^\]]*\]\s*", "", first_line(exc)).split(". ")[0][:120]
        raise HpatkError(f"rank {rank}: stopped, another process failed or was lost "
                         f"({why}); its error is above") from exc
    finally:
        _current, _cpu_group = Dist(), None
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - the group is gone already; nothing to free
            pass


@contextmanager
def single_process() -> Iterator[None]:
    """Inside a launch, run the body as a process of its own (a job of an experiment
    spread over ranks): it writes its files and shares nothing."""
    global _current
    saved = _current
    _current = Dist(local_rank=saved.local_rank)
    try:
        yield
    finally:
        _current = saved


def rank_device(device: Any) -> Any:
    """This rank's device: ``cuda`` becomes ``cuda:LOCAL_RANK`` under a launch."""
    import torch

    device = torch.device(device)
    if _current.enabled and device.type == "cuda" and device.index is None:
        return torch.device("cuda", _current.local_rank)
    return device


def barrier(timeout_s: float | None = None) -> None:
    """Wait until every rank gets here (gloo ``monitored_barrier``: a rank that never
    comes is named in the error instead of a hang)."""
    if not _current.enabled:
        return
    import torch.distributed as dist

    timeout = timedelta(seconds=timeout_s) if timeout_s is not None else _timeout
    dist.monitored_barrier(group=_cpu_group, timeout=timeout, wait_all_ranks=True)


def agree(ok: bool, timeout_s: float | None = None) -> list[int]:
    """Every rank says whether it succeeded; returns the ranks that failed (on all)."""
    if not _current.enabled:
        return [] if ok else [0]
    import torch
    import torch.distributed as dist

    if timeout_s is not None:
        barrier(timeout_s)  # a long wait here; the gather below then finds everyone
    flags = [torch.zeros(1, dtype=torch.int32) for _ in range(_current.world_size)]
    dist.all_gather(flags, torch.tensor([int(ok)], dtype=torch.int32), group=_cpu_group)
    return [r for r, f in enumerate(flags) if not int(f)]


@contextmanager
def main_first(what: str = "", timeout_s: float = LONG_WAIT_S) -> Iterator[None]:
    """Run the body on rank 0, then on the other ranks (rank 0 builds the cache and
    writes ``config.yaml``; the others then read them).

    If the body fails on rank 0, rank 0 raises its error and the other ranks raise
    :class:`StoppedByPeer` (one message, not one per rank).
    """
    if not _current.enabled:
        yield
        return
    if _current.rank == 0:
        try:
            yield
        except BaseException:
            agree(False, timeout_s)
            raise
        agree(True, timeout_s)
        return
    failed = agree(True, timeout_s)
    if failed:
        raise StoppedByPeer(f"rank {_current.rank}: rank 0 failed{f' {what}' if what else ''}")
    yield


def all_gather_rows(a: np.ndarray) -> np.ndarray:
    """Concatenate every rank's rows in rank order (each rank may have a different
    number; padding to the longest is removed).

    Shape:
        (N_r, ...) on rank r -> (sum N_r, ...) on every rank, the same dtype.
    """
    if not _current.enabled:
        return a
    import torch
    import torch.distributed as dist

    a = np.ascontiguousarray(a)
    if a.ndim > 4:
        raise ValueError("all_gather_rows: at most 4 dimensions")
    world = _current.world_size
    meta = torch.zeros(5, dtype=torch.int64)  # rows, then the row shape (zero-padded)
    meta[0] = a.shape[0]
    meta[1:a.ndim] = torch.tensor(a.shape[1:], dtype=torch.int64)
    metas = [torch.zeros_like(meta) for _ in range(world)]
    dist.all_gather(metas, meta, group=_cpu_group)
    counts = [int(m[0]) for m in metas]
    shapes = {tuple(m[1:a.ndim].tolist()) for m in metas if int(m[0])}
    if not shapes:
        return a
    if len(shapes) > 1:  # a rank without rows may not know the row shape: it is not asked
        raise HpatkError(f"rank {_current.rank}: ranks disagree on the row shape {shapes}")
    padded = np.zeros((max(counts), *shapes.pop()), dtype=a.dtype)
    if a.shape[0]:
        padded[:a.shape[0]] = a
    mine = torch.from_numpy(padded)
    parts = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(parts, mine, group=_cpu_group)
    return np.concatenate([p.numpy()[:n] for p, n in zip(parts, counts, strict=True)])


def all_sum(values: list[float]) -> list[float]:
    """Element-wise sum over ranks (float64)."""
    if not _current.enabled:
        return list(values)
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, group=_cpu_group)
    return t.tolist()


def all_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (plain data: our own RNG states), in rank order."""
    if not _current.enabled:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * _current.world_size
    dist.all_gather_object(out, obj, group=_cpu_group)
    return out


def sync_buffers(module: Any) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank, so that a
    validation on any rank is one of rank 0's checkpoint."""
    if not _current.enabled:
        return
    import torch.distributed as dist

    for buf in module.buffers():
        dist.broadcast(buf.data, src=0)


def wrap_model(model: Any, device: Any, *, sync_bn: bool = False) -> Any:
    """``DistributedDataParallel(model)`` under a launch (SyncBatchNorm with
    ``sync_bn``); ``model`` itself otherwise. Parameters and buffers start as rank 0's."""
    if not _current.enabled:
        return model
    import torch
    from torch.nn.parallel import DistributedDataParallel

    if sync_bn:
        check_sync_bn(sync_bn, device)
        torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, gradient_as_bucket_view=True)


def check_sync_bn(sync_bn: bool, device: Any) -> None:
    """Refuse ``--sync-bn`` where PyTorch cannot synchronise BatchNorm (CPU)."""
    if sync_bn and _current.enabled and device.type != "cuda":
        raise HpatkError("--sync-bn needs CUDA devices (PyTorch's SyncBatchNorm has no CPU "
                         "kernel); drop it on CPU")


def rank_seed(seed: int) -> int:
    """A seed of its own for this rank (augmentation draws), derived from ``seed``."""
    return int(np.random.SeedSequence([seed, _current.rank]).generate_state(1)[0])


def check_divides(batch_sizes: list[int], option: str = "--batch-size") -> None:
    """Refuse a global batch that does not split evenly over the ranks."""
    world = _current.world_size
    bad = [b for b in batch_sizes if b % world]
    if bad:
        raise HpatkError(f"{option}: the global batch {bad[0]} does not divide over "
                         f"{world} processes; use multiples of {world} (each process takes "
                         f"global / {world} images per step)")


def spread(jobs: list[Any]) -> list[Any]:
    """This rank's share of ``jobs``, round robin (all of them in a single process)."""
    return jobs[_current.rank::_current.world_size]


# what gloo and NCCL say when a peer died (DDP's gradient hook raises plain RuntimeError)
_PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "NCCL", "timed out",
              "Timed out", "Broken pipe")


def _lost_peer(exc: BaseException) -> bool:
    """True for a collective that failed because another rank is gone or stuck."""
    import torch.distributed as dist

    return isinstance(exc, dist.DistError) or any(p in str(exc) for p in _PEER_LOST)

