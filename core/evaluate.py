"""Predictions and metrics of trained classifiers: ``predict_probs`` (one checkpoint on
a cache or dataset folder) and ``evaluate_run`` (``hpatk evaluate``: a run's validation
fold(s), or a whole dataset)."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from hpatk.core.errors import HpatkError


def _cache_for(ckpt: dict[str, Any], data: str | os.PathLike[str],
               cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache a checkpoint's model reads: ``data`` itself if it is a cache with the
    checkpoint's enhancement and size, else one built/reused from the dataset folder."""
    from hpatk.core.cache import ensure_cache, read_cache_meta
    from hpatk.core.train_data import enhance_of

    data = Path(data)
    if not data.exists():
        raise HpatkError(f"--data '{data}' does not exist")
    enh = dict(ckpt.get("enhance") or {"name": "none"})
    size = int(ckpt["size"])
    if data.is_dir():
        params = {k: v for k, v in enh.items() if k != "name"}
        return Path(ensure_cache(data, enhance=enh["name"], enhance_params=params or None,
                                 size=size, cache_dir=cache_dir))
    path = Path(ensure_cache(data))
    meta = read_cache_meta(path)
    if int(meta.get("size", 0)) != size:
        raise HpatkError(f"cache '{path}' holds {meta.get('size')} px images; the model was "
                         f"trained at {size} px (pass the dataset folder instead)")
    if enhance_of(meta) != enh:
        raise HpatkError(f"cache '{path}' was enhanced with {enhance_of(meta)}; the model "
                         f"expects {enh} (pass the dataset folder instead)")
    return path


def _stain_index(ckpt: dict[str, Any], cache_stains: list[str], path: Path) -> list[int] | None:
    stains = [str(s) for s in ckpt["stains"]]
    missing = [s for s in stains if s not in cache_stains]
    if missing:
        raise HpatkError(f"cache '{path}' has no stain '{missing[0]}' that the model needs")
    idx = [cache_stains.index(s) for s in stains]
    return None if idx == list(range(len(cache_stains))) else idx


@dataclass
class Predictions:
    """Per-image probabilities of one model (or the mean of several) on cache rows."""

    ids: list[str]
    rows: np.ndarray  # (N,) cache row indices
    probs: np.ndarray  # (N, K) float32
    targets: np.ndarray  # (N, K) uint8
    classes: list[int] = field(default_factory=list)


def predict_rows(ckpt: dict[str, Any], cache: Path, rows: np.ndarray | None, *,
                 device: str = "auto", batch_size: int = 64, workers: int = 0,
                 tta: str = "none") -> Predictions:
    """Run a checkpoint's model on cache ``rows`` (all when None); ``tta="flips"``
    averages the four flips (:mod:`hpatk.core.tta`, as ``hpatk predict --tta flips``).

    Shape:
        probs: (N, K) float32 sigmoid probabilities for ``ckpt["classes"]``.
    """
    import torch
    from hpatk.core.batching import BatchPrep, EpochBatchSampler, infer, make_loader
    from hpatk.core.cache import CacheDataset, cache_ids, read_cache_meta
    from hpatk.core.checkpoint import build_classifier
    from hpatk.core.classes import STAINS
    from hpatk.core.device import resolve_device

    dev = resolve_device(device)
    classes = [int(c) for c in ckpt["classes"]]
    meta = read_cache_meta(cache)
    all_ids = [str(i) for i in cache_ids(cache)]
    rows = np.arange(len(all_ids)) if rows is None else np.asarray(rows, dtype=int)
    if len(rows) and (rows.min() < 0 or rows.max() >= len(all_ids)):
        raise HpatkError(f"indices out of range for cache '{cache}' ({len(all_ids)} images)")
    ds = CacheDataset(cache, indices=rows, classes=classes)
    model = build_classifier(ckpt).to(dev)
    if dev.type == "cuda":
        model.to(memory_format=torch.channels_last)
    norm = ckpt["normalize"]
    prep = BatchPrep(norm["mean"], norm["std"], device=dev, channels_last=dev.type == "cuda",
                     stain_index=_stain_index(ckpt, [str(s) for s in meta.get("stains", STAINS)],
                                              cache))
    loader = make_loader(ds, EpochBatchSampler(len(ds), batch_size, shuffle=False),
                         workers=workers, pin_memory=dev.type == "cuda")
    amp = torch.bfloat16 if dev.type == "cuda" and torch.cuda.is_bf16_supported() else None
    res = infer(model, loader, prep, amp_dtype=amp,
                desc="predict" if len(ds) > 2000 else "", tta=tta)
    return Predictions([all_ids[i] for i in rows], rows, res.probs.astype(np.float32),
                       (res.targets > 0.5).astype(np.uint8), classes)


