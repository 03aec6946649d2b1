"""What a training run reads: the cache (built or reused), the class subset, the folds,
and the datasets of one fold (real, plus fold-safe synthetic samples with a synthesizer
``--aug``)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from hpatk.core.classes import STAINS
from hpatk.core.errors import DataError, HpatkError
from hpatk.core.train_config import TrainConfig

if TYPE_CHECKING:
    from hpatk.core.cache import CacheIndex


@dataclass
class DataPlan:
    """A cache and how a run splits it.

    Attributes:
        rows: cache rows used (those with at least one label among ``classes``), (M,).
        folds: fold of each used row, (M,).
    """

    path: Path
    meta: dict[str, Any]
    ids: list[str]
    labels: np.ndarray  # (N, 28) uint8, every real row of the cache
    classes: tuple[int, ...]
    rows: np.ndarray
    folds: np.ndarray
    cache_stains: list[str]
    stains: list[str]
    size: int
    enhance: dict[str, Any]
    index: CacheIndex | None = None  # what was read from the file (datasets reuse it)
    real_per_class: int | None = None  # subsample the training rows (``--real-per-class``)
    seed: int = 0

    def split(self, fold: int) -> tuple[np.ndarray, np.ndarray]:
        """(train rows, validation rows) of ``fold``, as cache row indices; with
        ``real_per_class``, the training rows are :func:`subsample_per_class` of them (the
        same for every run with this seed: classifiers and generators see the same images)."""
        train, val = self.rows[self.folds != fold], self.rows[self.folds == fold]
        if self.real_per_class:
            keep = subsample_per_class(self.labels[train][:, list(self.classes)],
                                       int(self.real_per_class), seed=self.seed + fold)
            train = train[keep]
        return train, val

    @property
    def stain_index(self) -> list[int] | None:
        """Channels to take from the cache, or None for all of them in order."""
        idx = [self.cache_stains.index(s) for s in self.stains]
        return None if idx == list(range(len(self.cache_stains))) else idx


def subsample_per_class(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Sorted row indices such that every class has about ``n`` images (all it has when
    fewer): classes are filled rarest first, each with random images carrying it, counting
    the images already taken for other classes (multi-label images count for each label).

    Shape:
        (N, K) 0/1 -> (M,) int64, M <= N.
    """
    y = np.asarray(labels).astype(bool)
    rng = np.random.default_rng(seed)
    taken = np.zeros(len(y), bool)
    for c in np.argsort(y.sum(0), kind="stable"):
        need = n - int((taken & y[:, c]).sum())
        if need > 0:
            free = np.flatnonzero(y[:, c] & ~taken)
            taken[rng.permutation(free)[:need]] = True
    return np.flatnonzero(taken)


def enhance_of(meta: dict[str, Any]) -> dict[str, Any]:
    """The enhancement config (``{"name": ..., **params}``) a cache records."""
    enh = meta.get("enhance")  # the cache records the enhancer's config() dict
    if isinstance(enh, dict):
        return dict(enh)
    if isinstance(enh, str):
        params = meta.get("enhance_params") or {}
        return {"name": enh, **(params if isinstance(params, dict) else {})}
    return {"name": "none"}


def open_cache(cfg: TrainConfig) -> CacheIndex:
    """Build or reuse the cache for ``cfg.data``; check it agrees with the options.

    Returns:
        The cache's index (metadata, labels, Ids), read in one open of the file.
    """
    from hpatk.core.cache import DEFAULT_ENHANCE, DEFAULT_SIZE, ensure_cache, read_cache_index
    from hpatk.core.distributed import is_main

    data = Path(cfg.data)
    if not cfg.data:
        raise HpatkError("--data is required (a cache .h5 or a dataset folder)")
    if not data.exists():
        raise HpatkError(f"--data '{data}' does not exist")
    if data.is_file():
        index = read_cache_index(data)  # validates the file
        path, meta = index.path, index.meta
        size = int(meta.get("size", 0))
        if cfg.size is not None and int(cfg.size) != size:
            raise HpatkError(f"{cfg.where('size')} {cfg.size}: cache '{path}' holds {size} px "
                             f"images; pass the dataset folder or build a cache with "
                             f"--size {cfg.size}")
        enh = enhance_of(meta)
        if cfg.enhance is not None and cfg.enhance != enh.get("name"):
            raise HpatkError(f"{cfg.where('enhance')} {cfg.enhance}: cache '{path}' was enhanced "
                             f"with '{enh.get('name')}'; pass the dataset folder to rebuild it")
        return index
    kw: dict[str, Any] = dict(enhance=cfg.enhance or DEFAULT_ENHANCE,
                              enhance_params=cfg.enhance_params or None,
                              size=int(cfg.size or DEFAULT_SIZE), cache_dir=cfg.cache_dir)
    # under torchrun rank 0 builds or checks it first and says so; the others reuse it
    return read_cache_index(ensure_cache(data, **kw, quiet=not is_main()))


