"""``hpatk gan train``, ``hpatk gan sample`` and ``hpatk gan evaluate``: fit any registered
synthesizer on a cache's images, sample it into a cache (or PNG files), measure how good
its images are.

``hpatk train --aug NAME`` does all of this by itself, fold-safely; these commands are
for inspecting, reusing and exporting generators. Only click is imported at the top.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click
from hpatk.cli.train import key_values
from hpatk.core.threads import threads_option


@click.group()
def gan() -> None:
    """Fit synthesizers (the paper's per-class DCGAN, the conditional cdcgan, any
    plugin's) and sample them into a cache.

    \b
    Example:
      hpatk gan train --data cache.h5 --top 5 --fold 0 --out gans
      hpatk gan sample gans/class_00/generator.pt --n 1000 --into cache.h5
      hpatk gan evaluate gans --data cache.h5 --out gan-eval
      hpatk train --data cache.h5 --aug gan --synthetic-source cache --out run1
    """


@gan.command("train")
@click.option("--data", required=True, type=click.Path(exists=True),
              help="A cache .h5 or a dataset folder (its default cache is built or reused).")
@click.option("--class", "-c", "classes", multiple=True, metavar="CLASS",
              help="Class index or name (repeatable).")
@click.option("--top", type=click.IntRange(1, 28), default=None,
              help="The N most populous classes of the cache (the paper: 5).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output folder: OUT/class_XX/ per class (a conditional synthesizer: "
                   "OUT/conditional/).")
@click.option("--synth", "synth_name", default="gan", show_default=True,
              help="Registered synthesizer (hpatk registry synthesizers).")
@click.option("--param", "params", multiple=True, callback=key_values, metavar="KEY=VALUE",
              help="Synthesizer parameter, e.g. width=8 (repeatable).")
@click.option("--size", type=int, default=None,
              help="Image size of the generator (its image_size parameter); cache images "
                   "are resized to it. [default: the cache's]")
@click.option("--steps", type=click.IntRange(1), default=None,
              help="Training steps (its steps parameter). [default: the synthesizer's]")
@click.option("--batch-size", type=click.IntRange(2), default=None,
              help="Its batch_size parameter. [default: the synthesizer's]")
@click.option("--device", default=None, help="auto, cpu, cuda, cuda:N (its device parameter).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--fold", type=int, default=None,
              help="Learn only the training part of fold K, as 'hpatk train --fold K' "
                   "(the generator records the exact training Ids: fold safety is checked "
                   "by content).")
@click.option("--folds", type=click.IntRange(2), default=5, show_default=True)
@click.option("--fold-seed", type=int, default=None,
              help="The folds' seed (hpatk train --seed) [default: --seed].")
@click.option("--fold-classes", default="all", show_default=True,
              help="The 'hpatk train --classes' the folds are made for.")
@click.option("--folds-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Read the folds from an Id,fold CSV (e.g. RUN/folds.csv) instead.")
@click.option("--exclusive", is_flag=True,
              help="Only images whose single label is the class (per-class synthesizers).")
@click.option("--resume", is_flag=True, help="Continue an interrupted fit in OUT.")
@click.option("--force", is_flag=True, help="Start over where OUT already holds a generator.")
@threads_option
def train(data: str, classes: tuple[str, ...], top: int | None, out: str, synth_name: str,
          params: dict[str, Any] | None, size: int | None, steps: int | None,
          batch_size: int | None, device: str | None, seed: int, fold: int | None,
          folds: int, fold_seed: int | None, fold_classes: str, folds_file: str | None,
          exclusive: bool, resume: bool, force: bool) -> None:
    """Fit a synthesizer per class (or one conditional synthesizer for all the classes)
    on the cache's images and write OUT/.../generator.pt. Under torchrun the generators
    spread over the processes (round robin).

    \b
    Example:
      hpatk gan train --data cache.h5 --class 0 --class 25 --out gans
      hpatk gan train --data cache.h5 --top 5 --size 32 --steps 2000 --param width=8 \\
          --fold 0 --out gans
      hpatk gan train --data cache.h5 --top 5 --synth cdcgan --size 32 --out cgan
    """
    if classes and top:
        raise click.UsageError("give --class or --top, not both")
    if not classes and not top:
        raise click.UsageError("give --class CLASS (repeatable) or --top N")
    if resume and force:
        raise click.UsageError("give --resume or --force, not both")
    if fold is None and (folds_file or fold_seed is not None):
        raise click.UsageError("--folds-file and --fold-seed need --fold K")

    import numpy as np
    from hpatk.core.cache import cache_ids, cache_labels, ensure_cache, read_cache_meta
    from hpatk.core.classes import CLASS_NAMES, parse_class, parse_classes, top_classes
    from hpatk.core.errors import HpatkError
    from hpatk.core.folds import assign_folds
    from hpatk.core.generator import build_synthesizer
    from hpatk.core.registry import get_registry

    options = dict(params or {})
    for key, value in (("image_size", size), ("steps", steps), ("batch_size", batch_size),
                       ("device", device)):
        if value is not None:
            options[key] = value
    name = get_registry().synthesizers.canonical(synth_name)
    probe = build_synthesizer(name, options)  # bad names and parameters: before any file
    if fold is not None and not 0 <= fold < folds:
        raise HpatkError(f"--fold {fold}: must be in 0..{folds - 1} (--folds {folds})")

    cache = Path(ensure_cache(data))
    meta = read_cache_meta(cache)
    labels = np.asarray(cache_labels(cache))
    ids = [str(i) for i in cache_ids(cache)]
    wanted = list(dict.fromkeys(parse_class(c) for c in classes) if classes
                  else top_classes(labels, int(top or 0)))
    allowed = np.arange(len(labels))
    part = ""
    if fold is not None:
        fcls = parse_classes(fold_classes, labels.sum(axis=0))  # as hpatk train does
        rows, folds_of = assign_folds(labels, ids, fcls, k=folds,
                                      seed=seed if fold_seed is None else fold_seed,
                                      folds_file=folds_file)
        allowed = rows[folds_of != fold]
        part = f" (training part of fold {fold})"
        outside = [c for c in wanted if c not in fcls]
        if outside:
            raise HpatkError(f"--class {outside[0]}: not among the fold classes "
                             f"(--fold-classes {fold_classes})")
    in_fold = np.zeros(len(labels), bool)
    in_fold[allowed] = True

    def rows_of(targets: list[int]) -> Any:
        mask = in_fold & labels[:, targets].any(axis=1)
        if exclusive:
            mask &= labels.sum(axis=1) == 1
        return np.flatnonzero(mask)

    groups = ([([c], f"class_{c:02d}") for c in wanted] if probe.per_class
              else [(wanted, "conditional")])
    plan = []
    for targets, folder in groups:  # check every group before fitting any
        rows = rows_of(targets)
        if len(rows) == 0:
            what = f"class {targets[0]} ({CLASS_NAMES[targets[0]]})" if len(targets) == 1 \
                else f"classes {targets}"
            raise HpatkError(f"{what} has no {'single-label ' if exclusive else ''}images in "
                             f"'{cache}'{part}")
        run = Path(out) / folder
        if ((run / "generator.pt").exists() or (run / "last.pt").exists()) and not (
                resume or force):
            raise HpatkError(f"'{run}' already holds a generator; pass --resume to continue "
                             f"it or --force to start over")
        plan.append((targets, rows, run))
    from hpatk.core import distributed as ddp

    with ddp.distributed(device=str(options.get("device", "auto"))):
        try:
            _fit_all(ddp.spread(plan), name, options, cache, meta, labels, ids, part, fold,
                     seed, force=force, resume=resume)
        except BaseException:
            ddp.agree(False, ddp.LONG_WAIT_S)
            raise
        failed = ddp.agree(True, ddp.LONG_WAIT_S)
        if failed:
            raise HpatkError(f"gan train: rank(s) {failed} failed; their classes have no "
                             f"generator")


def _fit_all(plan: list[Any], name: str, options: dict[str, Any], cache: Path,
             meta: dict[str, Any], labels: Any, ids: list[str], part: str, fold: int | None,
             seed: int, *, force: bool, resume: bool) -> None:
    """Fit and save each (classes, rows, folder) of ``plan`` (this rank's share under
    torchrun: one generator per class, round robin)."""
    import numpy as np
    from hpatk.core.cache import ids_digest
    from hpatk.core.generator import build_synthesizer, read_images, save_generator
    from hpatk.core.synthetic import fit_synthesizer, generator_key

    probe = build_synthesizer(name, options)
    for targets, rows, run in plan:
        if force:  # stale pictures of the old run would sit beside the new ones
            for old in [*run.glob("samples_step_*.png"), run / "last.pt", run / "generator.pt"]:
                old.unlink(missing_ok=True)
        what = ",".join(map(str, targets))
        click.echo(f"{name} for class {what}: {len(rows)} images{part} -> {run}", err=True)
        images = read_images(cache, rows, probe.image_size, desc=f"class {what} images")
        y = labels[rows][:, targets].astype(np.uint8)
        synth = build_synthesizer(name, options)
        run.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        summary = fit_synthesizer(synth, images, y, classes=targets, out_dir=run, seed=seed,
                                  stains=meta["stains"], resume=resume)
        train_ids = [ids[r] for r in rows]
        # the key hpatk train --aug computes for this fit: from the parameters asked for,
        # not those fit filled in (channels, image_size...), so it finds these samples
        key = generator_key(cache_fingerprint=str(meta.get("fingerprint", "")),
                            ids_sha256=ids_digest(train_ids), classes=targets,
                            synthesizer=name, params=probe.params, seed=seed)
        save_generator(run / "generator.pt", synth, name=name, classes=targets,
                       train_ids=train_ids, train_labels=y, stains=meta["stains"],
                       enhance=meta["enhance"], fold=fold, key=key,
                       cache_fingerprint=str(meta.get("fingerprint", "")), seed=seed,
                       summary=summary)
        click.echo(f"class {what}: fitted in {time.monotonic() - start:.1f}s -> "
                   f"{run / 'generator.pt'}")


@gan.command("sample")
@click.argument("generator", type=click.Path(exists=True, dir_okay=False))
@click.option("--n", "n", type=click.IntRange(1), default=1000, show_default=True,
              help="Images per class.")
@click.option("--into", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Append them to this cache's synthetic group.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Instead, write PNGs in the Kaggle layout (train.csv + train/) and a "
                   "samples.png grid, for inspection.")
@click.option("--class", "-c", "classes", multiple=True, metavar="CLASS",
              help="Which of a conditional generator's classes (repeatable) [default: all].")
@click.option("--seed", type=int, default=0, show_default=True, help="Noise seed.")
@click.option("--device", default=None, help="auto, cpu, cuda, cuda:N.")
@click.option("--resize", is_flag=True,
              help="Resize the samples to the cache's size when it differs from the "
                   "generator's (otherwise refused).")
def sample(generator: str, n: int, into: str | None, out: str | None,
           classes: tuple[str, ...], seed: int, device: str | None, resize: bool) -> None:
    """Generate N images per class from GENERATOR into a cache (or PNG files).

    The cache stores them in its synthetic group with their provenance (synthesizer,
    generator file and SHA-256, fold, the Ids of the images it learnt from), apart from
    the real images: hpatk train --aug NAME --synthetic-source cache uses them where
    they are fold-safe. Stains and enhancement must match the cache.

    \b
    Example:
      hpatk gan sample gans/class_00/generator.pt --n 1000 --into cache.h5
      hpatk gan sample gans/class_00/generator.pt --n 32 --out samples-c00
    """
    if (into is None) == (out is None):
        raise click.UsageError("give exactly one of --into CACHE or --out DIR")
    from hpatk.core.classes import parse_class
    from hpatk.core.folds import fold_label
    from hpatk.core.generator import load_generator, sample_into_cache, write_samples_dir

    gen = load_generator(generator, device=device)
    which = [parse_class(c) for c in classes] or gen.classes
    if into is not None:
        for c in which:
            batch = sample_into_cache(gen, into, c, n, seed=seed, resize=resize)
            click.echo(f"added {n} synthetic images of class {c} to {into} as "
                       f"synthetic/{batch} (generator trained on "
                       f"{fold_label(gen.ckpt.get('fold'))}, seed {seed})")
    else:
        write_samples_dir(gen, out, n, seed=seed, classes=which)  # type: ignore[arg-type]
        click.echo(f"wrote {n} images per class of classes {which} to {out}")


@gan.command("evaluate")
@click.argument("generators", type=click.Path(exists=True))
@click.option("--data", required=True, type=click.Path(exists=True),
              help="The cache the generators learnt from (its real images are compared).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder for evaluation.md, evaluation.csv and the pictures.")
@click.option("--n", "n", type=click.IntRange(4), default=200, show_default=True,
              help="Synthetic images drawn per class.")
@click.option("--max-real", type=click.IntRange(8), default=1000, show_default=True,
              help="At most this many real training and held-out images (seeded subsample).")
@click.option("--epochs", type=click.IntRange(1), default=30, show_default=True,
              help="Epochs of the small CNN (GAN-train, GAN-test, the features).")
@click.option("--k", type=click.IntRange(1), default=3, show_default=True,
              help="Neighbours of the precision/recall manifolds.")
@click.option("--copy-quantile", type=click.FloatRange(0, 1, min_open=True), default=0.01,
              show_default=True, help="A synthetic image nearer to a training image than "
              "this quantile of held-out real images' nearest distances is flagged a copy.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default=None, help="Where generators sample (auto, cpu, cuda).")
@threads_option
def evaluate(generators: str, data: str, out: str, n: int, max_real: int, epochs: int, k: int,
             copy_quantile: float, seed: int, device: str | None) -> None:
    """How good are the synthetic images? GAN-train/GAN-test, feature FD and KID,
    precision/recall, memorisation.

    GENERATORS is a generator.pt, a folder of them (hpatk gan train's OUT, a cache's
    .synth store) or a training run trained with a synthesizer --aug (its synthetic.csv
    names its generators). Each generator's recorded training Ids split the cache's real
    images into its training images and held-out ones. Features are a small CNN's trained
    on the real training images (no Inception weights): the distances are NOT comparable
    to published FIDs. Writes OUT/evaluation.md, evaluation.csv, closest_pairs_*.png,
    nn_distances.png; prints the table.

    \b
    Example:
      hpatk gan evaluate demo/run --data demo/cache.h5 --out demo/gan-eval
      hpatk gan evaluate gans --data cache.h5 --n 500 --out gan-eval
    """
    from hpatk.core.gan_evaluate import evaluate_generators, find_generators

    paths = find_generators(generators)
    evaluate_generators(paths, data, out, n_per_class=n, max_real=max_real, seed=seed,
                        epochs=epochs, k=k, copy_quantile=copy_quantile, device=device)
    click.echo((Path(out) / "evaluation.md").read_text())
