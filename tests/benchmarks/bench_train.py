"""Training throughput: hpatk's training epoch vs a bare PyTorch loop, in one run.

Same model (two copies of one initialisation), same in-memory uint8 data, same batch
size, steps, loss (focal), optimiser (Adam) and, on CUDA, AMP + channels_last. hpatk's
side is ``hpatk.core.engine.train_epoch`` fed by its DataLoader path (EpochBatchSampler,
whole-batch reads, BatchPrep on the device, NaN checks, progress); the bare side indexes
the tensors and steps. Rounds alternate between the two; the best round of each counts.

    python tests/benchmarks/bench_train.py [--device cpu] [--model resnet18] [--size 64]

Prints JSON with ``ratio`` = hpatk images/s / bare images/s (goal >= 0.95).
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch


class InMemory(torch.utils.data.Dataset):
    """uint8 images (N, C, S, S) and targets (N, K) held in memory."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor) -> None:
        self.images, self.targets = images, targets

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], self.targets[i]

    def read_batch(self, indices):
        idx = torch.as_tensor(indices)
        return self.images[idx], self.targets[idx]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--model", default=None, help="registered backbone (default: resnet18 on "
                    "CPU, resnet50 on CUDA)")
    ap.add_argument("--size", type=int, default=None, help="default: 64 on CPU, 256 on CUDA")
    ap.add_argument("--batch", type=int, default=None, help="default: 16 on CPU, 64 on CUDA")
    ap.add_argument("--steps", type=int, default=None, help="steps per round (default 12 CPU, "
                    "50 CUDA)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--classes", type=int, default=28)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from hpatk.core.batching import BatchPrep, EpochBatchSampler, make_loader
    from hpatk.core.device import amp_setup, resolve_device
    from hpatk.core.engine import train_epoch
    from hpatk.core.registry import get_registry

    dev = resolve_device(args.device)
    cuda = dev.type == "cuda"
    model_name = args.model or ("resnet50" if cuda else "resnet18")
    size = args.size or (256 if cuda else 64)
    batch = args.batch or (64 if cuda else 16)
    steps = args.steps or (50 if cuda else 12)
    n = batch * steps
    torch.manual_seed(0)
    images = torch.randint(0, 256, (n, 4, size, size), dtype=torch.uint8)
    targets = (torch.rand(n, args.classes) < 0.1).float()
    if cuda:
        images, targets = images.pin_memory(), targets.pin_memory()
    mean, std = [0.1, 0.1, 0.1, 0.1], [0.2, 0.2, 0.2, 0.2]
    reg = get_registry()
    base = reg.backbones.create(model_name, num_classes=args.classes, in_chans=4)
    models = {k: copy.deepcopy(base).to(dev) for k in ("hpatk", "bare")}
    if cuda:
        for m in models.values():
            m.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    opts = {k: torch.optim.Adam(m.parameters(), lr=5e-4) for k, m in models.items()}
    loss_fn = reg.losses.create("focal").to(dev)
    amp_dtype, _ = amp_setup(dev, True)
    scalers = {k: amp_setup(dev, True)[1] for k in models}

    # hpatk: the engine's loader and epoch
    ds = InMemory(images, targets)
    sampler = EpochBatchSampler(n, batch, seed=0)
    loader = make_loader(ds, sampler, workers=0, pin_memory=False)
    prep = BatchPrep(mean, std, device=dev, channels_last=cuda)

    def run_hpatk(epoch: int) -> None:
        sampler.set_epoch(epoch)
        train_epoch(models["hpatk"], loader, prep, loss_fn, opts["hpatk"],
                    scaler=scalers["hpatk"], amp_dtype=amp_dtype, desc="")

    # bare: the loop everyone writes
    m_t = torch.tensor(mean, device=dev).view(1, -1, 1, 1)
    s_t = torch.tensor(std, device=dev).view(1, -1, 1, 1)

    def run_bare(epoch: int) -> None:
        model, opt, scaler = models["bare"], opts["bare"], scalers["bare"]
        model.train()
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(epoch))
        for s in range(0, n, batch):
            idx = perm[s:s + batch]
            x = images[idx].to(dev, non_blocking=True).float().div_(255)
            x = (x - m_t) / s_t
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            y = targets[idx].to(dev, non_blocking=True)
            with torch.autocast(dev.type, dtype=amp_dtype or torch.float32,
                                enabled=amp_dtype is not None):
                logits = model(x)
            loss = loss_fn(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()

    def timed(fn, epoch: int) -> tuple[float, float]:
        """(wall s, process CPU s): on a shared CPU the CPU time is the steadier one."""
        if cuda:
            torch.cuda.synchronize()
        t, c = time.perf_counter(), time.process_time()
        fn(epoch)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t, time.process_time() - c

    timed(run_hpatk, 0)  # warm-up: allocator, cudnn autotune, first-call costs
    timed(run_bare, 0)
    best = {"hpatk": float("inf"), "bare": float("inf")}
    best_cpu = dict(best)
    for r in range(args.rounds):
        order = (("hpatk", run_hpatk), ("bare", run_bare))
        for name, fn in (order if r % 2 == 0 else order[::-1]):
            wall, cpu_s = timed(fn, r + 1)
            best[name], best_cpu[name] = min(best[name], wall), min(best_cpu[name], cpu_s)
    ips = {k: n / v for k, v in best.items()}
    cpu_ips = {k: n / v for k, v in best_cpu.items()}
    print(json.dumps({
        "benchmark": "train_step", "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if cuda else "cpu",
        "torch_threads": torch.get_num_threads(), "model": model_name, "size": size,
        "batch": batch, "steps": steps, "rounds": args.rounds,
        "amp": str(amp_dtype).replace("torch.", "") if amp_dtype else None,
        "hpatk_images_per_s": round(ips["hpatk"], 2), "bare_images_per_s": round(ips["bare"], 2),
        "ratio": round(ips["hpatk"] / ips["bare"], 4), "goal": 0.95,
        "cpu_time_ratio": None if cuda else round(cpu_ips["hpatk"] / cpu_ips["bare"], 4),
    }, indent=2))


if __name__ == "__main__":
    main()
