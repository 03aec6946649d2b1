"""Benchmark: training batches from the HDF5 cache vs decoding PNGs + CLAHE per sample.

Both sides read the same synthetic images through a DataLoader with the same batch size,
shuffling, worker count and start method, in one run, interleaved, best of ``--rounds``
(the machine is shared; ratios hold better than absolute numbers). Also measured: the
cache's raw read speed (MB/s, warm and cold page cache) against a memory copy of the
same bytes in the same random batch order (the physical limit), and blosc-lz4 against
no compression.

    python tests/benchmarks/bench_cache.py                  # 256 images, 512 px
    python tests/benchmarks/bench_cache.py --n 400 --workers 0,2 --rounds 3

Prints one JSON object. ``ratio``: batches/s of the cache read the way training reads it
(``batch_loader``: ``hpatk.core.batching.make_loader``, one read per batch, no collate
copy, worker batches filled in shared memory; its workers always spawn) over PNG + CLAHE
per sample (the usual ``DataLoader(dataset, batch_size)``), at the first ``--workers``
value; ``ratio_plain_dataloader``: the cache behind a plain ``DataLoader(CacheDataset,
batch_size)`` (per-sample reads). ``batch_loader_vs_memory_dataset`` compares with
the same images held in memory behind a plain DataLoader (with workers: torch's
shared-memory transfer is the floor for any dataset); ``read_mb_s`` compares raw reads
with a memory copy of the same bytes in the same order (the physical limit).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


class PngDataset:
    """The baseline: decode four PNGs and run CLAHE for every sample, every epoch."""

    def __init__(self, refs: list[Any], size: int) -> None:
        from hpatk.core.data import multihot

        self.refs, self.size = refs, size
        self.targets = np.stack([multihot(r.labels) for r in refs]).astype(np.float32)
        self.enhancer = None

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, i: int):
        import torch
        from hpatk.core.data import load_stains
        from hpatk.core.preprocess import make_enhancer, preprocess

        if self.enhancer is None:  # per process, like a real dataset
            self.enhancer = make_enhancer("clahe", {"clip_limit": 2.0, "grid_size": (8, 8)})
        image = preprocess(load_stains(self.refs[i]), self.enhancer, self.size)
        return torch.from_numpy(image), torch.from_numpy(self.targets[i])


class MemoryDataset:
    """The same uint8 images already in memory: the best any dataset can do through the
    DataLoader (with workers, the floor is torch's inter-process transfer)."""

    def __init__(self, images: np.ndarray, targets: np.ndarray) -> None:
        self.images, self.targets = images, targets

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        import torch

        return torch.from_numpy(self.images[i]), torch.from_numpy(self.targets[i])


def _loader(ds: Any, batch: int, workers: int, context: str, seed: int):
    import torch
    from torch.utils.data import DataLoader

    kw: dict[str, Any] = dict(batch_size=batch, shuffle=True, num_workers=workers,
                              generator=torch.Generator().manual_seed(seed))
    if workers:
        kw.update(multiprocessing_context=context, persistent_workers=True)
    return DataLoader(ds, **kw)


def _batch_loader(ds: Any, batch: int, workers: int, seed: int):
    from hpatk.core.batching import EpochBatchSampler, make_loader

    sampler = EpochBatchSampler(len(ds), batch, seed=seed)
    return make_loader(ds, sampler, workers=workers, seed=seed)


def _epochs_per_s(loader: Any, min_s: float) -> tuple[float, float]:
    """(batches/s, images/s) over whole epochs, at least ``min_s`` seconds."""
    batches = images = 0
    start = time.perf_counter()
    while True:
        for x, _ in loader:
            batches += 1
            images += x.shape[0]
            int(x[0, 0, 0, 0])  # touch the batch, as training would
        elapsed = time.perf_counter() - start
        if elapsed >= min_s:
            return batches / elapsed, images / elapsed


def _evict(paths: list[Path]) -> None:
    """Drop these files from the page cache (clean pages only; no root, no other files)."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _raw_mb_s(ds: Any, order: np.ndarray, batch: int) -> float:
    nbytes = 0
    start = time.perf_counter()
    for s in range(0, len(order), batch):
        x, _ = ds.read_batch(order[s:s + batch])
        nbytes += x.numel()
    return nbytes / (time.perf_counter() - start) / 1e6


def _memcpy_mb_s(images: np.ndarray, order: np.ndarray, batch: int) -> float:
    """The same bytes, same batches, same order, copied from memory into a new batch."""
    nbytes = 0
    start = time.perf_counter()
    for s in range(0, len(order), batch):
        idx = order[s:s + batch]
        out = np.empty((len(idx), *images.shape[1:]), np.uint8)
        for k, i in enumerate(idx):
            out[k] = images[i]
        nbytes += out.nbytes
    return nbytes / (time.perf_counter() - start) / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=256, help="synthetic images")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", default="2,0", help="comma-separated DataLoader workers")
    ap.add_argument("--context", default="fork", choices=["fork", "spawn", "forkserver"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--min-seconds", type=float, default=2.0)
    ap.add_argument("--data", type=Path, default=None, help="existing Kaggle-layout folder")
    ap.add_argument("--keep", type=Path, default=None, help="work folder to keep")
    args = ap.parse_args()

    import cv2
    import h5py
    import torch
    from hpatk.core.cache import CacheDataset, build_cache
    from hpatk.core.data import read_kaggle

    cv2.setNumThreads(0)  # fork-started workers deadlock on a live OpenCV pool (MEASURED.md)
    torch.set_num_threads(1)
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench_cache_"))
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"n": args.n, "size": args.size, "batch_size": args.batch_size,
                              "context": args.context, "cpus": len(os.sched_getaffinity(0))}
    try:
        data = args.data
        if data is None:
            from hpatk.core.synth import make_synthetic

            data = work / "data"
            if not (data / "train.csv").exists():
                make_synthetic(data, n=args.n, size=args.size, seed=0)
        refs = list(read_kaggle(data))
        result["n"] = len(refs)
        t = time.perf_counter()
        cache = build_cache(data, work / "cache.h5", size=args.size, workers=2, force=True,
                            quiet=True)
        result["build_images_per_s_2_workers"] = round(len(refs) / (time.perf_counter() - t), 1)
        ds = CacheDataset(cache)
        images = np.stack([ds[i][0].numpy() for i in range(len(ds))])
        batch_mb = args.batch_size * images[0].nbytes / 1e6

        # compression trade-off, measured on these images
        lz4 = work / "cache-lz4.h5"
        shutil.copy(cache, lz4)
        with h5py.File(lz4, "r+") as f:
            import hdf5plugin

            del f["images"]
            f.create_dataset("images", data=images, chunks=(1, *images.shape[1:]),
                             **hdf5plugin.Blosc(cname="lz4", clevel=5,
                                                shuffle=hdf5plugin.Blosc.NOSHUFFLE))
            f.attrs["compression"] = "blosc-lz4"
        ds_lz4 = CacheDataset(lz4)

        rng = np.random.default_rng(0)
        raw: dict[str, list[float]] = {"cache": [], "cache_lz4": [], "memcpy": []}
        for _ in range(args.rounds):
            order = rng.permutation(len(ds))
            raw["cache"].append(_raw_mb_s(ds, order, args.batch_size))
            raw["cache_lz4"].append(_raw_mb_s(ds_lz4, order, args.batch_size))
            raw["memcpy"].append(_memcpy_mb_s(images, order, args.batch_size))
        best = {k: max(v) for k, v in raw.items()}
        ds.close()
        _evict([cache])
        cold = _raw_mb_s(ds, rng.permutation(len(ds)), args.batch_size)
        result["read_mb_s"] = {
            "cache_warm": round(best["cache"]), "cache_cold": round(cold),
            "cache_blosc_lz4_warm": round(best["cache_lz4"]), "memcpy": round(best["memcpy"]),
            "cache_vs_memcpy": round(best["cache"] / best["memcpy"], 3),
            "blosc_lz4_vs_none": round(best["cache_lz4"] / best["cache"], 3),
            "blosc_lz4_size_ratio": round(os.path.getsize(lz4) / os.path.getsize(cache), 3),
        }

        png = PngDataset(refs, args.size)
        for w in [int(x) for x in args.workers.split(",")]:
            loaders = {"png": _loader(png, args.batch_size, w, args.context, 0),
                       "cache": _loader(ds, args.batch_size, w, args.context, 0),
                       "batch_loader": _batch_loader(ds, args.batch_size, w, 0),
                       "memory": _loader(MemoryDataset(images, ds.targets), args.batch_size,
                                         w, args.context, 0)}
            for loader in loaders.values():  # start workers, warm the page cache
                for _ in loader:
                    pass
            rates: dict[str, list[tuple[float, float]]] = {k: [] for k in loaders}
            for _ in range(args.rounds):
                for name, loader in loaders.items():
                    rates[name].append(_epochs_per_s(loader, args.min_seconds))
            top = {k: max(v) for k, v in rates.items()}
            entry = {f"{k}_batches_per_s": round(v[0], 2) for k, v in top.items()}
            entry.update({f"{k}_images_per_s": round(v[1], 1) for k, v in top.items()})
            entry["ratio"] = round(top["batch_loader"][0] / top["png"][0], 1)
            entry["ratio_plain_dataloader"] = round(top["cache"][0] / top["png"][0], 1)
            entry["batch_loader_vs_memory_dataset"] = round(
                top["batch_loader"][0] / top["memory"][0], 3)
            entry["batch_loader_mb_s"] = round(top["batch_loader"][0] * batch_mb)
            entry["batch_loader_vs_memcpy"] = round(
                top["batch_loader"][0] * batch_mb / best["memcpy"], 3)
            result[f"workers_{w}"] = entry
            del loaders
        first = int(args.workers.split(",")[0])
        result["workers"] = first
        result["ratio"] = result[f"workers_{first}"]["ratio"]
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    sys.exit(main())
