"""Reading a cache (internal; import from :mod:`hpatk.core.cache`): :class:`CacheDataset`,
process-local handles, contiguous reads straight from the file."""

from __future__ import annotations

import contextlib
import os
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpatk.core.cache_file import (
    SYN,
    CacheIndex,
    h5_reason,
    meta_of,
    open_file,
    open_h5,
    strings,
)
from hpatk.core.classes import NUM_CLASSES
from hpatk.core.errors import HpatkError

if TYPE_CHECKING:
    import h5py
    import numpy as np
    import torch


def _image_offsets(d: h5py.Dataset) -> np.ndarray | None:
    """File offset of each image's bytes where they can be read straight from the file
    (no filters, one chunk per image, every chunk written); None: read through h5py."""
    import numpy as np

    n = d.shape[0]
    if (n == 0 or d.dtype != np.uint8 or d.chunks != (1, *d.shape[1:])
            or d.id.get_create_plist().get_nfilters() != 0):
        return None
    nbytes = int(np.prod(d.shape[1:]))
    offsets = np.full(n, -1, np.int64)
    usable = [True]

    def visit(info: Any) -> None:
        if info.size != nbytes or info.filter_mask != 0:
            usable[0] = False
        else:
            offsets[info.chunk_offset[0]] = info.byte_offset

    try:
        d.id.chunk_iter(visit)  # one pass over the chunk index (HDF5 >= 1.14)
    except (AttributeError, NotImplementedError):
        for i in range(n):
            visit(d.id.get_chunk_info_by_coord((i, 0, 0, 0)))
    return offsets if usable[0] and (offsets >= 0).all() else None


# Readers of this process, closed before this process writes the same file (HDF5 refuses
# to open a file read-write while the same process has it open read-only).
_READERS: weakref.WeakSet[CacheDataset] = weakref.WeakSet()


# Handles inherited through fork: kept referenced, never closed, so the child does not
# touch the parent's HDF5 state.
_INHERITED: list[Any] = []


def _torch_dataset_base() -> type:
    try:
        from torch.utils.data import Dataset
    except ImportError:  # pragma: no cover - torch is a dependency
        return object
    return Dataset


