"""Synthetic augmentation in a training run: generators fitted on exactly one fold's
training images, reused by fingerprint, sampled into the cache's synthetic group, and
admitted to a fold only when their training images are a subset of its training images.

Any registered synthesizer works (``hpatk registry synthesizers``); this module knows
none by name. Its parts:

- :func:`resolve_aug`: what ``--aug NAME`` means (a batch augmentation, a synthesizer, or
  ``none``), decided once, before anything is written.
- :func:`generator_key`: the fingerprint a generator is reused by: (cache fingerprint,
  the exact set of training-image Ids, class(es), synthesizer name and parameters, seed).
- generator checkpoints (save, load through the registry, sample) are
  :mod:`hpatk.core.generator`'s.
- :func:`synthesize_fold`: the step ``hpatk train --aug NAME`` runs before each fold.

The generator store of ``cache.h5`` is the folder ``cache.synth/`` beside it:
``<key>/generator.pt`` plus whatever the synthesizer writes while fitting (losses, sample
grids, its resumable state).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from hpatk.core.base import Synthesizer
from hpatk.core.classes import CLASS_NAMES
from hpatk.core.errors import HpatkError, RegistryError, typed_line
from hpatk.core.generator import (
    build_synthesizer,
    load_generator,
    read_images,
    resize_uint8,
    sample_into_cache,
    save_generator,
)

SOURCES = ("fit", "cache")


# -- what --aug means ----------------------------------------------------------------------
@dataclass(frozen=True)
class AugChoice:
    """``--aug`` resolved: the batch augmentation applied on the training device (or None)
    and the synthesizer whose samples join the training images (or None)."""

    batch: str | None = None
    batch_params: dict[str, Any] = field(default_factory=dict)
    synth: str | None = None
    synth_params: dict[str, Any] = field(default_factory=dict)


def resolve_aug(aug: str, aug_params: dict[str, Any] | None, batch_aug: str) -> AugChoice:
    """``aug`` names a batch augmentation (``aug_params`` are its), a synthesizer (its
    parameters; ``batch_aug`` still augments every batch, ``none`` switches that off) or
    ``none``.

    Raises:
        RegistryError: an unknown name (naming both kinds' names and close matches).
    """
    from hpatk.core.catalog import did_you_mean
    from hpatk.core.registry import get_registry

    reg = get_registry()
    params = dict(aug_params or {})
    if aug == "none":
        return AugChoice()
    if aug in reg.synthesizers:
        batch = None if batch_aug == "none" else batch_aug
        if batch is not None:
            reg.augmentations.get(batch)  # the catalogue's one-line "unknown" error
        return AugChoice(batch=batch, synth=reg.synthesizers.canonical(aug),
                         synth_params=params)
    if aug in reg.augmentations:
        return AugChoice(batch=aug, batch_params=params)
    hint = did_you_mean(aug, ["none", *reg.augmentations.names(), *reg.synthesizers.names()])
    raise RegistryError(f"--aug: unknown augmentation or synthesizer '{aug}'{hint} "
                        f"(augmentations: {', '.join(reg.augmentations.names())}; "
                        f"synthesizers: {', '.join(reg.synthesizers.names())}; or none)")


# -- fingerprints --------------------------------------------------------------------------
def generator_key(*, cache_fingerprint: str, ids_sha256: str, classes: Sequence[int],
                  synthesizer: str, params: dict[str, Any], seed: int) -> str:
    """The fingerprint a fitted generator is reused by (20 hex digits)."""
    blob = json.dumps({"cache": cache_fingerprint, "ids": ids_sha256,
                       "classes": [int(c) for c in classes], "synthesizer": synthesizer,
                       "params": params, "seed": int(seed)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def store_dir(cache: str | os.PathLike[str]) -> Path:
    """The generator store of a cache: ``cache.synth/`` beside ``cache.h5``."""
    cache = Path(cache)
    return cache.with_name(cache.stem + ".synth")


def save_sample_grid(real: np.ndarray, fake: np.ndarray, stains: Sequence[str],
                     path: Path, title: str) -> Path:
    """Real images (top row) above synthetic ones, as stain composites."""
    import torch
    from hpatk.core.picture import save_grid

    cols = 8
    real, fake = real[:cols], fake[:2 * cols]
    size = int(fake.shape[-1])
    real = resize_uint8(real, size) if len(real) else real
    blank = np.zeros((cols - len(real), *fake.shape[1:]), np.uint8)
    images = np.concatenate([real, blank, fake]) if len(real) else fake
    return save_grid(torch.from_numpy(images), stains, path, title=title, cols=cols)


# -- the training-run step -----------------------------------------------------------------
@dataclass
class FoldSynthetic:
    """What :func:`synthesize_fold` chose: synthetic rows (numbered as in
    :func:`hpatk.core.cache.synthetic_info`) and one record per generator."""

    rows: np.ndarray
    records: list[dict[str, Any]]


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def synthesize_fold(plan: Any, fold: int, run_dir: Path, choice: AugChoice, *,
                    per_class_n: int, seed: int, source: str = "fit",
                    progress: bool = True, write: bool = True,
                    share: Callable[[list[Any]], list[Any]] | None = None,
                    done: dict[str, tuple[str, float]] | None = None) -> FoldSynthetic:
    """Synthetic images for training ``fold``: fit (or reuse) generators on exactly its
    training images, sample ``per_class_n`` per class into the cache, and return the rows.

    With ``source="cache"`` nothing is fitted: the cache's existing samples of the
    selected classes are used where fold-safe, and refused (with the reason) otherwise.

    Every returned row's generator learnt only from this fold's training images: checked
    on the Ids stored with each batch, whatever produced it.

    Writes ``run_dir/synthetic/class_XX.png`` (real vs synthetic) and
    ``run_dir/synthetic.csv`` (unless ``write`` is False: DDP ranks other than 0).

    Under DDP, each rank first runs this with ``share`` (its round-robin share of the
    generators, ``hpatk.core.distributed.spread``) and ``write=False``: it only fits
    (nothing writes the cache while the ranks read it); then rank 0 runs it whole,
    sampling into the cache, with ``done`` (key -> (source, seconds), what the ranks did)
    so that ``synthetic.csv`` says what really happened; the others then read the rows.
    """
    from hpatk.core.cache import read_cache_meta, synthetic_info

    assert choice.synth is not None
    train_rows, _ = plan.split(fold)
    fold_ids = {plan.ids[r] for r in train_rows}
    classes = [int(c) for c in plan.classes]
    if source == "cache":  # (fitting uses only its own generators' batches, checked below)
        safe, refused = _safe_batches(plan.path, classes, fold_ids)
        for batch, why in refused if write else ():
            _say(f"fold {fold}: not using synthetic/{batch['batch']} ({batch['n']} images of "
                 f"class {batch['class_index']}, generator {batch['generator']}): {why}")
        records = []
        rows = _cache_rows(plan.path, safe, classes, per_class_n)
        if len(rows) == 0:
            why = f" ({len(refused)} batches refused, above)" if refused else ""
            raise HpatkError(f"--synthetic-source cache: cache '{plan.path}' has no fold-safe "
                             f"synthetic samples of classes {classes} for fold {fold}{why}; "
                             f"use --synthetic-source fit to fit generators on this fold")
        info = synthetic_info(plan.path)
        for c in classes:
            n = int(np.sum(np.asarray(info["class_index"])[rows] == c))
            records.append({"fold": fold, "class": c, "name": CLASS_NAMES[c],
                            "synthesizer": "(cache)", "key": "", "train_images": "",
                            "samples": n, "source": "cache", "seconds": 0.0,
                            "generator": ""})
        if write:
            _write_records(run_dir, records)
        return FoldSynthetic(rows, records)

    meta = read_cache_meta(plan.path)
    store = store_dir(plan.path)
    probe = build_synthesizer(choice.synth, choice.synth_params)
    groups = ([([c], train_rows[plan.labels[train_rows, c] > 0]) for c in classes]
              if probe.per_class else [(classes, train_rows)])
    records = []
    for targets, rows in (share(groups) if share is not None else groups):
        records += _one_generator(plan, fold, run_dir, choice, store, meta, targets, rows,
                                  per_class_n=per_class_n, seed=seed, progress=progress,
                                  write=write, done=done, fit_only=share is not None)
    if share is not None:
        return FoldSynthetic(np.zeros(0, np.int64), records)
    safe, _ = _safe_batches(plan.path, classes, fold_ids)
    keys = {r["key"] for r in records}
    rows = _cache_rows(plan.path, [b for b in safe if b["key"] in keys], classes,
                       per_class_n)
    want = sum(per_class_n for r in records if r["samples"])
    if len(rows) != want:  # a generator's samples failed the content check
        raise HpatkError(f"fold {fold}: {want - len(rows)} synthetic images of this run's "
                         f"generators are not fold-safe in '{plan.path}'; remove "
                         f"'{store}' and the cache's synthetic group, then rerun")
    if write:
        _write_records(run_dir, records)
    return FoldSynthetic(rows, records)


def _one_generator(plan: Any, fold: int, run_dir: Path, choice: AugChoice, store: Path,
                   meta: dict[str, Any], targets: list[int], rows: np.ndarray, *,
                   per_class_n: int, seed: int, progress: bool, write: bool = True,
                   done: dict[str, tuple[str, float]] | None = None,
                   fit_only: bool = False) -> list[dict[str, Any]]:
    """Fit or reuse the generator of ``targets`` on ``rows``; sample what is missing."""
    from hpatk.core.cache import ids_digest, synthetic_info

    assert choice.synth is not None
    what = (f"class {targets[0]} ({CLASS_NAMES[targets[0]]})" if len(targets) == 1
            else f"classes {','.join(map(str, targets))}")
    if len(rows) == 0:
        _say(f"fold {fold}: {what}: no training image; no synthetic images")
        return [{"fold": fold, "class": c, "name": CLASS_NAMES[c], "synthesizer": choice.synth,
                 "key": "", "train_images": 0, "samples": 0, "source": "none",
                 "seconds": 0.0, "generator": ""} for c in targets]
    ids = sorted(plan.ids[r] for r in rows)
    probe = build_synthesizer(choice.synth, choice.synth_params)
    key = generator_key(cache_fingerprint=str(meta.get("fingerprint", "")),
                        ids_sha256=ids_digest(ids), classes=targets, synthesizer=choice.synth,
                        params=probe.params, seed=seed)
    info = synthetic_info(plan.path)
    have = {c: int(sum(1 for k, ci in zip(info["key"], info["class_index"], strict=True)
                       if k == key and ci == c)) for c in targets}
    gen_dir = store / key
    gen_path = gen_dir / "generator.pt"
    t0 = time.monotonic()
    # a conditional generator's class without a training image gets no samples
    present = [c for c in targets if plan.labels[rows, c].any()]
    if all(have[c] >= per_class_n for c in present):
        source = "reused samples"
    elif gen_path.is_file():
        source = "reused generator"
    else:
        source = "fitted"
        _say(f"fold {fold}: {what}: fitting {choice.synth} on {len(rows)} training images "
             f"-> {gen_dir}")
        images = read_images(plan.path, np.sort(rows), probe.image_size,
                             desc=f"fold {fold} {what} images" if progress else "")
        labels = plan.labels[np.sort(rows)][:, targets].astype(np.uint8)
        synth = build_synthesizer(choice.synth, choice.synth_params)
        gen_dir.mkdir(parents=True, exist_ok=True)
        summary = fit_synthesizer(synth, images, labels, classes=targets, out_dir=gen_dir,
                                  seed=seed, stains=plan.cache_stains, progress=progress,
                                  resume=True)
        save_generator(gen_path, synth, name=choice.synth, classes=targets, train_ids=ids,
                       train_labels=labels, stains=plan.cache_stains, enhance=plan.enhance,
                       fold=fold, key=key, cache_fingerprint=str(meta.get("fingerprint", "")),
                       seed=seed, summary=summary)
    records = []
    # fit_only (DDP's parallel phase): the cache is not written while other ranks read it
    gen = None if source == "reused samples" or fit_only else load_generator(gen_path)
    seconds = time.monotonic() - t0
    if done and key in done:  # another rank fitted or sampled it moments ago
        source, seconds = done[key]
    for c in targets:
        if gen is not None and c in present and have[c] < per_class_n:
            sample_into_cache(gen, plan.path, c, per_class_n, seed=seed, resize=True)
        records.append({"fold": fold, "class": c, "name": CLASS_NAMES[c],
                        "synthesizer": choice.synth, "key": key,
                        "train_images": int(plan.labels[rows, c].sum()),
                        "samples": per_class_n if c in present else 0,
                        "source": source if c in present else "none",
                        "seconds": round(seconds, 1),
                        "generator": str(gen_path)})
    if write:
        _grids(plan, run_dir, key, targets, rows, choice.synth, fold)
        _say(f"fold {fold}: {what}: {per_class_n} synthetic images per class ({source}, "
             f"{seconds:.0f}s)")
    return records


def fit_synthesizer(synth: Synthesizer, images: np.ndarray, labels: np.ndarray, *,
                    classes: Sequence[int], out_dir: Path | None, seed: int,
                    stains: Sequence[str], progress: bool = True,
                    resume: bool = False) -> dict[str, Any]:
    """``synth.fit(...)``; a plugin's failure becomes one line naming the synthesizer."""
    try:
        summary = synth.fit(images, labels, classes=list(classes), out_dir=out_dir,
                            seed=int(seed), progress=progress, resume=resume,
                            stains=list(stains))
    except (HpatkError, KeyboardInterrupt):
        raise
    except Exception as exc:
        raise HpatkError(f"synthesizer '{synth.name}' failed to fit: "
                         f"{typed_line(exc)}") from exc
    return dict(summary or {})


def _grids(plan: Any, run_dir: Path, key: str, targets: list[int], rows: np.ndarray,
           name: str, fold: int) -> None:
    """``run_dir/synthetic/class_XX.png``: 8 real training images above 16 samples."""
    from hpatk.core.cache import CacheDataset, synthetic_info

    info = synthetic_info(plan.path)
    for c in targets:
        syn = [i for i, (k, ci) in enumerate(zip(info["key"], info["class_index"], strict=True))
               if k == key and ci == c][:16]
        if not syn:
            continue
        ds = CacheDataset(plan.path, indices=syn, synthetic="only")
        fake = ds.read_batch(np.arange(len(syn)))[0].numpy()
        ds.close()
        mine = np.sort(rows[plan.labels[rows, c] > 0])[:8]
        reals = read_images(plan.path, mine) if len(mine) else fake[:0]
        out = run_dir / "synthetic" / f"class_{c:02d}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        save_sample_grid(reals, fake, plan.cache_stains, out,
                         title=f"{CLASS_NAMES[c]}: real (top row) and {name} samples "
                               f"(fold {fold})")