def predict_probs(checkpoint_path: str | os.PathLike[str], cache_or_dir: str | os.PathLike[str],
                  indices: Any = None, *, device: str = "cpu") -> tuple[list[str], np.ndarray]:
    """Probabilities of a classifier checkpoint on a cache (.h5) or dataset folder.

    The folder is cached with the checkpoint's enhancement and size (the same
    ``preprocess`` as ``hpatk predict``); images are normalised with the checkpoint's
    ``normalize``.

    Args:
        checkpoint_path: a classifier ``.pt`` written by ``hpatk train``.
        cache_or_dir: an hpatk cache or a dataset folder in the Kaggle layout.
        indices: cache rows to predict (all when None).

    Returns:
        (ids, probs): ids of the rows, in order, and float32 probabilities (N, K) for
        ``ckpt["classes"]``.
    """
    from hpatk.core.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint_path)
    if ckpt.get("kind") != "classifier":
        raise HpatkError(f"checkpoint '{checkpoint_path}' is not a classifier")
    cache = _cache_for(ckpt, cache_or_dir)
    p = predict_rows(ckpt, cache, None if indices is None else np.asarray(indices), device=device)
    return p.ids, p.probs


# -- hpatk evaluate ----------------------------------------------------------------------
@dataclass
class Evaluation:
    """Metrics of ``hpatk evaluate``."""

    what: str
    n: int
    class_names: list[str]
    at_half: dict[str, float]
    tuned: dict[str, float] | None
    per_class: np.ndarray
    per_class_tuned: np.ndarray | None
    support: np.ndarray


def evaluation_of(what: str, probs: np.ndarray, targets: np.ndarray, classes: list[int],
                  thresholds: Any = None) -> Evaluation:
    """The metrics of one model's probabilities: at 0.5 and (with ``thresholds``) as
    ``predict`` applies them (at least one label per image).

    Shape:
        probs (N, K) float, targets (N, K) 0/1, thresholds (K,) or None.
    """
    from hpatk.core.classes import CLASS_NAMES
    from hpatk.core.metrics import (
        apply_thresholds,
        classification_metrics,
        per_class_f1,
        predicted_metrics,
    )

    y = (np.asarray(targets) > 0.5).astype(np.uint8)
    tuned = pc_t = None
    if thresholds is not None:
        pred = np.asarray(apply_thresholds(probs, np.asarray(thresholds, dtype=np.float64),
                                           at_least_one=True), dtype=np.uint8)
        tuned, pc_t = predicted_metrics(y, pred), np.asarray(per_class_f1(y, pred))
    return Evaluation(what, len(y), [CLASS_NAMES[c] for c in classes],
                      classification_metrics(y, probs),
                      tuned, np.asarray(per_class_f1(y, (probs >= 0.5).astype(np.uint8))),
                      pc_t, y.sum(0).astype(int))