class CacheDataset(_torch_dataset_base()):  # type: ignore[misc]
    """A ``torch.utils.data.Dataset`` over a cache: ``ds[i] -> (image, target)``.

    The file opens lazily in the process that reads (each DataLoader worker under fork,
    spawn or forkserver; the main process with 0 workers), read-only and unlocked (see
    the module docstring). Reads are contiguous, never fancy-indexed: uncompressed images
    are read straight from the file at their chunk offsets (``pread``: no h5py lock, one
    copy), compressed ones through h5py in sorted runs of slices. A batch is one call,
    :meth:`read_batch` (what ``hpatk.core.batching.make_loader``, the engine's loader,
    calls; in a worker it fills the batch in shared memory). Keep batches uint8 and
    normalise on the training device: float batches cost 4x the inter-process bytes.

    Args:
        path: the cache file.
        indices: rows to expose, in this order (e.g. a fold's training rows): real rows,
            or with ``synthetic="only"`` synthetic rows.
        synthetic: False (real images only, the default), "with" (real then synthetic) or
            "only". True means "with".
        as_float: images as float32 in [0, 1] instead of uint8.
        classes: label columns of the target, in order (e.g. ``TOP5``); None = all 28.
        synthetic_indices: synthetic rows to expose with ``"with"`` (default: all). Synthetic
            rows are numbered as in :func:`synthetic_info`.
        index: :func:`~hpatk.core.cache.read_cache_index` of ``path``, when the caller has
            read it: the real rows' labels and Ids are taken from it instead of the file.

    Attributes:
        labels: (len, 28) uint8 of the exposed rows. ids, sources: lists (len,).
        meta: :func:`read_cache_meta` of the file. batches: the synthetic batches used.

    Shape:
        image: (C, S, S) uint8 (or float32); target: (K,) float32.
    """

    def __init__(self, path: str | os.PathLike[str], indices: Sequence[int] | None = None, *,
                 synthetic: bool | str = False, as_float: bool = False,
                 classes: Sequence[int] | None = None,
                 synthetic_indices: Sequence[int] | None = None,
                 index: CacheIndex | None = None) -> None:
        import numpy as np

        if synthetic is True:
            synthetic = "with"
        if synthetic not in (False, None, "with", "only"):
            raise HpatkError(f"synthetic must be False, 'with' or 'only', not {synthetic!r}")
        if synthetic == "only" and indices is not None and synthetic_indices is not None:
            raise HpatkError("synthetic='only': give the rows as indices or "
                             "synthetic_indices, not both")
        self.path = Path(path)
        self.as_float = bool(as_float)
        self.synthetic = synthetic or False
        if index is None or self.synthetic:  # the synthetic group may have grown: read it
            with open_h5(self.path) as f:
                try:
                    meta = meta_of(f, self.path)
                    real = ((index.labels, index.ids, index.sources) if index is not None else
                            (f["labels"][()], strings(f["ids"]), strings(f["source"])))
                    syn_labels = ([f[SYN][b["batch"]]["labels"][()] for b in meta["synthetic"]]
                                  if self.synthetic else [])
                except (KeyError, OSError, ValueError) as exc:
                    raise HpatkError(f"{self.path}: damaged cache ({h5_reason(exc)})") from None
        else:  # real rows of an index already read (by plan_data): no open here
            meta, real, syn_labels = index.meta, (index.labels, index.ids, index.sources), []
        self.meta = meta
        batches = meta["synthetic"]
        self.segments = ["images"] + [f"{SYN}/{b['batch']}/images" for b in batches]
        keys, rows, labels, ids, sources = [], [], [], [], []
        if self.synthetic != "only":
            sel = _check_indices(indices, len(real[1]), self.path, "real")
            keys.append(np.zeros(len(sel), np.int32))
            rows.append(sel)
            labels.append(real[0][sel])
            ids += [real[1][i] for i in sel]
            sources += [real[2][i] for i in sel]
        self.batches: list[dict[str, Any]] = []
        if self.synthetic:
            k = np.concatenate([np.full(b["n"], j + 1, np.int32) for j, b in enumerate(batches)]
                               or [np.zeros(0, np.int32)])
            r = np.concatenate([np.arange(b["n"]) for b in batches] or [np.zeros(0, np.int64)])
            lab = np.concatenate(syn_labels or [np.zeros((0, NUM_CLASSES), np.uint8)])
            sel = _check_indices(synthetic_indices if synthetic_indices is not None or
                                 self.synthetic == "with" else indices, len(r), self.path,
                                 "synthetic")
            k, r, lab = k[sel], r[sel], lab[sel]
            self.batches = [batches[j - 1] for j in sorted(set(k.tolist()))]
            keys.append(k)
            rows.append(r)
            labels.append(lab)
            ids += [f"{SYN}/{batches[a - 1]['batch']}/{b}" for a, b in zip(k, r, strict=True)]
            sources += [SYN] * len(k)
        self._key = np.concatenate(keys).astype(np.int32)
        self._row = np.concatenate(rows).astype(np.int64)
        self.labels: np.ndarray = np.concatenate(labels).astype(np.uint8)
        self.ids: list[str] = ids
        self.sources: list[str] = sources
        self.classes = None if classes is None else [int(c) for c in classes]
        if self.classes is not None and any(not 0 <= c < NUM_CLASSES for c in self.classes):
            raise HpatkError(f"classes {self.classes}: indices must be in 0..{NUM_CLASSES - 1}")
        cols = self.labels if self.classes is None else self.labels[:, self.classes]
        self.targets: np.ndarray = np.ascontiguousarray(cols, dtype=np.float32)
        self._h5: Any = None
        self._fd = -1
        self._segs: dict[int, tuple[Any, np.ndarray | None]] = {}
        self._pid: int | None = None

    # -- process-local handles --------------------------------------------------------
    def _segment(self, key: int) -> tuple[Any, np.ndarray | None]:
        """(h5py dataset, file offset of each image or None) of segment ``key``, opening
        the file first if this process has not."""
        if self._pid != os.getpid():
            if self._h5 is not None:  # inherited through fork: the parent's, leave it be
                _INHERITED.append(self._h5)
            if self._fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(self._fd)  # only this process's copy of the descriptor
            self._h5, self._segs, self._pid = open_file(self.path), {}, os.getpid()
            direct = hasattr(os, "preadv") and self._h5.userblock_size == 0
            self._fd = os.open(self.path, os.O_RDONLY) if direct else -1
            _READERS.add(self)
        seg = self._segs.get(key)
        if seg is None:
            d = self._h5[self.segments[key]]
            seg = self._segs[key] = (d, _image_offsets(d) if self._fd >= 0 else None)
        return seg

    def _fill(self, out: np.ndarray, keys: np.ndarray, rows: np.ndarray) -> None:
        """Read images (keys[j], rows[j]) into out[j]; contiguous reads only."""
        import numpy as np

        order = np.lexsort((rows, keys))
        s = 0
        while s < len(order):
            key = int(keys[order[s]])
            d, offsets = self._segment(key)
            e = s + 1
            while e < len(order) and keys[order[e]] == key:
                e += 1
            if offsets is not None:
                # Uncompressed: one pread per image, straight into the batch (no h5py
                # lock, GIL released, a single copy from the page cache).
                nbytes = out[0].nbytes
                for j in order[s:e]:
                    if os.preadv(self._fd, [out[j]], int(offsets[rows[j]])) != nbytes:
                        raise OSError(f"short read of {self.segments[key]}[{rows[j]}]: the "
                                      f"file was truncated")
            else:  # through HDF5's filters: sorted runs of rows as slices
                a = s
                while a < e:
                    b = a + 1
                    while b < e and rows[order[b]] == rows[order[b - 1]] + 1:
                        b += 1
                    out[order[a:b]] = d[int(rows[order[a]]):int(rows[order[b - 1]]) + 1]
                    a = b
            s = e

    def close(self) -> None:
        """Close this process's handles; the next read reopens them."""
        if self._pid == os.getpid():
            if self._h5 is not None:
                with contextlib.suppress(Exception):
                    self._h5.close()
            if self._fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(self._fd)
        self._h5, self._fd, self._segs, self._pid = None, -1, {}, None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_h5=None, _fd=-1, _segs={}, _pid=None)  # handles stay in their process
        return state

    def __len__(self) -> int:
        return len(self._key)

    def _tensor(self, images: torch.Tensor) -> torch.Tensor:
        return images.float().div_(255.0) if self.as_float else images

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        i = int(i)
        n = len(self._key)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} samples")
        images, _ = self._read([i])
        return self._tensor(images[0]), torch.from_numpy(self.targets[i].copy())

    def _read(self, indices: Sequence[int], shared: bool = False
              ) -> tuple[torch.Tensor, np.ndarray]:
        """uint8 images of ``indices`` (in shared memory with ``shared``) and the rows."""
        import numpy as np
        import torch

        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self._key)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"indices out of range for {n} samples")
        idx = np.where(idx < 0, idx + n, idx)
        shape = (len(idx), *self.meta["shape"][1:])
        if shared:  # what a worker sends: filled in place, handed over without a copy
            nbytes = int(np.prod(shape))
            out = torch.empty(0, dtype=torch.uint8).set_(
                torch.UntypedStorage._new_shared(nbytes)).view(shape)
        else:
            out = torch.empty(shape, dtype=torch.uint8)
        try:
            self._fill(out.numpy(), self._key[idx], self._row[idx])
        except (OSError, KeyError, ValueError) as exc:
            raise HpatkError(f"{self.path}: cannot read images ({h5_reason(exc)}); the file "
                             f"is damaged: rebuild it") from None
        return out, idx

    def read_batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples ``indices`` as one batch (``make_loader``'s workers call it).

        Shape:
            (B, C, S, S) uint8 (or float32), (B, K) float32.
        """
        import torch
        from torch.utils.data import get_worker_info

        in_worker = get_worker_info() is not None and not self.as_float
        images, idx = self._read(indices, shared=in_worker)
        return self._tensor(images), torch.from_numpy(self.targets[idx])

    def __repr__(self) -> str:
        return (f"CacheDataset('{self.path}', n={len(self)}, synthetic={self.synthetic!r}, "
                f"classes={self.classes})")


def _check_indices(indices: Sequence[int] | None, n: int, path: Path, what: str) -> np.ndarray:
    import numpy as np

    if indices is None:
        return np.arange(n, dtype=np.int64)
    sel = np.asarray(indices)
    if sel.dtype == bool:
        if sel.shape != (n,):
            raise HpatkError(f"{path}: a boolean mask over the {what} rows needs {n} entries")
        return np.flatnonzero(sel)
    sel = sel.astype(np.int64).reshape(-1)
    if sel.size and (sel.min() < 0 or sel.max() >= n):
        raise HpatkError(f"{path}: indices must be in 0..{n - 1} ({n} {what} rows), got "
                         f"{int(sel.min())}..{int(sel.max())}")
    return sel


def close_readers(path: Path) -> None:
    for ds in list(_READERS):
        with contextlib.suppress(OSError):
            if ds.path.exists() and os.path.samefile(ds.path, path):
                ds.close()
