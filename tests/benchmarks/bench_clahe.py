"""Benchmark: CLAHE backends on the same 4 x 512 x 512 images, in one run.

Backends (all on the same uint8 images, clip 2, 8 x 8 tiles unless told otherwise):

- ``cv2_1thread``: ``cv2.createCLAHE(...).apply`` per stain, OpenCV single-threaded:
  the baseline every ratio is relative to.
- ``cv2_internal_threads``: the same loop with OpenCV's own threads (``cv2.setNumThreads``).
- ``hpatk_opencv_pool``: the ``clahe`` plugin's CPU path (``apply_uint8``): OpenCV per
  plane over our thread pool; ``hpatk_opencv_1thread``: the same with ``threads=1``.
- ``hpatk_torch_cpu_b1_1thread`` / ``_batch_1thread`` / ``_batch``: our OpenCV-exact torch
  kernel on the CPU, one image per call / all images in one call, on one thread / all.
- ``kornia_cpu_b1_1thread`` / ``_batch``: ``kornia.enhance.equalize_clahe`` on float
  [0, 1] input, likewise.
- with CUDA: ``hpatk_torch_cuda_batch`` (images already on the GPU),
  ``hpatk_plugin_cuda_e2e`` (uint8 from the CPU, result back: transfers included) and
  ``kornia_cuda_batch``.

Variants run interleaved, best of ``--rounds`` (the machine is shared; ratios hold better
than absolute numbers). Each backend's output is also compared with the baseline:
``mean_abs_diff`` / ``max_abs_diff`` in gray levels (kornia's float output is scaled by
255 and rounded first). ``per_core`` = ratio / threads used; ``per_cpu_second`` = images
per CPU-second of the process (all threads) relative to the baseline's, the per-core
efficiency with the least distortion from other load on a shared machine.

    python tests/benchmarks/bench_clahe.py               # 8 images, 512 px, 5 rounds
    python tests/benchmarks/bench_clahe.py --n 16 --rounds 3 --data demo-data

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def low_contrast_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Microscopy-like uint8 (n, 4, size, size): dark background, dim blobs, noise."""
    import cv2

    rng = np.random.default_rng(seed)
    out = np.empty((n, 4, size, size), np.uint8)
    for i in range(n):
        for c in range(4):
            field = cv2.GaussianBlur(rng.gamma(1.2, 8.0, (size, size)), (0, 0), size / 40)
            field = field / field.max() * rng.uniform(30, 90)
            out[i, c] = np.clip(field + rng.normal(0, 2, field.shape) + 4, 0, 255)
    return out


def dataset_images(data_dir: str, n: int, size: int) -> np.ndarray:
    from hpatk.core.data import load_stains, read_kaggle

    refs = read_kaggle(data_dir)[:n]
    return np.stack([load_stains(r, size=size) for r in refs])


