"""One class's real images from an hpatk cache, for training its GAN.

The rows are the cache's real images carrying the class (multi-label: an image of
Nucleoplasm + Cytosol counts for both), optionally only single-label ones, and with
``fold`` only the training part of that fold, computed exactly as ``hpatk train`` does
(``make_folds`` on the rows carrying one of the fold classes, stratified over those
columns, with the same k and seed), so ``hpatk train --aug gan --fold K`` can use the
samples without leaking its validation images into the GAN.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from hpatk.core.classes import CLASS_NAMES, NUM_CLASSES, class_subset
from hpatk.core.errors import HpatkError


def parse_class(value: str | int) -> int:
    """A class index from ``"0"``, ``0`` or a name (``"Nucleoplasm"``, case-insensitive)."""
    text = str(value).strip()
    if text.lstrip("-").isdigit():
        index = int(text)
        if not 0 <= index < NUM_CLASSES:
            raise HpatkError(f"--class {index}: classes are 0..{NUM_CLASSES - 1}")
        return index
    names = {n.lower(): i for i, n in enumerate(CLASS_NAMES)}
    if text.lower() in names:
        return names[text.lower()]
    close = difflib.get_close_matches(text, CLASS_NAMES, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise HpatkError(f"--class '{text}' is not a class index (0..{NUM_CLASSES - 1}) or "
                     f"name{hint}")


def top_classes(labels: np.ndarray, n: int) -> list[int]:
    """The ``n`` classes with the most images (ties: lower index first).

    Shape: labels (N, 28) -> list of n class indices.
    """
    counts = np.asarray(labels).astype(np.int64).sum(axis=0)
    order = sorted(range(len(counts)), key=lambda c: (-counts[c], c))
    return [c for c in order if counts[c] > 0][:n]


@dataclass(frozen=True)
class FoldSpec:
    """Which fold's training rows to use (as ``hpatk train --folds K --fold F --seed S``).

    Attributes:
        fold: the validation fold to leave out.
        folds: number of folds (k).
        seed: the folds' seed (``hpatk train --seed``).
        classes: the classes ``hpatk train`` uses (``--classes all|top5``): the folds are
            stratified over these columns of the rows carrying one of them.
        folds_file: an ``Id,fold`` CSV (e.g. ``RUN/folds.csv``) instead of computing them.
    """

    fold: int
    folds: int = 5
    seed: int = 0
    classes: tuple[int, ...] = tuple(range(NUM_CLASSES))
    folds_file: str | None = None

    def provenance(self) -> dict[str, Any]:
        """What the generator checkpoint records about its fold."""
        return {"fold": self.fold, "folds": self.folds, "fold_seed": self.seed,
                "fold_classes": list(self.classes), "folds_file": self.folds_file}


def fold_classes(text: str) -> tuple[int, ...]:
    """``all``, ``top5`` or a comma list of class indices (as ``hpatk train --classes``)."""
    text = str(text).strip()
    if text in ("all", "top5"):
        return class_subset(text)
    try:
        out = tuple(dict.fromkeys(int(t) for t in text.split(",") if t.strip()))
    except ValueError:
        out = ()
    if not out or not all(0 <= c < NUM_CLASSES for c in out):
        raise HpatkError(f"--fold-classes must be 'all', 'top5' or class indices like "
                         f"'0,25,2', not '{text}'")
    return out


def training_rows(labels: np.ndarray, ids: Sequence[str], spec: FoldSpec) -> np.ndarray:
    """Cache rows outside fold ``spec.fold`` (the rows ``hpatk train --fold`` trains on).

    Shape: labels (N, 28) -> sorted row indices (M,).
    """
    if not 0 <= spec.fold < spec.folds:
        raise HpatkError(f"--fold {spec.fold}: must be in 0..{spec.folds - 1} (--folds "
                         f"{spec.folds})")
    classes = list(spec.classes)
    rows = np.flatnonzero(np.asarray(labels)[:, classes].any(axis=1))
    if spec.folds_file:
        from hpatk.core.folds import read_folds

        table = read_folds(spec.folds_file)
        missing = [ids[i] for i in rows if ids[i] not in table]
        if missing:
            raise HpatkError(f"--folds-file '{spec.folds_file}' has no row for Id "
                             f"'{missing[0]}' ({len(missing)} missing)")
        folds = np.array([int(table[ids[i]]) for i in rows])
    else:
        from hpatk.core.folds import make_folds

        if len(rows) < spec.folds * 2:
            raise HpatkError(f"only {len(rows)} images carry the fold classes; too few for "
                             f"{spec.folds} folds")
        folds = np.asarray(make_folds(np.asarray(labels)[rows][:, classes], k=spec.folds,
                                      seed=spec.seed)).astype(int)
    return np.sort(rows[folds != spec.fold])


def class_rows(labels: np.ndarray, class_index: int, *, allowed: np.ndarray | None = None,
               exclusive: bool = False) -> np.ndarray:
    """Rows carrying ``class_index`` (only it, with ``exclusive``), within ``allowed``.

    Shape: labels (N, 28) -> sorted row indices (M,).
    """
    y = np.asarray(labels)
    mask = y[:, class_index] > 0
    if exclusive:
        mask &= y.sum(axis=1) == 1
    if allowed is not None:
        keep = np.zeros(len(y), bool)
        keep[allowed] = True
        mask &= keep
    return np.flatnonzero(mask)


def load_bank(cache: str | os.PathLike[str], rows: np.ndarray, size: int, *,
              max_memory: float = 4 * 2**30, desc: str = "reading") -> Any:
    """An :class:`~hpatk.plugins.augment_gan.trainer.ImageBank` of ``rows`` at ``size``.

    Resized once into memory when ``len(rows) * C * size**2`` bytes fit ``max_memory``;
    otherwise each training batch is read from the cache and resized on the fly.
    """
    from hpatk.core.cache import CacheDataset
    from hpatk.core.progress import progress
    from hpatk.plugins.augment_gan.trainer import ImageBank, resize_uint8

    ds = CacheDataset(Path(cache), indices=np.asarray(rows, dtype=np.int64))
    channels = int(ds.meta["shape"][1])
    if len(rows) * channels * size * size > max_memory:
        return ImageBank(size=size, n=len(rows),
                         reader=lambda idx: ds.read_batch(np.asarray(idx))[0])
    import torch

    step = 64
    chunks = [resize_uint8(ds.read_batch(np.arange(s, min(s + step, len(rows))))[0], size)
              for s in progress(range(0, len(rows), step), desc=desc, unit="batch")]
    images = torch.cat(chunks) if chunks else torch.empty(0, channels, size, size,
                                                         dtype=torch.uint8)
    ds.close()
    return ImageBank(images, size=size)
