"""Synthetic augmentation in a training run: generators fitted on exactly one fold's
training images, reused by fingerprint, sampled into the cache's synthetic group, and
admitted to a fold only when their training images are a subset of its training images.

Any registered synthesizer works (``hpatk registry synthesizers``); this module knows
none by name. Its parts:

- :func:`resolve_aug`: what ``--aug NAME`` means (a batch augmentation, a synthesizer, or
  ``none``), decided once, before anything is written.
- :func:`generator_key`: the fingerprint a generator is reused by: (cache fingerprint,
  the exact set of training-image Ids, class(es), synthesizer name and parameters, seed).
- :func:`save_generator` / :func:`load_generator`: generator checkpoints (``kind:
  generator``, format 2) that record the registered name and factory parameters, so
  ``hpatk gan sample`` and ``hpatk export`` rebuild them through the registry only.
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
from hpatk.core.classes import CLASS_NAMES, NUM_CLASSES
from hpatk.core.errors import HpatkError, RegistryError

GENERATOR_FORMAT = 2
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
    import difflib

    from hpatk.core.registry import get_registry

    reg = get_registry()
    params = dict(aug_params or {})
    if aug == "none":
        return AugChoice()
    if aug in reg.synthesizers:
        batch = None if batch_aug == "none" else batch_aug
        if batch is not None and batch not in reg.augmentations:
            reg.augmentations.get(batch)  # the catalogue's one-line "unknown" error
        return AugChoice(batch=batch, synth=reg.synthesizers.canonical(aug),
                         synth_params=params)
    if aug in reg.augmentations:
        return AugChoice(batch=aug, batch_params=params)
    known = ["none", *reg.augmentations.names(), *reg.synthesizers.names()]
    close = difflib.get_close_matches(aug, known, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise RegistryError(f"--aug: unknown augmentation or synthesizer '{aug}'{hint} "
                        f"(augmentations: {', '.join(reg.augmentations.names())}; "
                        f"synthesizers: {', '.join(reg.synthesizers.names())}; or none)")


def build_synthesizer(name: str, params: dict[str, Any] | None = None) -> Synthesizer:
    """A synthesizer from the registry; bad parameters are one line naming it."""
    from hpatk.core.registry import get_registry

    try:
        synth = get_registry().synthesizers.create(name, **dict(params or {}))
    except (HpatkError, RegistryError):
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise HpatkError(f"synthesizer '{name}' {dict(params or {})}: "
                         f"{type(exc).__name__}: {first}") from None
    if not isinstance(synth, Synthesizer):
        raise HpatkError(f"synthesizer '{name}': its factory returned a "
                         f"{type(synth).__name__}, not an hpatk.core.Synthesizer")
    return synth


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


# -- checkpoints ---------------------------------------------------------------------------
@dataclass
class LoadedGenerator:
    """A generator checkpoint rebuilt through the registry, ready to sample."""

    synth: Synthesizer
    ckpt: dict[str, Any]
    path: Path
    sha256: str

    @property
    def classes(self) -> list[int]:
        """The classes it makes: one for a per-class generator, several for a
        conditional one."""
        return [int(c) for c in self.ckpt["classes"]]

    @property
    def provenance(self) -> str:
        return f"{self.path.resolve()}@sha256:{self.sha256}"


def save_generator(path: str | os.PathLike[str], synth: Synthesizer, *, name: str,
                   classes: Sequence[int], train_ids: Sequence[str], train_labels: np.ndarray,
                   stains: Sequence[str], enhance: dict[str, Any], fold: int | None,
                   key: str, cache_fingerprint: str, seed: int,
                   summary: dict[str, Any] | None = None) -> Path:
    """Write a fitted synthesizer as a generator checkpoint (atomically).

    Args:
        name: its registered name (what the registry rebuilds it from).
        classes: the classes it makes (columns of ``train_labels``).
        train_ids: the Ids of the images it learnt from (fold safety is checked on them).
        train_labels: their labels over ``classes``, uint8 (N, K): a conditional
            generator samples label vectors from them.
    """
    import torch
    from hpatk.core.cache import ids_digest
    from hpatk.core.checkpoint import save_checkpoint
    from hpatk.core.version import __version__

    ids = sorted(str(i) for i in train_ids)
    ckpt = {
        "kind": "generator", "format": GENERATOR_FORMAT, "hpatk_version": __version__,
        "synthesizer": name, "params": dict(synth.params), "per_class": bool(synth.per_class),
        "state_dict": synth.state_dict(), "classes": [int(c) for c in classes],
        "class_names": [CLASS_NAMES[int(c)] for c in classes],
        "stains": [str(s) for s in stains], "enhance": dict(enhance),
        "image_size": synth.image_size, "latent_dim": synth.latent_dim,
        "train_ids": ids, "train_ids_sha256": ids_digest(ids),
        "train_labels": torch.as_tensor(np.asarray(train_labels, dtype=np.uint8)),
        "fold": fold, "key": key, "cache_fingerprint": cache_fingerprint, "seed": int(seed),
        "summary": dict(summary or {}),
    }
    return save_checkpoint(ckpt, path)


def load_generator(path: str | os.PathLike[str], *, device: str | None = None
                   ) -> LoadedGenerator:
    """Rebuild a generator checkpoint's synthesizer through the registry.

    Raises:
        HpatkError: not a generator checkpoint of this format, an unknown synthesizer,
            or weights that do not fit it.
    """
    from hpatk.core.checkpoint import load_checkpoint
    from hpatk.core.io import file_sha256

    path = Path(path)
    ckpt = load_checkpoint(path)
    if ckpt.get("kind") != "generator" or "synthesizer" not in ckpt:
        raise HpatkError(f"'{path}' is not a generator checkpoint (hpatk gan train and "
                         f"hpatk train --aug write DIR/.../generator.pt)")
    if int(ckpt.get("format", 0)) != GENERATOR_FORMAT:
        raise HpatkError(f"generator '{path}' has format {ckpt.get('format')}; this hpatk "
                         f"reads format {GENERATOR_FORMAT} (retrain it with hpatk gan train)")
    params = dict(ckpt.get("params") or {})
    if device is not None and "device" in params:
        params["device"] = device
    synth = build_synthesizer(str(ckpt["synthesizer"]), params)
    try:
        synth.load_state_dict(ckpt["state_dict"])
    except HpatkError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise HpatkError(f"generator '{path}' does not fit synthesizer "
                         f"'{ckpt['synthesizer']}': {type(exc).__name__}: {first}") from None
    return LoadedGenerator(synth, ckpt, path, file_sha256(path))


def draw_labels(ckpt: dict[str, Any], class_index: int, n: int, seed: int) -> np.ndarray:
    """``n`` label vectors (over the generator's classes) of training images carrying
    ``class_index``, drawn with replacement: the real label co-occurrence.

    Shape: -> uint8 (n, K).
    """
    classes = [int(c) for c in ckpt["classes"]]
    bank = np.asarray(ckpt["train_labels"], dtype=np.uint8)
    pool = bank[bank[:, classes.index(int(class_index))] > 0]
    if len(pool) == 0:
        raise HpatkError(f"the generator saw no image of class {class_index}")
    rng = np.random.default_rng([int(seed), int(class_index)])
    return pool[rng.integers(0, len(pool), size=int(n))]


def sample_class(gen: LoadedGenerator, class_index: int, n: int, *, seed: int,
                 size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images of ``class_index`` and their 28-class labels.

    Shape: -> (uint8 (n, C, size, size), uint8 (n, 28)).
    """
    classes = gen.classes
    if int(class_index) not in classes:
        raise HpatkError(f"generator '{gen.path}' makes classes {classes}, not "
                         f"{class_index}")
    labels = np.zeros((int(n), NUM_CLASSES), np.uint8)
    if gen.synth.per_class:
        images = gen.synth.sample(int(n), seed=int(seed))
        labels[:, int(class_index)] = 1
    else:
        y = draw_labels(gen.ckpt, class_index, n, seed)
        images = gen.synth.sample(int(n), y, seed=int(seed))
        labels[:, classes] = y
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) != int(n):
        raise HpatkError(f"synthesizer '{gen.ckpt['synthesizer']}' returned "
                         f"{images.dtype} {images.shape} for sample({n}); expected uint8 "
                         f"({n}, C, S, S)")
    if size is not None and images.shape[-1] != size:
        images = resize_uint8(images, size)
    return images, labels