def plan_data(cfg: TrainConfig, folds_csv: str | os.PathLike[str] | None = None) -> DataPlan:
    """Open the cache and assign folds (multilabel-stratified on the used classes,
    deterministic for ``cfg.seed``), or read them from ``folds_csv``."""
    from hpatk.core.folds import assign_folds

    index = open_cache(cfg)
    path, meta, labels, ids = index.path, index.meta, index.labels, index.ids
    counts = np.asarray(labels).sum(axis=0)
    classes = cfg.class_indices(counts)
    warn_sparse_classes(cfg.classes, classes, counts, str(cfg.data))
    try:
        rows, folds = assign_folds(labels, ids, classes, k=cfg.folds, seed=cfg.seed,
                                   folds_file=folds_csv or cfg.folds_file)
    except DataError as exc:
        raise HpatkError(f"--data '{cfg.data}': {exc}") from None
    cache_stains = [str(s) for s in meta.get("stains", STAINS)]
    stains = list(cfg.in_stains) if cfg.in_stains else list(cache_stains)
    missing = [s for s in stains if s not in cache_stains]
    if missing:
        raise HpatkError(f"{cfg.where('in_stains')}: cache '{path}' has no stain '{missing[0]}' "
                         f"(it has {', '.join(cache_stains)})")
    return DataPlan(path=path, meta=meta, ids=ids, labels=labels, classes=classes, rows=rows,
                    folds=folds, cache_stains=cache_stains, stains=stains,
                    size=int(meta.get("size", cfg.size or 0)), enhance=enhance_of(meta),
                    index=index, real_per_class=cfg.real_per_class, seed=cfg.seed)


_WARNED: set[tuple[str, tuple[int, ...]]] = set()


def sparse_classes(classes: tuple[int, ...], counts: np.ndarray,
                   n_min: int | None = None) -> list[int]:
    """The selected classes with fewer than ``n_min`` (``PRESENT_MIN``) images."""
    from hpatk.core.classes import PRESENT_MIN

    n_min = PRESENT_MIN if n_min is None else n_min
    return [c for c in classes if int(counts[c]) < n_min]


def warn_sparse_classes(spec: Any, classes: tuple[int, ...], counts: np.ndarray,
                        source: str) -> list[int]:
    """Warn once per data and class set (stderr) about selected classes with too few
    images to learn or score: they dilute a mean over all classes. Returns them."""
    from hpatk.core.classes import CLASS_NAMES, PRESENT_MIN, present_min

    if present_min(spec) is not None:
        return []
    from hpatk.core.distributed import is_main

    sparse = sparse_classes(classes, counts)
    key = (source, tuple(classes))
    if not sparse or key in _WARNED or not is_main():  # once, by rank 0 under torchrun
        return sparse
    _WARNED.add(key)
    shown = ", ".join(f"{CLASS_NAMES[c]} ({int(counts[c])})" for c in sparse[:8])
    more = f" and {len(sparse) - 8} more" if len(sparse) > 8 else ""
    kept = len(classes) - len(sparse)
    print(f"warning: --classes {spec}: {len(sparse)} of {len(classes)} classes have fewer "
          f"than {PRESENT_MIN} images in '{source}': {shown}{more}; they cannot be learned or "
          f"scored reliably (hpatk's macro F1 counts only classes present, the all-class mean "
          f"is diluted by them); --classes present trains on the {kept} with {PRESENT_MIN} "
          f"or more (present:N for another N)", file=sys.stderr)
    return sparse


def write_run_folds(plan: DataPlan, path: str | os.PathLike[str]) -> None:
    """``folds.csv`` (Id,fold) of the rows this run uses."""
    from hpatk.core.folds import write_folds

    write_folds(path, [plan.ids[i] for i in plan.rows], plan.folds.tolist())


def fold_datasets(plan: DataPlan, fold: int, *,
                  synthetic_rows: np.ndarray | None = None) -> tuple[Any, Any, int]:
    """Training and validation datasets of ``fold``; the training set adds the cache's
    synthetic rows ``synthetic_rows`` (numbered as in ``synthetic_info``; chosen
    fold-safely by :func:`hpatk.core.synthetic.synthesize_fold`).

    Returns:
        (train dataset, validation dataset, number of synthetic samples added).
    """
    from hpatk.core.cache import CacheDataset
    from torch.utils.data import ConcatDataset

    train_rows, val_rows = plan.split(fold)
    classes = list(plan.classes)
    train = CacheDataset(plan.path, indices=train_rows, classes=classes, index=plan.index)
    val = CacheDataset(plan.path, indices=val_rows, classes=classes, index=plan.index)
    if synthetic_rows is None or len(synthetic_rows) == 0:
        return train, val, 0
    syn = CacheDataset(plan.path, indices=synthetic_rows, synthetic="only", classes=classes)
    return ConcatDataset([train, syn]), val, len(synthetic_rows)
