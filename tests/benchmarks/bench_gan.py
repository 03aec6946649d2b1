"""Benchmark: DCGAN training speed (one step = one D update on a real and a fake batch +
one G update, the paper's recipe) at the paper's width (64 -> 1024 channels at 8x8) and
at a CPU-sized width, on random uint8 images.

Widths run interleaved in one process, best of ``--rounds`` (the machine is shared;
ratios hold better than absolute numbers).

    python tests/benchmarks/bench_gan.py                         # 64 px, batch 32, widths 64,8
    python tests/benchmarks/bench_gan.py --size 128 --widths 64,16,4 --threads 1

Prints one JSON object: ``steps_per_s`` per width, ``images_per_s`` (real + fake images
through D per second), parameter counts, and ``ratio`` = steps/s of the last width over
the first (the paper's).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--widths", default="64,8")
    ap.add_argument("--seconds", type=float, default=15.0, help="time per measurement")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    import torch
    from hpatk.plugins.augment_gan.dcgan import DCGAN
    from hpatk.plugins.augment_gan.trainer import GanTrainConfig, ImageBank, train_gan

    if args.threads:
        torch.set_num_threads(args.threads)
    widths = [int(w) for w in args.widths.split(",")]
    rng = np.random.default_rng(0)
    bank = ImageBank(rng.integers(0, 256, (256, 4, args.size, args.size), dtype=np.uint8),
                     size=args.size)
    gans = {w: DCGAN(channels=4, image_size=args.size, width=w) for w in widths}
    best = {w: 0.0 for w in widths}

    def run(w: int, steps: int) -> float:
        cfg = GanTrainConfig(steps=steps, batch_size=args.batch, device=args.device,
                             sample_every=0)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        train_gan(gans[w], bank, cfg, desc=f"width {w}")
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t

    # Warm-up step, and a step count that fills about --seconds per width.
    steps = {w: max(2, int(args.seconds / max(run(w, 1), 1e-3))) for w in widths}
    for _ in range(args.rounds):
        for w in widths:
            best[w] = max(best[w], steps[w] / run(w, steps[w]))

    out = {
        "benchmark": "dcgan_train_step", "size": args.size, "batch": args.batch,
        "device": args.device, "threads": torch.get_num_threads(),
        "steps_per_s": {str(w): round(best[w], 3) for w in widths},
        "images_per_s": {str(w): round(best[w] * 2 * args.batch, 1) for w in widths},
        "params_g_d_millions": {
            str(w): [round(sum(p.numel() for p in m.parameters()) / 1e6, 3)
                     for m in (gans[w].generator, gans[w].discriminator)] for w in widths},
        "ratio": round(best[widths[-1]] / best[widths[0]], 2),
        "ratio_of": f"width {widths[-1]} / width {widths[0]} steps per second",
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
