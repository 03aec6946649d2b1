"""Writing a cache's synthetic group (internal; import from :mod:`hpatk.core.cache`):
batches are added atomically (an anonymous group linked in one step) under the writer
lock, and only ever added or unlinked, never modified."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpatk.core.cache_file import (
    SYN,
    compression_kwargs,
    h5_reason,
    read_cache_meta,
)
from hpatk.core.cache_read import close_readers
from hpatk.core.classes import CLASS_NAMES, NUM_CLASSES
from hpatk.core.errors import HpatkError
from hpatk.core.io import writer_lock

if TYPE_CHECKING:
    import numpy as np


def ids_digest(ids: Iterable[str]) -> str:
    """SHA-256 of a set of Ids (sorted, one per line): names a training-image set."""
    return hashlib.sha256("\n".join(sorted(str(i) for i in ids)).encode()).hexdigest()


def add_synthetic(path: str | os.PathLike[str], images: Any, class_index: int, *,
                  generator: str, fold: int | None, seed: int,
                  labels: np.ndarray | None = None, key: str = "",
                  synthesizer: Mapping[str, Any] | None = None,
                  train_ids: Sequence[str] | None = None) -> str:
    """Append GAN samples of one class to the cache's synthetic group, atomically.

    The batch is written as an anonymous HDF5 group (unreachable, freed by HDF5 if this
    call fails) and linked as ``synthetic/batch-NNNNNN`` in one final step, under the
    writer lock: readers see the whole batch or none of it, and existing objects are
    never modified. Handles this process holds on the file are closed first (they reopen
    on the next read). A SIGKILL inside HDF5's final metadata flush (milliseconds) is the
    one window HDF5 itself cannot make safe; a killed call otherwise leaves the file as
    it was, at worst with unreachable space (``h5repack`` reclaims it).

    Args:
        path: the cache.
        images: uint8 array (or CPU tensor) matching the cache's channels and size.
        class_index: the class the generator was trained on (0..27).
        generator: where the samples came from (checkpoint path or name).
        fold: the fold whose training rows trained the generator; None = all data.
        seed: the sampling seed.
        labels: multi-hot labels per image; default: ``class_index`` only.
        key: the generator's fingerprint (what ``hpatk train --aug`` reuses samples by).
        synthesizer: the generator's registered name and parameters.
        train_ids: the Ids of the real images the generator learnt from: stored with
            the batch, so fold safety is checked by content (a fold may use the batch
            only if these are all among its training images), not by a fold number.

    Returns:
        The batch name.

    Shape:
        images: (n, C, S, S) uint8; labels: (n, 28).
    """
    import h5py
    import numpy as np
    from hpatk.core.version import __version__

    path = Path(path)
    if hasattr(images, "detach"):
        images = images.detach().cpu().numpy()
    images = np.asarray(images)
    meta = read_cache_meta(path)
    want = tuple(meta["shape"][1:])
    if images.dtype != np.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != want:
        raise HpatkError(f"{path}: synthetic images must be uint8 (n, {', '.join(map(str, want))})"
                         f", got {images.dtype} {tuple(images.shape)}")
    if not 0 <= int(class_index) < NUM_CLASSES:
        raise HpatkError(f"class {class_index} is outside 0..{NUM_CLASSES - 1}")
    n = len(images)
    if labels is None:
        labels = np.zeros((n, NUM_CLASSES), np.uint8)
        labels[:, int(class_index)] = 1
    labels = np.asarray(labels, dtype=np.uint8)
    if labels.shape != (n, NUM_CLASSES):
        raise HpatkError(f"synthetic labels must be ({n}, {NUM_CLASSES}), got {labels.shape}")
    close_readers(path)
    with writer_lock(path):
        try:
            f = h5py.File(path, "r+", locking=False)
        except OSError as exc:
            raise HpatkError(f"{path}: cannot open for writing ({h5_reason(exc)})") from None
        try:
            root = f.require_group(SYN)
            existing = [int(k.split("-")[1]) for k in root if k.startswith("batch-")]
            name = f"batch-{max(existing, default=0) + 1:06d}"
            grp = h5py.Group(h5py.h5g.create(f.id, None))  # anonymous until linked
            grp.create_dataset("images", data=images, chunks=(1, *want),
                               **compression_kwargs(meta["compression"]))
            grp.create_dataset("labels", data=labels)
            if train_ids is not None:
                ids = sorted(str(i) for i in train_ids)
                grp.create_dataset("train_ids", data=np.array(ids, dtype=object),
                                   dtype=h5py.string_dtype())
                grp.attrs["train_ids_sha256"] = ids_digest(ids)
            grp.attrs.update({
                "key": str(key),
                "synthesizer": json.dumps(dict(synthesizer or {}), sort_keys=True, default=str),
                "class_index": int(class_index), "class_name": CLASS_NAMES[int(class_index)],
                "generator": str(generator), "fold": -1 if fold is None else int(fold),
                "seed": int(seed), "n": n, "hpatk_version": __version__,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            })
            f.flush()  # the batch's data and headers are on disk before anything links them
            root[name] = grp
            f.flush()
        finally:
            f.close()
    return name


def remove_synthetic(path: str | os.PathLike[str], batches: Iterable[str] | None = None) -> int:
    """Unlink synthetic batches (all when ``batches`` is None); returns how many. HDF5
    does not shrink the file; ``h5repack`` does."""
    import h5py

    path = Path(path)
    read_cache_meta(path)
    close_readers(path)
    with writer_lock(path), h5py.File(path, "r+", locking=False) as f:
        root = f.require_group(SYN)
        names = sorted(root) if batches is None else list(batches)
        for name in names:
            if name not in root:
                raise HpatkError(f"{path}: no synthetic batch '{name}'")
            del root[name]
    return len(names)
