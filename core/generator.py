"""Generator checkpoints: any registered synthesizer, fitted, saved with what it learnt
from (the registered name, its parameters, its state and the training-image Ids), rebuilt
through the registry only, and sampled into a cache's synthetic group or to files.

Used by ``hpatk train --aug`` (:mod:`hpatk.core.synthetic`), ``hpatk gan train`` /
``sample`` / ``evaluate`` and ``hpatk export``. A checkpoint's format is in
:mod:`hpatk.core.checkpoint`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from hpatk.core.base import Synthesizer
from hpatk.core.classes import CLASS_NAMES, NUM_CLASSES
from hpatk.core.errors import HpatkError, RegistryError, typed_line

GENERATOR_FORMAT = 2


def build_synthesizer(name: str, params: dict[str, Any] | None = None) -> Synthesizer:
    """A synthesizer from the registry; bad parameters are one line naming it."""
    from hpatk.core.registry import get_registry

    try:
        synth = get_registry().synthesizers.create(name, **dict(params or {}))
    except (HpatkError, RegistryError):
        raise
    except Exception as exc:
        raise HpatkError(f"synthesizer '{name}' {dict(params or {})}: "
                         f"{typed_line(exc)}") from None
    if not isinstance(synth, Synthesizer):
        raise HpatkError(f"synthesizer '{name}': its factory returned a "
                         f"{type(synth).__name__}, not an hpatk.core.Synthesizer")
    return synth


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
        raise HpatkError(f"generator '{path}' does not fit synthesizer "
                         f"'{ckpt['synthesizer']}': {typed_line(exc)}") from None
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