def resize_uint8(images: Any, size: int) -> Any:
    """Resize uint8 images: area averaging to shrink (as cv2.INTER_AREA), bilinear to
    grow. Takes and returns a numpy array or a torch tensor.

    Shape: (B, C, H, W) uint8 -> (B, C, size, size) uint8.
    """
    import torch
    import torch.nn.functional as F

    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    t = torch.as_tensor(images)
    mode = "area" if size < t.shape[-1] else "bilinear"
    kw = {} if mode == "area" else {"align_corners": False}
    out = F.interpolate(t.float(), size=(size, size), mode=mode, **kw)
    out = out.round_().clamp_(0, 255).to(torch.uint8)
    return out if isinstance(images, torch.Tensor) else out.numpy()


def read_images(cache: str | os.PathLike[str], rows: np.ndarray, size: int | None = None,
                *, desc: str = "") -> np.ndarray:
    """Cache rows as uint8, resized to ``size`` chunk by chunk (memory: the resized set).

    Shape: -> (len(rows), C, size or S, size or S).
    """
    from hpatk.core.cache import CacheDataset
    from hpatk.core.progress import progress

    ds = CacheDataset(Path(cache), indices=np.asarray(rows, dtype=np.int64))
    try:
        step = 128
        starts = range(0, len(rows), step)
        chunks = []
        for s in (progress(starts, desc=desc, unit="batch") if desc else starts):
            x = ds.read_batch(np.arange(s, min(s + step, len(rows))))[0].numpy()
            chunks.append(resize_uint8(x, size) if size else x)
    finally:
        ds.close()
    c, s = int(ds.meta["shape"][1]), int(size or ds.meta["size"])
    return np.concatenate(chunks) if chunks else np.zeros((0, c, s, s), np.uint8)


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
    generators, ``hpatk.core.distributed.spread``) and ``write=False``; then rank 0 runs
    it whole, every sample already in the cache, with ``done`` (key -> (source,
    seconds), what the ranks did) so that ``synthetic.csv`` says what really happened.
    """
    from hpatk.core.cache import read_cache_meta, synthetic_info

    assert choice.synth is not None
    train_rows, _ = plan.split(fold)
    fold_ids = {plan.ids[r] for r in train_rows}
    classes = [int(c) for c in plan.classes]
    safe, refused = _safe_batches(plan.path, classes, fold_ids)
    for batch, why in refused if write else ():
        _say(f"fold {fold}: not using synthetic/{batch['batch']} ({batch['n']} images of class "
             f"{batch['class_index']}, generator {batch['generator']}): {why}")
    if source == "cache":
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
                                  write=write, done=done)
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
                   done: dict[str, tuple[str, float]] | None = None) -> list[dict[str, Any]]:
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
    gen = None if source == "reused samples" else load_generator(gen_path)
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
    """``synth.fit(...)``, passing ``stains=`` when its ``fit`` takes it; a plugin's
    failure becomes one line naming the synthesizer."""
    import inspect

    kw: dict[str, Any] = {}
    if "stains" in inspect.signature(synth.fit).parameters:
        kw["stains"] = list(stains)
    try:
        summary = synth.fit(images, labels, classes=list(classes), out_dir=out_dir,
                            seed=int(seed), progress=progress, resume=resume, **kw)
    except (HpatkError, KeyboardInterrupt):
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise HpatkError(f"synthesizer '{synth.name}' failed to fit: {type(exc).__name__}: "
                         f"{first}") from exc
    return dict(summary or {})


def check_against_cache(gen: LoadedGenerator, meta: dict[str, Any], *,
                        resize: bool = False) -> None:
    """Refuse a generator whose stains or enhancement differ from the cache's, or whose
    size differs unless ``resize``."""
    where = meta.get("path", "the cache")
    stains = [str(s) for s in gen.ckpt.get("stains") or []]
    if stains != [str(s) for s in meta.get("stains", [])]:
        raise HpatkError(f"generator '{gen.path}' was trained on stains "
                         f"{','.join(stains) or '?'} but cache '{where}' holds "
                         f"{','.join(meta.get('stains', []))}")
    enh_gen, enh_cache = gen.ckpt.get("enhance"), meta.get("enhance")
    if enh_gen and enh_cache and enh_gen != enh_cache:
        raise HpatkError(f"generator '{gen.path}' was trained on {enh_gen.get('name')!r} "
                         f"images ({enh_gen}) but cache '{where}' holds {enh_cache}")
    size = int(meta["size"])
    if gen.synth.image_size not in (None, size) and not resize:
        raise HpatkError(f"generator '{gen.path}' makes {gen.synth.image_size} px images but "
                         f"cache '{where}' holds {size} px; pass --resize to resize them")


def sample_into_cache(gen: LoadedGenerator, cache: str | os.PathLike[str], class_index: int,
                      n: int, *, seed: int, resize: bool = False) -> str:
    """Generate ``n`` images of ``class_index`` into the cache's synthetic group, with the
    generator's provenance (its key, synthesizer, fold and training-image Ids).

    Returns:
        the batch name.
    """
    from hpatk.core.cache import add_synthetic, read_cache_meta

    meta = read_cache_meta(cache)
    check_against_cache(gen, meta, resize=resize)
    images, labels = sample_class(gen, class_index, n, seed=seed, size=int(meta["size"]))
    ck = gen.ckpt
    return add_synthetic(cache, images, int(class_index), generator=gen.provenance,
                         fold=ck.get("fold"), seed=int(seed), labels=labels,
                         key=str(ck.get("key", "")),
                         synthesizer={"name": ck["synthesizer"], "params": ck["params"]},
                         train_ids=ck.get("train_ids"))


def write_samples_dir(gen: LoadedGenerator, out: str | os.PathLike[str], n: int, *,
                      seed: int, classes: Sequence[int]) -> Path:
    """``n`` samples per class in the Kaggle layout, for inspection:
    ``OUT/train/{Id}_{stain}.png``, ``OUT/train.csv`` (written last), ``OUT/samples.png``.
    Ids are ``syn-cXX-sSEED-NNNNNN``."""
    import csv

    import cv2
    import torch
    from hpatk.core.io import atomic_open
    from hpatk.core.picture import save_grid

    out = Path(out)
    if (out / "train.csv").exists():
        raise HpatkError(f"--out '{out}' already holds a train.csv; choose an empty folder")
    stains = [str(s) for s in gen.ckpt.get("stains") or []]
    (out / "train").mkdir(parents=True, exist_ok=True)
    rows, firsts = [], []
    for c in classes:
        images, labels = sample_class(gen, c, n, seed=seed)
        firsts.append(images[:16 // max(1, len(classes)) or 1])
        for i, (image, y) in enumerate(zip(images, labels, strict=True)):
            image_id = f"syn-c{int(c):02d}-s{seed}-{i:06d}"
            names = stains or [f"c{k}" for k in range(len(image))]
            for stain, channel in zip(names, image, strict=True):
                ok, png = cv2.imencode(".png", channel)
                if not ok:
                    raise HpatkError(f"cannot encode '{image_id}_{stain}.png'")
                with atomic_open(out / "train" / f"{image_id}_{stain}.png", "wb") as f:
                    f.write(png.tobytes())
            rows.append((image_id, " ".join(str(k) for k in np.flatnonzero(y))))
    save_grid(torch.from_numpy(np.concatenate(firsts)), stains, out / "samples.png",
              title=f"{gen.ckpt['synthesizer']}: classes {list(classes)}, seed {seed}")
    with atomic_open(out / "train.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["Id", "Target"])
        w.writerows(rows)
    return out


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
