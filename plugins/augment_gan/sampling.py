"""Sampling a trained generator into a cache's synthetic group, or to PNG files.

Synthetic images go to the cache through ``hpatk.core.cache.add_synthetic`` (their own
group, with provenance: class, generator file and hash, fold, seed), never among the real
images: readers see them only when asked (``CacheDataset(..., synthetic="with")``,
``hpatk train --aug gan``).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hpatk.core.checkpoint import load_checkpoint
from hpatk.core.device import resolve_device
from hpatk.core.errors import HpatkError
from hpatk.core.io import atomic_open, file_sha256
from hpatk.plugins.augment_gan.dcgan import DCGAN, to_uint8
from hpatk.plugins.augment_gan.trainer import resize_uint8, save_grid


@dataclass
class LoadedGenerator:
    """A generator checkpoint ready to sample: the model (eval mode) and its provenance."""

    gan: DCGAN
    ckpt: dict[str, Any]
    path: Path
    sha256: str

    @property
    def class_index(self) -> int:
        return int(self.ckpt["class_index"])

    @property
    def stains(self) -> list[str]:
        return [str(s) for s in self.ckpt.get("stains") or []]

    @property
    def image_size(self) -> int:
        return int(self.ckpt["model"]["image_size"])

    @property
    def provenance(self) -> str:
        """What the cache records as ``generator``: the file and its content hash."""
        return f"{self.path.resolve()}@sha256:{self.sha256}"


def load_generator(path: str | os.PathLike[str], device: str = "auto") -> LoadedGenerator:
    """Load ``generator.pt`` (or ``last.pt``) into a :class:`DCGAN` in eval mode.

    Raises:
        HpatkError: a missing/unsafe file, a classifier checkpoint, or one without a class.
    """
    path = Path(path)
    ckpt = load_checkpoint(path)
    if ckpt.get("kind") != "generator":
        raise HpatkError(f"'{path}' is a {ckpt.get('kind')} checkpoint; gan sample needs a "
                         f"generator (hpatk gan train writes DIR/class_XX/generator.pt)")
    if ckpt.get("class_index") is None:
        raise HpatkError(f"generator '{path}' records no class_index")
    gan = DCGAN.from_checkpoint(ckpt).to(resolve_device(device))
    gan.generator.eval()
    return LoadedGenerator(gan, ckpt, path, file_sha256(path))


def generate_uint8(gen: LoadedGenerator, n: int, *, seed: int = 0, batch_size: int = 64,
                   size: int | None = None) -> torch.Tensor:
    """``n`` samples as uint8 on the CPU, resized to ``size`` when given (the same images
    as ``gen.gan.sample_uint8(n, seed=seed)`` before resizing).

    Shape: -> (n, C, size or S, size or S).
    """
    if n < 1:
        raise HpatkError(f"--n must be >= 1, got {n}")
    if batch_size < 1:
        raise HpatkError(f"--batch must be >= 1, got {batch_size}")
    out = []
    for x in gen.gan.batches(n, seed=seed, batch_size=batch_size):
        x = to_uint8(x).cpu()
        out.append(resize_uint8(x, size) if size else x)
    return torch.cat(out)


def check_against_cache(gen: LoadedGenerator, meta: dict[str, Any], *,
                        resize: bool = False) -> int | None:
    """Refuse a generator that does not fit the cache; return the size to resize to.

    Stains (names and order) and the enhancement must match. A different image size is
    an error unless ``resize`` (then samples are resized: area to shrink, bilinear to grow).
    """
    where = meta.get("path", "the cache")
    cache_stains = [str(s) for s in meta.get("stains", [])]
    if gen.stains != cache_stains:
        raise HpatkError(f"generator '{gen.path}' was trained on stains "
                         f"{','.join(gen.stains) or '?'} but cache '{where}' holds "
                         f"{','.join(cache_stains)}")
    enh_gen, enh_cache = gen.ckpt.get("enhance"), meta.get("enhance")
    if enh_gen and enh_cache and enh_gen != enh_cache:
        raise HpatkError(f"generator '{gen.path}' was trained on '{enh_gen.get('name')}' images "
                         f"({enh_gen}) but cache '{where}' holds {enh_cache}")
    size = int(meta["size"])
    if size != gen.image_size:
        if not resize:
            raise HpatkError(f"generator '{gen.path}' makes {gen.image_size} px images but cache "
                             f"'{where}' holds {size} px; pass --resize to resize the samples")
        return size
    return None


def sample_into_cache(gen: LoadedGenerator, cache: str | os.PathLike[str], n: int, *,
                      seed: int = 0, batch_size: int = 64, resize: bool = False) -> str:
    """Generate ``n`` images and append them to ``cache``'s synthetic group.

    Returns:
        the name of the synthetic batch written.
    """
    from hpatk.core.cache import add_synthetic, read_cache_meta

    meta = read_cache_meta(cache)
    size = check_against_cache(gen, meta, resize=resize)
    images = generate_uint8(gen, n, seed=seed, batch_size=batch_size, size=size)
    return add_synthetic(cache, images.numpy(), gen.class_index, generator=gen.provenance,
                         fold=gen.ckpt.get("fold"), seed=int(seed))


def sample_to_dir(gen: LoadedGenerator, out: str | os.PathLike[str], n: int, *, seed: int = 0,
                  batch_size: int = 64) -> Path:
    """Write ``n`` samples in the Kaggle layout for inspection: ``OUT/train/{Id}_{stain}.png``
    (8-bit gray), ``OUT/train.csv`` (Id,Target, written last), ``OUT/samples.png`` (a grid).

    Ids are ``gan-cXX-sSEED-NNNNNN``.
    """
    import cv2

    out = Path(out)
    if (out / "train.csv").exists():
        raise HpatkError(f"--out '{out}' already holds a train.csv; choose an empty folder")
    stains = gen.stains or [f"c{i}" for i in range(gen.gan.generator.channels)]
    images = generate_uint8(gen, n, seed=seed, batch_size=batch_size).numpy()
    (out / "train").mkdir(parents=True, exist_ok=True)
    ids = [f"gan-c{gen.class_index:02d}-s{seed}-{i:06d}" for i in range(n)]
    for image_id, image in zip(ids, images, strict=True):
        for stain, channel in zip(stains, image, strict=True):
            ok, png = cv2.imencode(".png", channel)
            if not ok:
                raise HpatkError(f"cannot encode '{image_id}_{stain}.png'")
            with atomic_open(out / "train" / f"{image_id}_{stain}.png", "wb") as f:
                f.write(png.tobytes())
    save_grid(torch.from_numpy(images[:16]), stains, out / "samples.png",
              title=f"{gen.ckpt.get('class_name') or gen.class_index}: {n} samples, seed {seed}")
    with atomic_open(out / "train.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["Id", "Target"])
        w.writerows((i, gen.class_index) for i in ids)
    return out