def timed(fn: Callable[[], Any], sync: Callable[[], None] | None = None
          ) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    if sync is not None:
        sync()
    return time.perf_counter() - wall, time.process_time() - cpu


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8, help="images (4 stains each)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clip", type=float, default=2.0)
    parser.add_argument("--grid", type=int, nargs=2, default=(8, 8), metavar=("GX", "GY"))
    parser.add_argument("--data", default=None, help="a Kaggle-layout folder to read from")
    parser.add_argument("--no-kornia", action="store_true", help="skip kornia (slow on CPU)")
    args = parser.parse_args(argv)

    import cv2
    import kornia
    import torch
    from hpatk.plugins.enhance._opencv import available_cpus
    from hpatk.plugins.enhance.enhancers import CLAHE
    from hpatk.plugins.enhance.functional import clahe_levels

    cpus = available_cpus()
    torch.set_num_threads(cpus)
    images = (dataset_images(args.data, args.n, args.size) if args.data
              else low_contrast_images(args.n, args.size))
    n = len(images)
    clip, grid = args.clip, tuple(args.grid)

    def cv2_loop(threads: int) -> Callable[[], np.ndarray]:
        def run() -> np.ndarray:
            cv2.setNumThreads(threads)
            op = cv2.createCLAHE(clip, grid)
            out = np.stack([np.stack([op.apply(p) for p in img]) for img in images])
            cv2.setNumThreads(0)
            return out
        return run

    plugin = CLAHE(clip, grid, threads=cpus)
    plugin_1thread = CLAHE(clip, grid, threads=1)
    x_u8 = torch.from_numpy(images)
    x_float = x_u8.float() / 255

    def per_image(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor
                  ) -> Callable[[], torch.Tensor]:
        return lambda: torch.cat([fn(x[i:i + 1]) for i in range(n)])

    def torch_threads(k: int, fn: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            torch.set_num_threads(k)
            return fn()
        return run

    def kornia_clahe(x: torch.Tensor) -> torch.Tensor:
        # kornia's grid_size is (tiles down, tiles across); OpenCV's the other way round
        return kornia.enhance.equalize_clahe(x, clip, (grid[1], grid[0]))

    variants: dict[str, tuple[Callable[[], Any], int, Callable[[], None] | None]] = {
        "cv2_1thread": (cv2_loop(1), 1, None),
        "cv2_internal_threads": (cv2_loop(cpus), cpus, None),
        "hpatk_opencv_pool": (lambda: np.stack([plugin.apply_uint8(img) for img in images]),
                              cpus, None),
        "hpatk_opencv_1thread": (
            lambda: np.stack([plugin_1thread.apply_uint8(img) for img in images]), 1, None),
        "hpatk_torch_cpu_b1_1thread": (
            torch_threads(1, per_image(lambda t: clahe_levels(t, clip, grid), x_u8)), 1, None),
        "hpatk_torch_cpu_batch_1thread": (
            torch_threads(1, lambda: clahe_levels(x_u8, clip, grid)), 1, None),
        "hpatk_torch_cpu_batch": (
            torch_threads(cpus, lambda: clahe_levels(x_u8, clip, grid)), cpus, None),
    }
    if not args.no_kornia:
        variants["kornia_cpu_b1_1thread"] = (
            torch_threads(1, per_image(kornia_clahe, x_float)), 1, None)
        variants["kornia_cpu_batch"] = (torch_threads(cpus, lambda: kornia_clahe(x_float)),
                                        cpus, None)
    device_name = None
    if torch.cuda.is_available():
        device_name = torch.cuda.get_device_name(0)
        gpu_u8, gpu_float = x_u8.cuda(), x_float.cuda()
        sync = torch.cuda.synchronize
        gpu_plugin = CLAHE(clip, grid, device="cuda")
        variants["hpatk_torch_cuda_batch"] = (lambda: clahe_levels(gpu_u8, clip, grid), 1,
                                              sync)
        variants["hpatk_plugin_cuda_e2e"] = (lambda: gpu_plugin(x_u8), 1, sync)
        if not args.no_kornia:
            variants["kornia_cuda_batch"] = (lambda: kornia_clahe(gpu_float), 1, sync)

    outputs: dict[str, np.ndarray] = {}
    for name, (fn, _, sync) in variants.items():  # warm-up, and the outputs to compare
        out = fn()
        if sync is not None:
            sync()
        if isinstance(out, torch.Tensor):
            out = out.cpu()
            out = (out * 255).round().clamp(0, 255).to(torch.uint8) if out.is_floating_point() \
                else out
            out = out.numpy()
        outputs[name] = np.asarray(out).reshape(images.shape)
    walls = {name: float("inf") for name in variants}
    cpus_used = {name: float("inf") for name in variants}
    for _ in range(args.rounds):
        for name, (fn, _, sync) in variants.items():
            wall, cpu = timed(fn, sync)
            walls[name], cpus_used[name] = min(walls[name], wall), min(cpus_used[name], cpu)

    reference = outputs["cv2_1thread"]
    base_rate = n / walls["cv2_1thread"]
    base_cpu_rate = n / cpus_used["cv2_1thread"]
    backends = {}
    for name, (_, threads, sync) in variants.items():
        rate = n / walls[name]
        diff = np.abs(outputs[name].astype(np.int16) - reference.astype(np.int16))
        backends[name] = {
            "images_per_s": round(rate, 2),
            "ms_per_image": round(1000 * walls[name] / n, 3),
            "ratio": round(rate / base_rate, 3),
            "threads": threads,
            "per_core": round(rate / base_rate / threads, 3),
            # images per CPU-second (all threads) vs the baseline's: per-core efficiency
            # that a busy shared machine distorts far less than wall-clock time
            "per_cpu_second": None if sync is not None else round(
                n / max(cpus_used[name], 1e-9) / base_cpu_rate, 3),
            "mean_abs_diff": round(float(diff.mean()), 4),
            "max_abs_diff": int(diff.max()),
        }
    result = {
        "benchmark": "clahe",
        "baseline": "cv2_1thread",
        "images": n, "image_shape": list(images.shape[1:]), "clip_limit": clip,
        "grid_size": list(grid), "rounds": args.rounds,
        "data": args.data or "synthetic low-contrast",
        "machine": {"cpus": cpus, "platform": platform.platform(), "gpu": device_name,
                    "python": sys.version.split()[0], "torch": torch.__version__,
                    "cv2": cv2.__version__, "kornia": kornia.__version__,
                    "load_avg_1min": round(os.getloadavg()[0], 2)},
        "backends": backends,
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
