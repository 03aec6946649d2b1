"""The cache file (internal; import from :mod:`hpatk.core.cache`): format constants,
opening and validating a file with one-line errors, and reading what a
file records (its metadata and the provenance of its synthetic batches).

See :mod:`hpatk.core.cache` for the format and the safety rules.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpatk.core.classes import NUM_CLASSES
from hpatk.core.errors import HpatkError

if TYPE_CHECKING:
    import h5py
    import numpy as np


FORMAT = "hpatk-cache"
FORMAT_VERSION = 1
# Bump when preprocess() output changes for the same inputs: old caches then rebuild.
PREPROCESS_VERSION = 1
# What a cache holds unless told otherwise (hpatk cache build, hpatk train --data FOLDER).
DEFAULT_ENHANCE = "clahe"
DEFAULT_SIZE = 512
COMPRESSIONS = ("none", "blosc-lz4")
SYN = "synthetic"


class NotACache(HpatkError):
    """A readable HDF5 file that hpatk did not write."""


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def say(msg: str, quiet: bool = False) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def json_text(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=list)


def strings(dset: h5py.Dataset) -> list[str]:
    return [s.decode() if isinstance(s, bytes) else str(s) for s in dset[()]]


def h5_reason(exc: BaseException) -> str:
    """The informative part of an h5py error, on one line."""
    text = " ".join(str(exc).split())
    return text[:200] or type(exc).__name__


def compression_kwargs(compression: str) -> dict[str, Any]:
    if compression == "none":
        return {}
    if compression == "blosc-lz4":
        import hdf5plugin

        # Byte shuffle is a no-op on uint8; bitshuffle halves read speed (MEASURED.md).
        return dict(hdf5plugin.Blosc(cname="lz4", clevel=5, shuffle=hdf5plugin.Blosc.NOSHUFFLE))
    raise HpatkError(f"--compression must be one of {', '.join(COMPRESSIONS)}, not "
                     f"'{compression}'")


@contextlib.contextmanager
def open_h5(path: Path, mode: str = "r") -> Iterator[h5py.File]:
    """Open a cache, turning h5py's deep errors into one line naming the file."""
    f = open_file(path, mode)
    try:
        yield f
    finally:
        f.close()


def open_file(path: Path, mode: str = "r") -> h5py.File:
    import h5py

    if not path.exists():
        raise HpatkError(f"{path}: no such cache file")
    try:
        # rdcc_nbytes=0: a chunk is one image read once; the chunk cache only adds a copy.
        f = h5py.File(path, mode, locking=False, rdcc_nbytes=0)
    except OSError as exc:
        raise HpatkError(f"{path}: not a readable HDF5 cache ({h5_reason(exc)}); rebuild it "
                         f"with 'hpatk cache build'") from None
    try:
        _validate(f, path)
    except BaseException:
        f.close()
        raise
    if str(f.attrs.get("compression", "none")) != "none":
        try:
            import hdf5plugin  # noqa: F401  (registers the blosc filter with HDF5)
        except ImportError as exc:
            f.close()
            raise HpatkError(f"{path}: compressed with {f.attrs['compression']}; "
                             f"pip install hdf5plugin") from exc
    return f


def _validate(f: h5py.File, path: Path) -> None:
    try:
        fmt = f.attrs.get("format")
        fmt = fmt.decode() if isinstance(fmt, bytes) else fmt
        if fmt != FORMAT:
            raise NotACache(f"{path}: not an hpatk cache (no '{FORMAT}' format attribute); "
                             f"build one with 'hpatk cache build'")
        version = int(f.attrs.get("format_version", 0))
        if version > FORMAT_VERSION:
            raise HpatkError(f"{path}: cache format {version} is newer than this hpatk "
                             f"understands ({FORMAT_VERSION}); upgrade hpatk or rebuild")
        images, labels, ids = f["images"], f["labels"], f["ids"]
        n = images.shape[0]
        if (images.ndim != 4 or images.dtype.name != "uint8" or labels.shape != (n, NUM_CLASSES)
                or ids.shape != (n,) or f["source"].shape != (n,)):
            raise HpatkError(f"{path}: damaged cache (images {images.shape}, labels "
                             f"{labels.shape}, ids {ids.shape}); rebuild it")
    except HpatkError:
        raise
    except (KeyError, OSError, ValueError, TypeError) as exc:
        raise HpatkError(f"{path}: damaged cache ({h5_reason(exc)}); rebuild it with "
                         f"'hpatk cache build'") from None