def evaluate_run(run: str | os.PathLike[str], *, data: str | None = None,
                 fold: int | None = None, checkpoint: str = "best_macro_f1",
                 out: str | os.PathLike[str] | None = None, device: str = "auto",
                 workers: int = 0, tta: str = "none") -> Evaluation:
    """Recompute a run's metrics.

    Without ``data``: on the validation fold (the run's fold; every fold out-of-fold,
    each with its own model, for an all-folds run; ``fold`` picks one). With ``data``
    (a cache or dataset folder): on all its images carrying one of the run's classes,
    with the fold's model, or the mean probability of every fold's model.

    Args:
        out: optional CSV of per-image predictions (Id, Target, Predicted, p_<class>...).
        tta: ``flips`` averages the probabilities of the four flips of each image.
    """
    from hpatk.core.checkpoint import load_checkpoint
    from hpatk.core.classes import CLASS_NAMES
    from hpatk.core.metrics import (
        apply_thresholds,
        classification_metrics,
        per_class_f1,
        predicted_metrics,
    )
    from hpatk.core.train_config import read_config
    from hpatk.core.tta import tta_axes

    tta_axes(tta)  # an unknown tta fails before any work
    run = Path(run)
    cfg = read_config(run / "config.yaml")
    names = ("best_macro_f1", "best_loss", "best_micro_f1", "last")
    if checkpoint not in names:
        raise HpatkError(f"--checkpoint must be one of {', '.join(names)}, not '{checkpoint}'")
    if cfg.fold == "all":
        if fold is not None and fold not in range(cfg.folds):
            raise HpatkError(f"--fold {fold}: the run has folds 0..{cfg.folds - 1}")
        folds = cfg.fold_list() if fold is None else [fold]
        dirs = {k: run / f"fold_{k}" for k in folds}
    else:
        if fold is not None and fold != cfg.fold:
            raise HpatkError(f"--fold {fold}: run '{run}' trained fold {cfg.fold} only "
                             f"(its other folds are training data)")
        dirs = {int(cfg.fold): run}
    ckpts = {}
    for k, d in dirs.items():
        path = d / f"{checkpoint}.pt"
        if not path.exists():
            raise HpatkError(f"run '{run}': '{path}' does not exist (did training finish?)")
        ckpts[k] = load_checkpoint(path)
    first = next(iter(ckpts.values()))
    classes = [int(c) for c in first["classes"]]
    if data is None:
        cache = _cache_for(first, cfg.data, cfg.cache_dir)
        table = _read_run_folds(run / "folds.csv")
        from hpatk.core.cache import cache_ids

        ids = [str(i) for i in cache_ids(cache)]
        pos = {i: r for r, i in enumerate(ids)}
        parts = []
        for k, ck in ckpts.items():
            rows = np.array([pos[i] for i, f in table.items() if f == k and i in pos], dtype=int)
            if len(rows) == 0:
                raise HpatkError(f"run '{run}': fold {k} has no images in cache '{cache}'")
            parts.append((predict_rows(ck, cache, np.sort(rows), device=device, workers=workers,
                                       tta=tta),
                          ck))
        what = (f"validation fold {next(iter(ckpts))}" if len(ckpts) == 1
                else f"out-of-fold validation, folds {','.join(map(str, ckpts))}")
        preds = _concat([p for p, _ in parts])
        ths = [ck.get("thresholds") for _, ck in parts]
        sizes = [len(p.ids) for p, _ in parts]
    else:
        from hpatk.core.cache import cache_labels

        cache = _cache_for(first, data, cfg.cache_dir)
        labels = np.asarray(cache_labels(cache))
        rows = np.flatnonzero(labels[:, classes].any(axis=1))
        if len(rows) == 0:
            raise HpatkError(f"--data '{data}': no image carries one of the run's classes")
        runs = [predict_rows(ck, cache, rows, device=device, workers=workers, tta=tta)
                for ck in ckpts.values()]
        preds = runs[0]
        preds.probs = np.mean([r.probs for r in runs], axis=0).astype(np.float32)
        ths = [ck.get("thresholds") for ck in ckpts.values()]
        # the mean model gets the mean thresholds
        ths = [np.mean(ths, axis=0)] if all(t is not None for t in ths) else [None]
        sizes = [len(preds.ids)]
        what = f"'{data}' ({len(ckpts)} model{'s' if len(ckpts) > 1 else ''})"

    y = preds.targets
    at_half = classification_metrics(y, preds.probs)
    pc = per_class_f1(y, (preds.probs >= 0.5).astype(np.uint8))
    tuned = pc_t = None
    pred = (preds.probs >= 0.5).astype(np.uint8)
    if all(t is not None for t in ths):
        # each fold's rows with that fold's model's thresholds
        bounds = np.cumsum([0, *sizes])
        pred = np.concatenate([
            np.asarray(apply_thresholds(preds.probs[a:b], np.asarray(t, dtype=np.float64),
                                        at_least_one=True), dtype=np.uint8)
            for a, b, t in zip(bounds[:-1], bounds[1:], ths, strict=True)])
        tuned = predicted_metrics(y, pred)
        pc_t = per_class_f1(y, pred)
    if out is not None:
        _write_predictions(out, preds, pred, classes)
    return Evaluation(what, len(y), [CLASS_NAMES[c] for c in classes], at_half, tuned,
                      np.asarray(pc), None if pc_t is None else np.asarray(pc_t),
                      y.sum(0).astype(int))


def _read_run_folds(path: Path) -> dict[str, int]:
    from hpatk.core.folds import read_folds

    if not path.exists():
        raise HpatkError(f"run folder has no '{path.name}'; cannot find the validation fold")
    return read_folds(path)


def _concat(parts: list[Predictions]) -> Predictions:
    return Predictions([i for p in parts for i in p.ids], np.concatenate([p.rows for p in parts]),
                       np.concatenate([p.probs for p in parts]),
                       np.concatenate([p.targets for p in parts]), parts[0].classes)


def _write_predictions(path: str | os.PathLike[str], preds: Predictions, pred: np.ndarray,
                       classes: list[int]) -> None:
    from hpatk.core.io import atomic_open

    with atomic_open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["Id", "Target", "Predicted", *[f"p_{c}" for c in classes]])
        for i, image_id in enumerate(preds.ids):
            target = " ".join(str(c) for c, t in zip(classes, preds.targets[i], strict=True) if t)
            predicted = " ".join(str(c) for c, t in zip(classes, pred[i], strict=True) if t)
            w.writerow([image_id, target, predicted, *[f"{p:.6f}" for p in preds.probs[i]]])
