"""Benchmark ``make_synthetic``: images/s at 64 and 512 px, serial and parallel.

Baselines measured in the same run: the serial generator (for the parallel speed-up)
and decoding the very files it wrote with 4 x ``cv2.imread`` (how generation compares
with reading a dataset). One image = 4 stain PNGs; the test split is included.

    .venv/bin/python tests/benchmarks/bench_synth.py [--n64 300] [--n512 60] [--workers N]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path


def _synth(out: Path, n: int, size: int, workers: int) -> tuple[float, int]:
    from hpatk.core.synth import make_synthetic

    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    make_synthetic(out, n=n, size=size, seed=0, workers=workers)
    elapsed = time.perf_counter() - start
    images = len(list((out / "train").iterdir())) // 4 + len(list((out / "test").iterdir())) // 4
    return images / elapsed, images


def _decode(folder: Path) -> float:
    import cv2

    files = sorted((folder / "train").iterdir())
    start = time.perf_counter()
    for f in files:
        cv2.imread(str(f), cv2.IMREAD_UNCHANGED)
    return (len(files) / 4) / (time.perf_counter() - start)


def _render_cpu_ms(size: int, n: int) -> float:
    from hpatk.core.synth import sample_labels
    from hpatk.core.synth_cells import render

    labels = sample_labels(n, 0)
    render(labels[0], size, 0)  # warm-up: imports, noise table
    start = time.process_time()
    for i, lab in enumerate(labels):
        render(lab, size, i)
    return 1000 * (time.process_time() - start) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n64", type=int, default=300)
    ap.add_argument("--n512", type=int, default=60)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    import cv2

    cv2.setNumThreads(1)  # one thread per process, as in the generator's workers
    result: dict[str, object] = {"cpu_count": os.cpu_count(), "workers": args.workers}
    with tempfile.TemporaryDirectory() as tmp:
        for size, n in ((64, args.n64), (512, args.n512)):
            out = Path(tmp) / f"s{size}"
            serial, images = _synth(out, n, size, 1)
            parallel, _ = _synth(out, n, size, args.workers)
            decode = _decode(out)
            result[f"{size}px"] = {
                "images": images,
                "serial_images_per_s": round(serial, 1),
                "parallel_images_per_s": round(parallel, 1),
                "render_cpu_ms_per_image": round(_render_cpu_ms(size, min(n, 40)), 1),
                "decode_images_per_s": round(decode, 1),
                "ratio_parallel_vs_serial": round(parallel / serial, 2),
                "ratio_serial_vs_decode": round(serial / decode, 3),
            }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
