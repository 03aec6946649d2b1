"""What a training run reads: the cache (built or reused), the class subset, the folds,
and the datasets of one fold (real, plus GAN samples of that fold with ``--aug gan``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from hpatk.core.classes import STAINS
from hpatk.core.errors import HpatkError
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
    from hpatk.core.cache import ensure_cache, read_cache_index

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
            raise HpatkError(f"--size {cfg.size}: cache '{path}' holds {size} px images; pass "
                             f"the dataset folder or build a cache with --size {cfg.size}")
        enh = enhance_of(meta)
        if cfg.enhance is not None and cfg.enhance != enh.get("name"):
            raise HpatkError(f"--enhance {cfg.enhance}: cache '{path}' was enhanced with "
                             f"'{enh.get('name')}'; pass the dataset folder to rebuild it")
        return index
    kw: dict[str, Any] = dict(enhance=cfg.enhance or "clahe",
                              enhance_params=cfg.enhance_params or None,
                              size=int(cfg.size or 512), cache_dir=cfg.cache_dir)
    return read_cache_index(ensure_cache(data, **kw))


def plan_data(cfg: TrainConfig, folds_csv: str | os.PathLike[str] | None = None) -> DataPlan:
    """Open the cache and assign folds (multilabel-stratified on the used classes,
    deterministic for ``cfg.seed``), or read them from ``folds_csv``."""
    index = open_cache(cfg)
    path, meta, labels, ids = index.path, index.meta, index.labels, index.ids
    classes = cfg.class_indices()
    rows = np.flatnonzero(labels[:, list(classes)].any(axis=1))
    if len(rows) < cfg.folds * 2:
        raise HpatkError(f"--data '{cfg.data}': only {len(rows)} images carry one of the "
                         f"{len(classes)} selected classes; too few for {cfg.folds} folds")
    source = folds_csv or cfg.folds_file
    if source:
        folds = _folds_from_file(source, [ids[i] for i in rows], cfg.folds)
    else:
        from hpatk.core.folds import make_folds

        folds = np.asarray(make_folds(labels[rows][:, list(classes)], k=cfg.folds,
                                      seed=cfg.seed)).astype(int)
    cache_stains = [str(s) for s in meta.get("stains", STAINS)]
    stains = list(cfg.in_stains) if cfg.in_stains else list(cache_stains)
    missing = [s for s in stains if s not in cache_stains]
    if missing:
        raise HpatkError(f"--in-stains: cache '{path}' has no stain '{missing[0]}' "
                         f"(it has {', '.join(cache_stains)})")
    return DataPlan(path=path, meta=meta, ids=ids, labels=labels, classes=classes, rows=rows,
                    folds=folds, cache_stains=cache_stains, stains=stains,
                    size=int(meta.get("size", cfg.size or 0)), enhance=enhance_of(meta),
                    index=index, real_per_class=cfg.real_per_class, seed=cfg.seed)


def _folds_from_file(path: str | os.PathLike[str], ids: list[str], k: int) -> np.ndarray:
    from hpatk.core.folds import read_folds

    table = _as_fold_map(read_folds(path))
    missing = [i for i in ids if i not in table]
    if missing:
        raise HpatkError(f"folds file '{path}' has no row for Id '{missing[0]}' "
                         f"({len(missing)} missing)")
    folds = np.array([table[i] for i in ids], dtype=int)
    if folds.min() < 0 or folds.max() >= k:
        raise HpatkError(f"folds file '{path}' has folds outside 0..{k - 1}")
    return folds


def _as_fold_map(obj: Any) -> dict[str, int]:
    """``read_folds`` may return a dict Id -> fold or (ids, folds); accept both."""
    if isinstance(obj, dict):
        return {str(k): int(v) for k, v in obj.items()}
    ids, folds = obj
    return {str(i): int(f) for i, f in zip(ids, folds, strict=True)}


def write_run_folds(plan: DataPlan, path: str | os.PathLike[str]) -> None:
    """``folds.csv`` (Id,fold) of the rows this run uses."""
    from hpatk.core.folds import write_folds

    write_folds(path, [plan.ids[i] for i in plan.rows], plan.folds.tolist())


def fold_datasets(plan: DataPlan, fold: int, *, synthetic: bool = False) -> tuple[Any, Any, int]:
    """Training and validation datasets of ``fold``.

    With ``synthetic``, the training set adds the cache's GAN samples whose generator was
    trained on this fold's training part (provenance fold == ``fold``). Samples of a
    generator trained on all images (fold None) or on another fold have seen this fold's
    validation images, so they are never used.

    Returns:
        (train dataset, validation dataset, number of synthetic samples added).
    """
    from hpatk.core.cache import CacheDataset
    from torch.utils.data import ConcatDataset

    train_rows, val_rows = plan.split(fold)
    classes = list(plan.classes)
    train = CacheDataset(plan.path, indices=train_rows, classes=classes, index=plan.index)
    val = CacheDataset(plan.path, indices=val_rows, classes=classes, index=plan.index)
    if not synthetic:
        return train, val, 0
    syn_rows = synthetic_rows(plan, fold)
    if len(syn_rows) == 0:
        raise HpatkError(f"--aug gan: cache '{plan.path}' has no synthetic samples of "
                         f"classes {classes} from generators trained on fold {fold}'s training "
                         f"images; run hpatk gan train --fold {fold} and hpatk gan sample "
                         f"first (samples of generators without --fold saw the validation "
                         f"images)")
    syn = CacheDataset(plan.path, indices=syn_rows, synthetic="only", classes=classes)
    return ConcatDataset([train, syn]), val, len(syn_rows)


def synthetic_rows(plan: DataPlan, fold: int) -> np.ndarray:
    """Rows of the synthetic group usable for training ``fold`` (see :func:`fold_datasets`)."""
    from hpatk.core.cache import synthetic_info

    info = synthetic_info(plan.path)
    n = len(info.get("class_index", []))
    if n == 0:
        return np.zeros(0, dtype=int)
    cls = np.asarray(info["class_index"], dtype=int)
    prov = np.asarray(info["fold"], dtype=int)  # -1 = None
    ok = (prov == fold) & np.isin(cls, plan.classes)
    return np.flatnonzero(ok)
