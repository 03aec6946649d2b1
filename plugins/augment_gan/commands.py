"""``hpatk gan train`` and ``hpatk gan sample``, added to the command line through the
``hpatk_register_commands`` hook (the built-in example of that hook).

Only click is imported at the top: torch and friends load inside the commands, so
``hpatk --help`` stays fast.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import click
from hpatk.core.threads import threads_option


@click.group()
def gan() -> None:
    """Train per-class DCGANs (the paper's synthetic augmentation) and add their
    samples to a cache.

    \b
    Example:
      hpatk gan train --data cache.h5 --top 5 --out gans
      hpatk gan sample gans/class_00/generator.pt --n 1000 --into cache.h5
      hpatk train --data cache.h5 --aug gan --classes top5 --out run1
    """


@gan.command("train")
@click.option("--data", required=True, type=click.Path(exists=True),
              help="A cache .h5 or a dataset folder (its default CLAHE 512 px cache is "
                   "built or reused).")
@click.option("--class", "-c", "classes", multiple=True, metavar="CLASS",
              help="Class index or name to train a GAN for (repeatable).")
@click.option("--top", type=click.IntRange(1, 28), default=None,
              help="Train the N most populous classes of the cache (the paper: 5).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output folder; each class goes to OUT/class_XX/.")
@click.option("--size", type=int, default=None,
              help="GAN image size, 8*2^n (16..512); default: the cache's size. Cache "
                   "images are resized on the fly (area).")
@click.option("--width", type=click.IntRange(1), default=64, show_default=True,
              help="Channel multiplier: 16*width channels at 8x8 (64 = the paper's 1024; "
                   "4-16 for a CPU).")
@click.option("--steps", type=click.IntRange(1), default=None,
              help="D+G updates (the paper's Keras 'epochs'). [default: 10000]")
@click.option("--epochs", type=float, default=None,
              help="Instead of --steps: passes over the class's images "
                   "(steps = ceil(epochs * images / batch)).")
@click.option("--batch-size", type=click.IntRange(2), default=32, show_default=True)
@click.option("--g-lr", type=float, default=2e-4, show_default=True,
              help="Adam learning rate of the generator (beta1 0.5).")
@click.option("--d-lr", type=float, default=0.005, show_default=True,
              help="SGD learning rate of the discriminator.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@click.option("--sample-every", type=click.IntRange(0), default=1000, show_default=True,
              help="Save a sample grid every N steps (and at step 0 and the end).")
@click.option("--checkpoint-every", type=click.IntRange(0), default=0,
              help="Save last.pt/generator.pt every N steps [default: --sample-every].")
@click.option("--fold", type=int, default=None,
              help="Train only on the training part of fold K, as 'hpatk train --fold K' "
                   "(recorded in the checkpoint and the cache, so no validation leakage).")
@click.option("--folds", type=click.IntRange(2), default=5, show_default=True,
              help="Number of folds (as hpatk train --folds).")
@click.option("--fold-seed", type=int, default=None,
              help="The folds' seed (hpatk train --seed) [default: --seed].")
@click.option("--fold-classes", default="all", show_default=True,
              help="The 'hpatk train --classes' the folds are made for: all, top5 or "
                   "0,25,2.")
@click.option("--folds-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Read the folds from an Id,fold CSV (e.g. RUN/folds.csv) instead.")
@click.option("--exclusive", is_flag=True,
              help="Use only images whose single label is the class.")
@click.option("--resume", is_flag=True, help="Continue from OUT/class_XX/last.pt.")
@click.option("--force", is_flag=True,
              help="Start over in a class folder that already holds a run.")
@click.option("--max-memory", type=float, default=4.0, show_default=True,
              help="GiB of resized images to hold in memory; above it batches are read "
                   "from the cache.")
@threads_option
def train(data: str, classes: tuple[str, ...], top: int | None, out: str, size: int | None,
          width: int, steps: int | None, epochs: float | None, batch_size: int, g_lr: float,
          d_lr: float, seed: int, device: str, sample_every: int, checkpoint_every: int,
          fold: int | None, folds: int, fold_seed: int | None, fold_classes: str,
          folds_file: str | None, exclusive: bool, resume: bool, force: bool,
          max_memory: float) -> None:
    """Train one DCGAN per class on the cache's images of that class.

    The paper's recipe: images in [-1, 1], Adam for G, SGD for D, 5% flipped labels,
    real targets 0.9, separate real and fake batches. Writes OUT/class_XX/generator.pt,
    last.pt (resumable), losses.csv, losses.png, samples_real.png, samples_step_N.png.

    \b
    Example:
      hpatk gan train --data cache.h5 --class 0 --class 25 --out gans
      hpatk gan train --data cache.h5 --top 5 --size 64 --width 8 --steps 2000 --out gans
      hpatk gan train --data cache.h5 --top 5 --fold 0 --out gans-fold0
    """
    from hpatk.core.errors import HpatkError

    if classes and top:
        raise click.UsageError("give --class or --top, not both")
    if not classes and not top:
        raise click.UsageError("give --class CLASS (repeatable) or --top N")
    if steps is not None and epochs is not None:
        raise click.UsageError("give --steps or --epochs, not both")
    if epochs is not None and not epochs > 0:
        raise click.BadParameter("must be > 0", param_hint="--epochs")
    if resume and force:
        raise click.UsageError("give --resume or --force, not both")
    if fold is None and (folds_file or fold_seed is not None):
        raise click.UsageError("--folds-file and --fold-seed need --fold K")

    import numpy as np
    from hpatk.core.cache import cache_ids, cache_labels, ensure_cache, read_cache_meta
    from hpatk.core.classes import CLASS_NAMES
    from hpatk.plugins.augment_gan import classdata
    from hpatk.plugins.augment_gan.dcgan import DCGAN, num_stages
    from hpatk.plugins.augment_gan.trainer import GanTrainConfig, train_gan

    cache = Path(ensure_cache(data))
    meta = read_cache_meta(cache)
    labels = np.asarray(cache_labels(cache))
    gan_size = int(size or meta["size"])
    try:
        num_stages(gan_size)
    except ValueError as exc:
        raise HpatkError(f"--size {gan_size}: {exc}") from None

    wanted = ([classdata.parse_class(c) for c in classes] if classes
              else classdata.top_classes(labels, int(top or 0)))
    wanted = list(dict.fromkeys(wanted))  # repeated --class: once
    allowed = None
    spec = None
    if fold is not None:
        spec = classdata.FoldSpec(fold=fold, folds=folds,
                                  seed=seed if fold_seed is None else fold_seed,
                                  classes=classdata.fold_classes(fold_classes),
                                  folds_file=folds_file)
        allowed = classdata.training_rows(labels, cache_ids(cache), spec)

    # Check every class before training any.
    plan = []
    part = f" (training part of fold {fold})" if fold is not None else ""
    for c in wanted:
        if spec is not None and c not in spec.classes:
            raise HpatkError(f"--class {c}: not among the fold classes (--fold-classes "
                             f"{fold_classes})")
        rows = classdata.class_rows(labels, c, allowed=allowed, exclusive=exclusive)
        if len(rows) == 0:
            raise HpatkError(f"class {c} ({CLASS_NAMES[c]}) has no "
                             f"{'single-label ' if exclusive else ''}images in '{cache}'{part}")
        plan.append((c, rows))

    out_dir = Path(out)
    for c, _ in plan:
        run = out_dir / f"class_{c:02d}"
        if (run / "last.pt").exists() and not (resume or force):
            raise HpatkError(f"'{run}' already holds a GAN run; pass --resume to continue it "
                             f"or --force to start over")
        if force:  # stale grids of the old run would sit beside the new ones
            for old in run.glob("samples_step_*.png"):
                old.unlink()
    for c, rows in plan:
        n_steps = steps if steps is not None else (
            math.ceil(epochs * len(rows) / batch_size) if epochs is not None else 10000)
        cfg = GanTrainConfig(steps=n_steps, batch_size=batch_size, g_lr=g_lr, d_lr=d_lr,
                             seed=seed, device=device, sample_every=sample_every,
                             checkpoint_every=checkpoint_every)
        name = CLASS_NAMES[c]
        click.echo(f"class {c} ({name}): {len(rows)} images{part}, {gan_size} px, "
                   f"width {width}, {n_steps} steps", err=True)
        bank = classdata.load_bank(cache, rows, gan_size, max_memory=max_memory * 2**30,
                                   desc=f"class {c} images")
        import torch

        torch.manual_seed(seed)  # the initial weights
        model = DCGAN(channels=bank.channels, image_size=gan_size, width=width)
        provenance: dict[str, Any] = {
            "class_index": c, "class_name": name, "stains": list(meta["stains"]),
            "enhance": meta["enhance"], "fold": fold,
            "cache": str(cache.resolve()), "cache_fingerprint": meta.get("fingerprint"),
            "cache_size": int(meta["size"]), "n_images": int(len(rows)),
            "exclusive": bool(exclusive),
            **({k: v for k, v in spec.provenance().items() if k != "fold"} if spec else {}),
        }
        start = time.monotonic()
        result = train_gan(model, bank, cfg, out_dir=out_dir / f"class_{c:02d}", meta=provenance,
                           resume=resume, desc=f"gan class {c}")
        took = time.monotonic() - start
        last = result.history[-1] if result.history else {}
        click.echo(f"class {c} ({name}): {n_steps} steps in {took:.1f}s; last d_real "
                   f"{last.get('d_loss_real', float('nan')):.3f} d_fake "
                   f"{last.get('d_loss_fake', float('nan')):.3f} g "
                   f"{last.get('g_loss', float('nan')):.3f} -> "
                   f"{out_dir / f'class_{c:02d}' / 'generator.pt'}")


@gan.command("sample")
@click.argument("generator", type=click.Path(exists=True, dir_okay=False))
@click.option("--n", "n", type=click.IntRange(1), default=1000, show_default=True,
              help="How many images to generate.")
@click.option("--into", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Append them to this cache's synthetic group.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Instead, write PNGs in the Kaggle layout (train.csv + train/) and a "
                   "samples.png grid, for inspection.")
@click.option("--seed", type=int, default=0, show_default=True, help="Noise seed.")
@click.option("--batch", type=click.IntRange(1), default=64, show_default=True,
              help="Images per generator call.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@click.option("--resize", is_flag=True,
              help="Resize the samples to the cache's size when it differs from the "
                   "generator's (otherwise refused).")
def sample(generator: str, n: int, into: str | None, out: str | None, seed: int, batch: int,
           device: str, resize: bool) -> None:
    """Generate N images of GENERATOR's class into a cache (or PNG files).

    The cache stores them in its synthetic group with their provenance (class,
    generator file and SHA-256, fold, seed), apart from the real images: training reads
    them only with --aug gan. Stains and enhancement must match the cache.

    \b
    Example:
      hpatk gan sample gans/class_00/generator.pt --n 1000 --into cache.h5
      hpatk gan sample gans/class_00/generator.pt --n 32 --out samples-c00
    """
    if (into is None) == (out is None):
        raise click.UsageError("give exactly one of --into CACHE or --out DIR")
    from hpatk.core.folds import fold_label
    from hpatk.plugins.augment_gan.sampling import load_generator, sample_into_cache, sample_to_dir

    gen = load_generator(generator, device=device)
    name = gen.ckpt.get("class_name") or gen.class_index
    if into is not None:
        batch_name = sample_into_cache(gen, into, n, seed=seed, batch_size=batch, resize=resize)
        click.echo(f"added {n} synthetic images of class {gen.class_index} ({name}) to "
                   f"{into} as synthetic/{batch_name} (generator trained on "
                   f"{fold_label(gen.ckpt.get('fold'))}, seed {seed})")
    else:
        sample_to_dir(gen, out, n, seed=seed, batch_size=batch)  # type: ignore[arg-type]
        click.echo(f"wrote {n} images of class {gen.class_index} ({name}) to {out}")