def _safe_batches(cache: Path, classes: list[int], fold_ids: set[str]
                  ) -> tuple[list[dict[str, Any]], list[tuple[dict[str, Any], str]]]:
    """The cache's synthetic batches of ``classes``, split into fold-safe ones (their
    generator's training Ids all among ``fold_ids``) and refused ones with the reason."""
    from hpatk.core.cache import read_cache_meta, synthetic_train_ids

    safe, refused = [], []
    for b in read_cache_meta(cache)["synthetic"]:
        if b["class_index"] not in classes:
            continue
        ids = synthetic_train_ids(cache, b["batch"])
        if ids is None:
            refused.append((b, "it records no training-image Ids (written by an older "
                               "hpatk), so its fold safety cannot be checked"))
            continue
        leaked = [i for i in ids if i not in fold_ids]
        if leaked:
            refused.append((b, f"its generator learnt from {len(leaked)} images outside this "
                               f"fold's training images (e.g. '{leaked[0]}')"))
        else:
            safe.append(b)
    return safe, refused


def _cache_rows(cache: Path, batches: list[dict[str, Any]], classes: list[int],
                per_class_n: int) -> np.ndarray:
    """Synthetic row numbers of ``batches``: at most ``per_class_n`` per class, in batch
    order."""
    from hpatk.core.cache import read_cache_meta

    names = {b["batch"] for b in batches}
    starts, start = {}, 0
    chosen = []
    for b in read_cache_meta(cache)["synthetic"]:
        starts[b["batch"]] = start
        start += b["n"]
        if b["batch"] in names and b["class_index"] in classes:
            chosen.append(b)
    # the same rows in the same order however concurrent writers numbered the batches
    chosen.sort(key=lambda b: (classes.index(b["class_index"]), b["key"], b["batch"]))
    taken = dict.fromkeys(classes, 0)
    out: list[int] = []
    for b in chosen:
        k = min(b["n"], per_class_n - taken[b["class_index"]])
        out.extend(range(starts[b["batch"]], starts[b["batch"]] + k))
        taken[b["class_index"]] += k
    return np.asarray(out, dtype=np.int64)


def _write_records(run_dir: Path, records: list[dict[str, Any]]) -> None:
    import csv

    from hpatk.core.io import atomic_open

    if not records:
        return
    with atomic_open(run_dir / "synthetic.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(records[0]))
        w.writeheader()
        w.writerows(records)
