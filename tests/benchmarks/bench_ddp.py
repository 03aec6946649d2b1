"""DDP training throughput: 2 gloo processes vs 1 process on the same data, in one run.

Each configuration is a ``torchrun --standalone`` launch of this script in worker mode:
the same in-memory uint8 images, the same global batch, hpatk's own training path
(``EpochBatchSampler`` sharded by rank, ``DistributedDataParallel``, ``train_epoch`` with
its per-step NaN agreement, ``BatchPrep``). One warm-up epoch, then the best of
``--epochs`` timed epochs (wall time between two barriers). Configurations:

- ``1x1``: 1 process, 1 torch thread;  ``1xT``: 1 process, T threads (all cores);
- ``2x1``: 2 processes, 1 thread each (what ``torchrun --nproc_per_node=2`` sets).

    python tests/benchmarks/bench_ddp.py [--model resnet18] [--size 64] [--batch 32]

Prints JSON with ``ratio`` = images/s of 2x1 / images/s of the better single process, and
``scaling`` = 2x1 / 1x1 (2.0 would be perfect). On 2 CPU cores expect little: the
point is that it runs and is reported honestly; on GPUs use one process per GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def worker(args: argparse.Namespace) -> None:
    import torch
    from hpatk.core import distributed as ddp
    from hpatk.core.batching import BatchPrep, EpochBatchSampler, make_loader
    from hpatk.core.engine import train_epoch
    from hpatk.core.registry import get_registry

    torch.set_num_threads(args.threads)
    with ddp.distributed("gloo", 600, device="cpu") as d:
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (args.images, 4, args.size, args.size), dtype=torch.uint8,
                               generator=g)
        targets = (torch.rand(args.images, 28, generator=g) < 0.1).float()
        data = torch.utils.data.TensorDataset(images, targets)
        torch.manual_seed(0)
        model = get_registry().backbones.create(args.model, num_classes=28, in_chans=4)
        net = ddp.wrap_model(model, torch.device("cpu"))
        loss_fn = get_registry().losses.create("focal", gamma=2.0)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        prep = BatchPrep([0.1] * 4, [0.2] * 4, device="cpu")
        sampler = EpochBatchSampler(args.images, args.batch, seed=0, rank=d.rank,
                                    world_size=d.world_size)
        loader = make_loader(data, sampler, workers=0)
        best = float("inf")
        for epoch in range(args.epochs + 1):
            sampler.set_epoch(epoch)
            ddp.barrier()
            t = time.perf_counter()
            train_epoch(net, loader, prep, loss_fn, opt)
            ddp.barrier()
            if epoch:  # epoch 0 warms up
                best = min(best, time.perf_counter() - t)
        if ddp.is_main():
            print("RESULT " + json.dumps({"images_per_s": args.images / best, "epoch_s": best}))


def launch(nproc: int, threads: int, args: argparse.Namespace) -> dict[str, float]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", __file__, "--worker", "--threads", str(threads),
           "--model", args.model, "--size", str(args.size), "--batch", str(args.batch),
           "--images", str(args.images), "--epochs", str(args.epochs)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    if r.returncode or not lines:
        raise SystemExit(f"{nproc} x {threads} failed:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32, help="global batch")
    ap.add_argument("--images", type=int, default=256, help="images per epoch")
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs (best counts)")
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    cores = os.cpu_count() or 1
    runs = {"1x1": launch(1, 1, args), "2x1": launch(2, 1, args)}
    if cores > 1:
        runs[f"1x{cores}"] = launch(1, cores, args)
    single = max(v["images_per_s"] for k, v in runs.items() if k.startswith("1x"))
    ips = {k: round(v["images_per_s"], 2) for k, v in runs.items()}
    print(json.dumps({
        "benchmark": "ddp_gloo_cpu", "model": args.model, "size": args.size,
        "global_batch": args.batch, "images": args.images, "timed_epochs": args.epochs,
        "cpu_cores": cores, "load_average_1min": round(os.getloadavg()[0], 2),
        "images_per_s": ips,
        "ratio": round(runs["2x1"]["images_per_s"] / single, 4),
        "scaling": round(runs["2x1"]["images_per_s"] / runs["1x1"]["images_per_s"], 4),
    }, indent=2))


if __name__ == "__main__":
    main()
