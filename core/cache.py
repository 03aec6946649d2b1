"""The HDF5 dataset cache: decode, enhance and resize once; read at memory speed.

This module is the public API; the work is done in ``cache_file`` (format, open,
validate, lock, metadata), ``cache_build`` (fingerprint, build), ``cache_read``
(:class:`CacheDataset`) and ``cache_synthetic`` (synthetic-group writes).

Format (``format_version`` 1), one HDF5 file::

    /images     uint8 (N, C, S, S), one chunk per image, uncompressed by default
    /labels     uint8 (N, 28) multi-hot
    /ids        str (N,)        sample Ids
    /source     str (N,)        "kaggle" or "external"
    /inputs     str (L,)        the input listing the fingerprint covers (for "what changed")
    /synthetic/batch-000001/    one group per add_synthetic call
        images  uint8 (n, C, S, S)    labels uint8 (n, 28)
        train_ids  str (m,)   the Ids of the real images its generator learnt from
        attrs   class_index, class_name, generator, fold (-1 = none), seed, n, created,
                key (generator fingerprint), synthesizer (JSON), train_ids_sha256
    root attrs  format, format_version, fingerprint, config (JSON: enhance, size, stains,
                format and preprocess versions), inputs (JSON summary), enhance (JSON),
                size, stains (JSON), compression, hpatk_version, opencv_version, created

Safety: a build writes a temporary file in the destination folder and renames it when
complete, under a lock file (``.NAME.lock``) that also serialises concurrent builders (DDP
ranks) and synthetic writers. ``add_synthetic`` never changes existing objects: it writes
an anonymous group (unreachable until linked; HDF5 frees it if the writer fails) and links
it in one step, so readers see a batch entirely or not at all.

Readers open the file lazily in each process (fork, spawn, forkserver; 0 or N DataLoader
workers) with HDF5 file locking off (``locking=False``, what ``HDF5_USE_FILE_LOCKING=FALSE``
does for other HDF5 tools). Safe, because existing objects are never modified in place
(rebuilds replace the file by rename; readers keep the old inode); needed, because HDF5's
flock makes read-only opens fail on file systems without lock support (NFS, Lustre: many
DDP ranks) and would block a ``gan sample --into`` while training reads. In one process,
open a cache with ``h5py.File(path, "r", locking=False)`` too: HDF5 refuses to open a file
twice with different locking flags.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpatk.core.cache_build import build_cache, default_cache_path, ensure_cache
from hpatk.core.cache_file import (
    COMPRESSIONS,
    DEFAULT_ENHANCE,
    DEFAULT_SIZE,
    FORMAT,
    FORMAT_VERSION,
    PREPROCESS_VERSION,
    SYN,
    CacheIndex,
    open_h5,
    read_cache_index,
    read_cache_meta,
    strings,
    synthetic_batches,
)
from hpatk.core.cache_read import CacheDataset
from hpatk.core.cache_synthetic import add_synthetic, ids_digest, remove_synthetic
from hpatk.core.classes import NUM_CLASSES

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "COMPRESSIONS", "DEFAULT_ENHANCE", "DEFAULT_SIZE", "FORMAT", "FORMAT_VERSION",
    "PREPROCESS_VERSION", "CacheDataset", "CacheIndex", "add_synthetic", "build_cache",
    "cache_ids", "cache_labels", "default_cache_path", "ensure_cache", "ids_digest",
    "read_cache_index", "read_cache_meta", "remove_synthetic", "synthetic_info",
    "synthetic_train_ids",
]


def cache_labels(path: str | os.PathLike[str]) -> np.ndarray:
    """Labels of the real images. Shape: (N, 28) uint8."""
    with open_h5(Path(path)) as f:
        return f["labels"][()]


def cache_ids(path: str | os.PathLike[str]) -> list[str]:
    """Ids of the real images, in cache row order."""
    with open_h5(Path(path)) as f:
        return strings(f["ids"])


def synthetic_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Per synthetic row (the row order of ``CacheDataset(..., synthetic="only")``):
    ``class_index``, ``fold`` (-1 = trained on all data), ``seed`` as int arrays (S,);
    ``generator``, ``batch`` and ``key`` (the generator's fingerprint) as lists;
    ``labels`` (S, 28) uint8."""
    import numpy as np

    with open_h5(Path(path)) as f:
        batches = synthetic_batches(f)
        labels = [f[SYN][b["batch"]]["labels"][()] for b in batches]
    rep = [b["n"] for b in batches]
    return {
        "class_index": np.repeat([b["class_index"] for b in batches], rep).astype(int),
        "fold": np.repeat([-1 if b["fold"] is None else b["fold"] for b in batches],
                          rep).astype(int),
        "seed": np.repeat([b["seed"] for b in batches], rep).astype(int),
        "generator": [b["generator"] for b in batches for _ in range(b["n"])],
        "batch": [b["batch"] for b in batches for _ in range(b["n"])],
        "key": [b["key"] for b in batches for _ in range(b["n"])],
        "labels": (np.concatenate(labels) if labels
                   else np.zeros((0, NUM_CLASSES), np.uint8)),
    }


def synthetic_train_ids(path: str | os.PathLike[str], batch: str) -> list[str] | None:
    """The Ids of the real images a synthetic batch's generator learnt from (sorted), or
    None when the batch does not record them (written by hpatk before 0.2)."""
    from hpatk.core.errors import HpatkError

    with open_h5(Path(path)) as f:
        grp = f.get(f"{SYN}/{batch}")
        if grp is None:
            raise HpatkError(f"{path}: no synthetic batch '{batch}'")
        return strings(grp["train_ids"]) if "train_ids" in grp else None
