"""``hpatk train``, ``hpatk evaluate``, ``hpatk experiment``.

Only click is imported at the top; the engine (torch) is imported inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from hpatk.core.threads import threads_option

if TYPE_CHECKING:
    from hpatk.core.train_config import TrainConfig


def key_values(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> Any:
    """``KEY=VALUE`` pairs (VALUE read as YAML: numbers, lists, true/false) -> dict."""
    if not values:
        return None
    import yaml

    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"'{item}' is not KEY=VALUE", ctx=ctx, param=param)
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


def _fold(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None or value == "all":
        return value
    try:
        return int(value)
    except ValueError:
        raise click.BadParameter(f"'{value}' is not a fold number or 'all'", ctx=ctx,
                                 param=param) from None


def _stains(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    return [s.strip() for s in value.split(",") if s.strip()] if value else None


def dist_options(f: Any) -> Any:
    """``--dist-backend`` and ``--dist-timeout``: how the processes of a ``torchrun``
    launch talk (ignored without one)."""
    f = click.option("--dist-timeout", type=click.FloatRange(min=1), default=600,
                     show_default=True, help="Under torchrun: seconds a rank waits for the "
                     "others before the run stops with an error.")(f)
    return click.option("--dist-backend", type=click.Choice(["auto", "nccl", "gloo"]),
                        default="auto", show_default=True, help="Under torchrun: nccl on "
                        "CUDA, gloo on CPU (auto).")(f)


# option name -> TrainConfig field, for options whose names differ
_FIELD = {"aug_param": "aug_params", "loss_param": "loss_params",
          "backbone_param": "backbone_params", "enhance_param": "enhance_params"}


@click.command()
@click.option("--data", type=click.Path(), help="Cache (.h5) or dataset folder (cached "
              "automatically).")
@click.option("--out", type=click.Path(file_okay=False), help="Run folder.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="Replay a run's config.yaml; options given here override it.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last.pt.")
@click.option("--recipe", help="A preset of the paper's settings: paper-top5 (VGG16, 5 "
              "classes, Tables 2/3) or paper-28 (InceptionV4, 28 classes, Table 1). Options "
              "given here override it.")
@click.option("--backbone", help="Registered backbone (hpatk registry backbones). "
              "[default: inceptionv4]")
@click.option("--backbone-param", multiple=True, callback=key_values, metavar="KEY=VALUE",
              help="Extra backbone factory argument (repeatable).")
@click.option("--head", type=click.Choice(["default", "paper"]),
              help="Classifier head: timm's, or the paper's. [default: default]")
@click.option("--pretrained", help="ImageNet weights: a local file (or a hub name online).")
@click.option("--aug", help="A batch augmentation (classic), a synthesizer (gan, cdcgan: "
              "generators fitted on this fold's training images add synthetic images; the "
              "--batch-aug still applies), none, or any registered name. [default: classic]")
@click.option("--aug-param", multiple=True, callback=key_values, metavar="KEY=VALUE",
              help="Parameter of --aug, e.g. hflip=0.5, or steps=2000 for a synthesizer "
              "(repeatable).")
@click.option("--batch-aug", help="With a synthesizer --aug: the batch augmentation applied "
              "on top (none: off). [default: classic]")
@click.option("--synthetic-per-class", type=int, help="With a synthesizer --aug: synthetic "
              "images per class and fold (the paper: 1000). [default: 1000]")
@click.option("--synthetic-source", type=click.Choice(["fit", "cache"]),
              help="fit: fit (or reuse, by fingerprint) generators on the fold's training "
              "images; cache: use the cache's existing samples where fold-safe. "
              "[default: fit]")
@click.option("--loss", help="Registered loss (focal, bce, ...). [default: focal, gamma 2]")
@click.option("--loss-param", multiple=True, callback=key_values, metavar="KEY=VALUE",
              help="Loss parameter, e.g. gamma=2 (repeatable).")
@click.option("--folds", type=int, help="Number of CV folds. [default: 5]")
@click.option("--fold", callback=_fold, help="Fold to validate on (0..folds-1) or 'all' "
              "(each in turn, into RUN/fold_K). [default: 0]")
@click.option("--folds-file", type=click.Path(dir_okay=False),
              help="Use this folds.csv (Id,fold) instead of computing folds.")
@click.option("--epochs", type=int, help="Epochs. [default: 35]")
@click.option("--size", type=int, help="Input size in px (the cache is built at it). "
              "[default: 512, or the cache's]")
@click.option("--classes", help="all, top5, indices like 0,25,2, or present[:N] (the classes "
              "with >= N images, N default 10). [default: all]")
@click.option("--real-per-class", type=int, help="Train on about N real images per class "
              "(a seeded subsample of the fold's training images; validation is untouched).")
@click.option("--in-stains", callback=_stains, help="Stains the model sees, e.g. "
              "green,red,blue. [default: the cache's]")
@click.option("--enhance", help="Enhancer used when caching a dataset folder. [default: clahe]")
@click.option("--enhance-param", multiple=True, callback=key_values, metavar="KEY=VALUE",
              help="Enhancer parameter, e.g. clip_limit=2 (repeatable).")
@click.option("--cache-dir", type=click.Path(file_okay=False),
              help="Where to build the cache of a dataset folder.")
@click.option("--lr", type=float, help="Initial learning rate (Adam). [default: 5e-4]")
@click.option("--lr-decay", type=float, help="lr = lr0 * exp(-decay * epoch). [default: 0.01]")
@click.option("--weight-decay", type=float, help="Adam weight decay. [default: 0]")
@click.option("--batch-size", type=int, help="Initial batch size. [default: 32]")
@click.option("--batch-double-every", type=int, help="Double the batch every N epochs "
              "(0: never). [default: 15]")
@click.option("--max-batch-size", type=int, help="Cap of the doubling. [default: 128]")
@click.option("--workers", type=int, help="DataLoader workers. [default: 0 on CPU, up to 8 "
              "on CUDA]")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]),
              help="[default: auto]")
@click.option("--amp/--no-amp", default=None, help="Mixed precision on CUDA. [default: on]")
@click.option("--seed", type=int, help="Seed: folds, init, shuffling, augmentation. "
              "[default: 0]")
@click.option("--sync-bn/--no-sync-bn", default=None, help="Under torchrun on GPUs: "
              "BatchNorm statistics over the global batch (SyncBatchNorm). [default: off]")
@dist_options
@threads_option
def train(config_path: str | None, resume: bool, recipe: str | None, dist_backend: str,
          dist_timeout: float, **options: Any) -> None:
    """Train a multi-label classifier (the paper's recipe by default).

    Adam, lr 5e-4 decaying as exp(-0.01 epoch), batch 32 doubled every 15 epochs up to
    128, 35 epochs, focal loss (gamma 2), 5-fold multilabel-stratified CV. Writes the run
    folder: config.yaml, folds.csv, metrics.csv, best_loss.pt, best_macro_f1.pt,
    best_micro_f1.pt, last.pt, thresholds.json, report.md.

    \b
    Example:
      hpatk train --data cache.h5 --backbone inceptionv4 --aug classic --out run1
      hpatk train --data data --backbone vgg16 --head paper --classes top5 --size 256 \\
          --fold all --out run5
      hpatk train --out run1 --resume --epochs 40
      hpatk train --config run1/config.yaml --seed 1 --out run1-seed1
      hpatk train --data data --recipe paper-top5 --size 256 --out vgg16-top5
      torchrun --standalone --nproc_per_node=2 $(which hpatk) train --data cache.h5 \\
          --backbone resnet18 --out run2     # one process per GPU (README: Scaling out)
    """
    from hpatk.core.distributed import distributed, is_main

    overrides = {_FIELD.get(k, k): v for k, v in options.items() if v is not None}
    if resume and recipe:
        raise click.UsageError("--recipe starts a run; a resumed run keeps its config.yaml")
    cfg = train_config(config_path, resume, recipe, overrides)
    from hpatk.core.engine import train as run_training

    with distributed(dist_backend, dist_timeout, device=cfg.device):
        results = run_training(cfg, resume=resume, overrides=overrides)
        if not is_main():
            return
    for r in results:
        b = r.best.get("best_macro_f1", {})
        present = (f" over {int(b['val_classes_present'])} of {len(r.thresholds)} classes "
                   f"present" if "val_classes_present" in b else "")
        click.echo(f"fold {r.fold}: best macro F1 {b.get('val_macro_f1', float('nan')):.4f}"
                   f"{present} (epoch {b.get('epoch')}), micro F1 "
                   f"{b.get('val_micro_f1', float('nan')):.4f}, accuracy "
                   f"{b.get('val_accuracy', float('nan')):.4f} -> {r.run_dir}")
    if cfg.fold == "all":
        from hpatk.core.run import read_thresholds

        th = read_thresholds(Path(cfg.out) / "thresholds.json")
        click.echo(f"out-of-fold ({th['images']} images): macro F1 {th['macro_f1_at_0_5']:.4f} "
                   f"at 0.5, {th['macro_f1_tuned']:.4f} with the out-of-fold thresholds, over "
                   f"{th['classes_present']} of {len(th['classes'])} classes present -> "
                   f"{Path(cfg.out) / 'oof.csv'}")


def train_config(config_path: str | None, resume: bool, recipe: str | None,
                 overrides: dict[str, Any]) -> TrainConfig:
    """The run's :class:`TrainConfig`: defaults (or ``--config``), then the ``--recipe``
    preset, then the options given explicitly (``overrides``, TrainConfig field names)."""
    from hpatk.core.train_config import TrainConfig, read_config

    if resume:
        out = overrides.get("out") or (read_config(config_path).out if config_path else None)
        if not out:
            raise click.UsageError("--resume needs --out RUN (the run to continue)")
        overrides["out"] = out
        base = TrainConfig(out=out)
    else:
        base = read_config(config_path) if config_path else TrainConfig()
        if "out" not in overrides and not config_path:
            raise click.UsageError("Missing option '--out' (the run folder).")
        if not config_path and "data" not in overrides:
            raise click.UsageError("Missing option '--data' (a cache .h5 or dataset folder).")
    if recipe:
        from hpatk.core.recipes import recipe_settings

        base = base.override(**recipe_settings(recipe))
    return base.override(**overrides)


@click.command()
@click.argument("run", type=click.Path(exists=True))
@click.option("--data", type=click.Path(exists=True), help="Evaluate on this cache or "
              "dataset folder (every image with one of the run's classes) instead of the "
              "validation fold.")
@click.option("--fold", type=int, help="Only this fold (its model, its validation images).")
@click.option("--checkpoint", type=click.Choice(["best_macro_f1", "best_loss", "best_micro_f1",
                                                 "last"]), default="best_macro_f1",
              show_default=True)
@click.option("--out", type=click.Path(dir_okay=False),
              help="Write per-image probabilities and predictions (CSV).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True)
@click.option("--workers", type=int, default=0, show_default=True)
@threads_option
@click.option("--tta", type=click.Choice(["none", "flips"]), default="none", show_default=True,
              help="Test-time augmentation: flips averages the 4 horizontal/vertical flips "
                   "(as hpatk predict --tta flips).")
def evaluate(run: str, data: str | None, fold: int | None, checkpoint: str, out: str | None,
             device: str, workers: int, tta: str) -> None:
    """Recompute a run's metrics on its validation fold(s) or a whole dataset.

    RUN may also be an exported ONNX classifier (a fold ensemble too) with --data DIR:
    every labelled image of DIR through the hpatk predict path, with the model's
    thresholds.

    Prints macro/micro F1 and accuracy at threshold 0.5 and with the tuned thresholds
    (thresholds.json), and per-class F1. An all-folds run is evaluated out-of-fold
    (each fold's images by that fold's model); with --data, its models are averaged.

    \b
    Example:
      hpatk evaluate run1
      hpatk evaluate run1 --data other-data --checkpoint best_loss --out preds.csv
      hpatk evaluate run1 --tta flips
      hpatk evaluate ensemble.onnx --data hpa-data
    """
    if Path(run).is_file():
        if data is None or fold is not None or out is not None:
            raise click.UsageError("an ONNX model is evaluated with --data DIR (a labelled "
                                   "dataset folder) only; --fold and --out are for runs")
        from hpatk.export.predict import evaluate_model

        ev = evaluate_model(run, data, tta=tta)
        source = "model"
    else:
        from hpatk.core.evaluate import evaluate_run

        ev = evaluate_run(run, data=data, fold=fold, checkpoint=checkpoint, out=out,
                          device=device, workers=workers, tta=tta)
        source = checkpoint
    click.echo(f"{source} on {ev.what}: {ev.n} images"
               + (" (tta flips: mean of the 4 flips)" if tta != "none" else ""))
    p, k = ev.at_half["classes_present"], ev.at_half["classes"]
    click.echo(f"{'':18} {'macro F1 (Kaggle)':>17} {'macro F1 (Eq. 8)':>16} {'micro F1':>9} "
               f"{'accuracy':>9} {f'all {k}':>9}")
    for label, m in (("threshold 0.5", ev.at_half), ("tuned thresholds", ev.tuned)):
        if m is not None:
            click.echo(f"{label:18} {m['macro_f1']:17.4f} {m['paper_macro_f1']:16.4f} "
                       f"{m['micro_f1']:9.4f} {m['accuracy']:9.4f} {m['macro_f1_all']:9.4f}")
    click.echo(f"macro F1 (Kaggle): mean of per-class F1; macro F1 (Eq. 8): the paper's F1 of "
               f"mean precision and mean recall; both over the {p} of {k} classes present in "
               f"these images; 'all {k}': the Kaggle mean over every class of the model "
               f"(absent ones score 0)")
    click.echo("per-class F1 (0.5 / tuned), support:")
    for i, name in enumerate(ev.class_names):
        if not ev.support[i]:
            click.echo(f"  {name:32} absent (no positive image)")
            continue
        tuned = f"{ev.per_class_tuned[i]:.3f}" if ev.per_class_tuned is not None else "-"
        click.echo(f"  {name:32} {ev.per_class[i]:.3f} / {tuned}  {int(ev.support[i])}")
    if out:
        click.echo(f"wrote {out}")


@click.group()
def experiment() -> None:
    """Run the paper's experiments (Table 1: backbones x sizes over folds; Tables 2/3:
    classic vs GAN augmentation).

    \b
    Example:
      hpatk experiment backbones --data cache.h5 --backbones resnet50,inceptionv4 --out t1
      hpatk experiment gan-vs-classic --data cache.h5 --aug gan --out t23
    """


def _ints(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"'{value}' is not a comma-separated list of integers",
                                 ctx=ctx, param=param) from None


def experiment_config(base: TrainConfig, recipe: str | None,
                      options: dict[str, Any]) -> TrainConfig:
    """``base`` with an experiment command's options; with a ``recipe``, the preset first
    and then only the options given explicitly (not their click defaults)."""
    if not recipe:
        return base.override(**options)
    from click.core import ParameterSource
    from hpatk.core.recipes import recipe_settings

    ctx = click.get_current_context()
    explicit = {k: v for k, v in options.items()
                if ctx.get_parameter_source(k) not in (ParameterSource.DEFAULT, None)}
    return base.override(**recipe_settings(recipe)).override(**explicit)


@experiment.command("backbones")
@click.option("--data", type=click.Path(exists=True), required=True,
              help="Dataset folder (a cache per size is built) or a cache .h5 (its size only).")
@click.option("--backbones", default="inceptionv4,xception,inceptionv3,densenet121,resnet50,"
              "resnet101,nasnet_mobile", show_default=True, help="Comma-separated backbones.")
@click.option("--sizes", callback=_ints, default="256,512", show_default=True,
              help="Comma-separated input sizes.")
@click.option("--folds", type=int, default=5, show_default=True)
@click.option("--fold-subset", callback=_ints, help="Train only these folds, e.g. 0,1.")
@click.option("--epochs", type=int, default=35, show_default=True)
@click.option("--classes", default="all", show_default=True,
              help="all, top5, present[:N] or indices.")
@click.option("--aug", default="classic", show_default=True)
@click.option("--loss", default="focal", show_default=True)
@click.option("--head", type=click.Choice(["default", "paper"]), default="default",
              show_default=True)
@click.option("--lr", type=float, default=5e-4, show_default=True)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--max-batch-size", type=int, default=128, show_default=True)
@click.option("--workers", type=int)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--recipe", help="paper-28 or paper-top5: the paper's settings; options given "
              "explicitly override it (--backbones always lists the backbones).")
@click.option("--out", type=click.Path(file_okay=False), required=True)
@threads_option
@dist_options
def backbones(data: str, backbones: str, sizes: list[int], fold_subset: list[int] | None,
              out: str, recipe: str | None, dist_backend: str, dist_timeout: float,
              **options: Any) -> None:
    """Table 1: macro F1 per backbone and size, mean +- sd over folds.

    Every backbone x size trains on the same folds (OUT/folds.csv) with the paper's
    recipe; runs go to OUT/runs/<backbone>_<size>/fold_K (finished ones are reused,
    interrupted ones resumed). Writes OUT/table1.md, table1.csv, table1.png, results.csv.

    \b
    Example:
      hpatk experiment backbones --data data --backbones resnet50,inceptionv4 \\
          --sizes 256,512 --folds 5 --fold-subset 0,1 --epochs 35 --out table1
      torchrun --standalone --nproc_per_node=4 $(which hpatk) experiment backbones \\
          --data data --out table1     # the jobs spread over 4 processes, round robin
    """
    from hpatk.core.distributed import distributed, is_main
    from hpatk.core.experiment import run_backbones
    from hpatk.core.train_config import TrainConfig

    names = [b.strip() for b in backbones.split(",") if b.strip()]
    base = experiment_config(TrainConfig(data=data, out=out), recipe, options)
    with distributed(dist_backend, dist_timeout, device=base.device):
        run_backbones(base, names, sizes, out, fold_subset=fold_subset)
        if not is_main():
            return
    click.echo((Path(out) / "table1.md").read_text())


@experiment.command("gan-vs-classic")
@click.option("--data", type=click.Path(exists=True), required=True,
              help="Cache .h5 or dataset folder.")
@click.option("--aug", "augs", default="gan", show_default=True,
              help="Augmentation(s) to compare with classic, comma-separated: a synthesizer "
                   "(gan, cdcgan, ...: classic on top) or any --aug of hpatk train.")
@click.option("--recipe", default="paper-top5", show_default=True,
              help="The settings both arms share (paper-top5: VGG16, paper head, top-5 "
                   "classes, lr 1e-4, 50 epochs); options given here override it.")
@click.option("--backbone", help="[default: the recipe's]")
@click.option("--head", type=click.Choice(["default", "paper"]), help="[default: the recipe's]")
@click.option("--classes", help="all, top5 or indices. [default: the recipe's]")
@click.option("--folds", type=int, help="[default: the recipe's, 5]")
@click.option("--fold-subset", callback=_ints, help="Train only these folds, e.g. 0,1,2.")
@click.option("--epochs", type=int, help="[default: the recipe's]")
@click.option("--size", type=int, help="Input size (a dataset folder is cached at it).")
@click.option("--real-per-class", type=int, help="Subsample about N real training images per "
              "class (the scarce-data regime); both arms and the generators see the same ones.")
@click.option("--aug-param", multiple=True, callback=key_values, metavar="KEY=VALUE",
              help="Parameter of the compared augmentation (repeatable), e.g. width=8.")
@click.option("--synthetic-per-class", type=int, help="Synthetic images per class of a "
              "synthesizer arm. [default: 1000, the paper's]")
@click.option("--synthetic-source", type=click.Choice(["fit", "cache"]), help="Fit "
              "generators per fold, or use the cache's fold-safe samples. [default: fit]")
@click.option("--loss", help="[default: the recipe's focal]")
@click.option("--lr", type=float, help="[default: the recipe's]")
@click.option("--batch-size", type=int, help="[default: the recipe's]")
@click.option("--batch-double-every", type=int, help="[default: the recipe's]")
@click.option("--max-batch-size", type=int, help="[default: the recipe's]")
@click.option("--in-stains", callback=_stains, help="[default: the recipe's]")
@click.option("--pretrained", help="ImageNet weights (a local file).")
@click.option("--workers", type=int)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--seed", type=int, help="Folds, initialisation, shuffling, generators: the "
              "same for both arms. [default: 0]")
@click.option("--out", type=click.Path(file_okay=False), required=True)
@threads_option
@dist_options
def gan_vs_classic(data: str, augs: str, recipe: str, fold_subset: list[int] | None, out: str,
                   aug_param: dict[str, Any] | None, dist_backend: str, dist_timeout: float,
                   **options: Any) -> None:
    """Tables 2/3: classic vs classic + synthetic augmentation on the same folds.

    Both arms train every fold with the same seed and settings (the recipe, default
    paper-top5, and the options given), differing only in --aug; synthesizers are trained
    fold-safely by hpatk train itself. Scores the best macro-F1 checkpoint on the training
    and validation images: macro F1 (Kaggle and the paper's Eq. 8), micro F1, accuracy,
    mean +- sd over folds, and the paired difference per fold with a 95% paired-t
    interval. Runs go to OUT/runs/<aug>/fold_K (finished ones reused, interrupted ones
    resumed). Writes OUT/table.md, table.csv, differences.csv, table.png, results.csv.

    \b
    Example:
      hpatk experiment gan-vs-classic --data data --folds 5 --out t23
      hpatk experiment gan-vs-classic --data cache.h5 --aug gan,cdcgan --size 64 \\
          --real-per-class 60 --folds 3 --epochs 5 --backbone resnet18 --out t23-small
    """
    from hpatk.core.distributed import distributed, is_main
    from hpatk.core.experiment_aug import run_aug_experiment
    from hpatk.core.train_config import TrainConfig

    names = [a.strip() for a in augs.split(",") if a.strip()]
    base = experiment_config(TrainConfig(data=data, out=out), recipe, options)
    with distributed(dist_backend, dist_timeout, device=base.device):
        run_aug_experiment(base, names, out, fold_subset=fold_subset, device=base.device,
                           aug_params=aug_param)
        if not is_main():
            return
    click.echo((Path(out) / "table.md").read_text())