def meta_of(f: h5py.File, path: Path) -> dict[str, Any]:
    import numpy as np

    images = f["images"]
    a = f.attrs
    sources = strings(f["source"])
    return {
        "path": str(path),
        "format_version": int(a["format_version"]),
        "fingerprint": str(a["fingerprint"]),
        "enhance": json.loads(str(a["enhance"])),
        "size": int(a["size"]),
        "stains": list(json.loads(str(a["stains"]))),
        "n": int(images.shape[0]),
        "shape": tuple(int(s) for s in images.shape),
        "dtype": str(images.dtype),
        "chunks": tuple(images.chunks) if images.chunks else None,
        "compression": str(a.get("compression", "none")),
        "hpatk_version": str(a.get("hpatk_version", "")),
        "opencv_version": str(a.get("opencv_version", "")),
        "created": str(a.get("created", "")),
        "build_seconds": float(a.get("build_seconds", 0.0)),
        "inputs": json.loads(str(a.get("inputs", "[]"))),
        "config": json.loads(str(a.get("config", "{}"))),
        "sources": {str(s): int(k) for s, k in zip(*np.unique(sources, return_counts=True),
                                             strict=True)},
        "synthetic": synthetic_batches(f),
    }


def synthetic_batches(f: h5py.File) -> list[dict[str, Any]]:
    """Committed synthetic batches in creation order, with their provenance."""
    out = []
    grp = f.get(SYN)
    if grp is None:
        return out
    for name in sorted(grp):
        a = grp[name].attrs
        fold = int(a.get("fold", -1))
        out.append({"batch": name, "n": int(grp[name]["images"].shape[0]),
                    "class_index": int(a["class_index"]), "class_name": str(a["class_name"]),
                    "generator": str(a["generator"]), "fold": None if fold < 0 else fold,
                    "seed": int(a["seed"]), "created": str(a.get("created", "")),
                    "hpatk_version": str(a.get("hpatk_version", "")),
                    "key": str(a.get("key", "")),
                    "synthesizer": json.loads(str(a.get("synthesizer", "{}"))),
                    "train_ids_sha256": str(a.get("train_ids_sha256", "")) or None})
    return out


def read_cache_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """How a cache was built: ``enhance`` (config dict), ``size``, ``stains``,
    ``fingerprint``, ``n``, ``shape``, ``compression``, versions, ``inputs``, ``sources``
    (counts) and ``synthetic`` (one provenance dict per batch)."""
    path = Path(path)
    with open_h5(path) as f:
        try:
            return meta_of(f, path)
        except (KeyError, OSError, ValueError) as exc:
            raise HpatkError(f"{path}: damaged cache ({h5_reason(exc)})") from None


@dataclass(frozen=True)
class CacheIndex:
    """What a cache holds besides the pixels, read in one open: what a training run
    plans with and what :class:`~hpatk.core.cache.CacheDataset` indexes.

    Attributes:
        meta: :func:`read_cache_meta` of the file.
        labels: (N, 28) uint8 multi-hot of the real images.
        ids, sources: (N,) lists of the real images' Ids and sources.
    """

    path: Path
    meta: dict[str, Any]
    labels: np.ndarray
    ids: list[str]
    sources: list[str]


def read_cache_index(path: str | os.PathLike[str]) -> CacheIndex:
    """Metadata, labels, Ids and sources of a cache's real images, in one open.

    Raises:
        HpatkError: a missing file, or one that is not a readable cache.
    """
    path = Path(path)
    with open_h5(path) as f:
        try:
            return CacheIndex(path, meta_of(f, path), f["labels"][()], strings(f["ids"]),
                              strings(f["source"]))
        except (KeyError, OSError, ValueError) as exc:
            raise HpatkError(f"{path}: damaged cache ({h5_reason(exc)})") from None
