"""``hpatk demo``: the paper's pipeline end to end on a synthetic dataset, through the
same commands a user types (each step prints its command line)."""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any

import click
from hpatk.cli.demo_report import DemoFacts, StepRecord, capture, write_demo_report
from hpatk.core.threads import threads_option

# The demo's GAN: ONE conditional DCGAN (cdcgan) for the 5 classes, 32 px, width 8, Adam
# for both models. At the cost of five per-class DCGANs of 400 steps each (the paper's
# recipe, coloured noise at that budget), its 2,000 steps show cells: nuclei in red/green
# cytoplasm on a dark background (docs/pages/synthetic.md, "Short runs").
GAN_AUG = ["--aug", "cdcgan", "--aug-param", "image_size=32", "--aug-param", "width=8",
           "--aug-param", "d_optimizer=adam", "--synthetic-per-class", "200"]
GAN_STEPS = 2000
# hpatk gan evaluate, kept cheap: 100 samples per class, a 8-epoch small CNN.
GAN_EVALUATE = ["--n", "100", "--epochs", "8"]


def _run(step: int, total: int, record: StepRecord) -> None:
    """Run one ``hpatk`` command in-process, exactly as the command line would, keeping
    its wall time and output in ``record``."""
    from hpatk.cli.main import cli

    click.secho(f"\n[{step}/{total}] {record.command}", bold=True, err=True)
    start = time.monotonic()
    with capture(record):
        try:
            cli.main(args=record.args, prog_name="hpatk", standalone_mode=False)
        except click.exceptions.Exit as exc:
            if exc.exit_code:
                raise
    record.seconds = time.monotonic() - start
    click.echo(f"      ({record.seconds:.1f}s)", err=True)


def _tidy(out: Path) -> None:
    """Remove the cache builder's lock file (``.NAME.lock``) once nothing holds it: the
    demo's folder keeps only results."""
    import fcntl

    for lock in out.glob(".*.lock"):
        with open(lock, "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # in use by another process: leave it
            lock.unlink(missing_ok=True)


def score_submission(submission: Path, data: Path, classes: list[int]) -> dict[str, Any]:
    """Macro/micro F1 of a Kaggle submission against the synthetic test answers
    (``data/test_labels.csv``) over ``classes``, beside the trivial predictors built from
    ``data/train.csv`` (:func:`hpatk.core.metrics.trivial_predictions`) on the same images."""
    import numpy as np
    from hpatk.core.classes import CLASS_NAMES
    from hpatk.core.metrics import macro_f1, micro_f1, trivial_predictions

    def read(path: Path, column: str) -> dict[str, set[int]]:
        with open(path, newline="") as f:
            return {row["Id"]: {int(t) for t in row[column].split()} for row in csv.DictReader(f)}

    def onehot(rows: list[set[int]]) -> np.ndarray:
        return np.array([[c in r for c in classes] for r in rows], dtype=np.uint8).reshape(
            len(rows), len(classes))

    predicted, truth = read(submission, "Predicted"), read(data / "test_labels.csv", "Target")
    ids = sorted(predicted)
    y_true, y_pred = onehot([truth[i] for i in ids]), onehot([predicted[i] for i in ids])
    keep = y_true.any(axis=1)  # images with at least one of the model's classes
    y_true, y_pred = y_true[keep], y_pred[keep]
    train = onehot(list(read(data / "train.csv", "Target").values()))

    def f1s(pred: np.ndarray) -> dict[str, float]:
        return {"macro_f1": float(macro_f1(y_true, pred)),
                "micro_f1": float(micro_f1(y_true, pred))}

    baselines = {name: f1s(p) for name, p in trivial_predictions(
        train, len(y_true), [f"{CLASS_NAMES[c]} ({c})" for c in classes]).items()}
    return {"images": int(keep.sum()), **f1s(y_pred), "baselines": baselines}


def demo_size(backbone: str, size: int | None, default: int = 64) -> int:
    """The demo's training size: ``size`` when given (refused below the backbone's
    minimum input size), else ``default`` raised to that minimum (rounded up to 16 px)."""
    from hpatk.core.errors import HpatkError
    from hpatk.core.train_objects import backbone_min_size

    smallest = backbone_min_size(backbone, num_classes=5)
    if smallest is None:
        raise HpatkError(f"--backbone {backbone}: takes no input size up to 1024 px")
    if size is not None:
        if size < smallest:
            raise HpatkError(f"--backbone {backbone}: needs images of at least {smallest} px, "
                             f"and --size gives {size} px; use a larger --size")
        return size
    return max(default, -(-smallest // 16) * 16)


@click.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default="demo-run",
              show_default=True, help="Folder for everything the demo writes.")
@click.option("--n", "n", type=click.IntRange(min=100), default=800, show_default=True,
              help="Synthetic images.")
@click.option("--size", type=click.IntRange(min=32), default=None,
              help="Training size in px (images are rendered at 2x). [default: 64, or the "
                   "backbone's minimum input size rounded up to 16 px when larger]")
@click.option("--epochs", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--backbone", default="resnet18", show_default=True,
              help="Any registered backbone (inceptionv4 is the paper's; slower on a CPU).")
@click.option("--gan/--no-gan", default=True, show_default=True,
              help="Train with GAN augmentation: a small conditional DCGAN (--aug cdcgan) "
                   "fitted on fold 0's training images adds synthetic images of each class; "
                   "hpatk gan evaluate then measures them.")
@click.option("--gan-steps", type=click.IntRange(min=1), default=GAN_STEPS, show_default=True,
              help="Steps of the DCGAN (one for the 5 classes; fewer: no cells yet).")
@click.option("--seed", type=int, default=0, show_default=True)
@threads_option
def demo(out: Path, n: int, size: int | None, epochs: int, backbone: str, gan: bool,
         gan_steps: int, seed: int) -> None:
    """Run the pipeline end to end on a synthetic dataset (CPU: a few minutes).

    Synthesise an HPA-like dataset, check it, compare HE/AHE/CLAHE, cache it with
    CLAHE, train a classifier on the paper's 5-class subset with focal loss and GAN
    augmentation (a small conditional DCGAN for the 5 classes, fitted on the fold's
    training images by hpatk train --aug cdcgan itself), measure the GAN's samples
    (hpatk gan evaluate), evaluate the classifier, export it to ONNX, predict the test
    split with ONNX Runtime and score the submission against the synthetic answers.
    Every step prints the command that reproduces it; report.md and report.html tell
    the whole run on one page.

    \b
    Example:
      hpatk demo --out demo-run
      hpatk demo --out demo-iv4 --backbone inceptionv4 --size 96 --epochs 4 --no-gan
    """
    size = demo_size(backbone, size)
    data, cache, run = out / "data", out / "cache.h5", out / "run"
    model, submission = out / "model.onnx", out / "submission.csv"
    steps: list[list[str]] = []
    if not (data / "train.csv").is_file():
        steps.append(["data", "synth", str(data), "--n", str(n), "--size", str(2 * size),
                      "--n-test", str(max(100, n // 4)), "--seed", str(seed),
                      "--preview", str(out / "synth_preview.png")])
    steps += [
        ["data", "check", str(data)],
        ["enhance", "compare", str(data), "--methods", "he,ahe,clahe", "--n", "16",
         "--out", str(out / "enhance")],
        ["cache", "build", str(data), "--out", str(cache), "--enhance", "clahe",
         "--size", str(size)],
    ]
    # A small GAN (32 px, width 8) keeps the demo to minutes on a CPU; its samples are
    # resized to the cache's size.
    aug = [*GAN_AUG, "--aug-param", f"steps={gan_steps}", "--aug-param",
           f"sample_every={gan_steps}"] if gan else ["--aug", "classic"]
    steps += [
        ["train", "--data", str(cache), "--backbone", backbone, *aug,
         "--classes", "top5", "--size", str(size), "--epochs", str(epochs),
         "--batch-size", "32", "--lr", "1e-3", "--fold", "0", "--seed", str(seed),
         "--out", str(run)],
        *([["gan", "evaluate", str(run), "--data", str(cache), "--out", str(out / "gan-eval"),
             *GAN_EVALUATE]] if gan else []),
        ["evaluate", str(run)],
        ["export", str(run / "best_macro_f1.pt"), "--out", str(model)],
        ["predict", str(model), str(data), "--out", str(submission)],
    ]
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    records = [StepRecord(args) for args in steps]
    for i, record in enumerate(records, 1):
        _run(i, len(records), record)
    from hpatk.core.classes import TOP5

    score = score_submission(submission, data, list(TOP5))
    total = time.monotonic() - start
    _tidy(out)
    facts = DemoFacts(out, records, score, total, settings={
        "images": n, "size": f"{size} px", "backbone": backbone, "epochs": epochs,
        "augmentation": " ".join(aug), "seed": seed})
    md, page = write_demo_report(facts)
    click.secho(f"\nDemo done in {total:.0f}s. Test split scored against "
                f"the synthetic answers ({score['images']} images with a top-5 class): "
                f"macro F1 {score['macro_f1']:.3f}, micro F1 {score['micro_f1']:.3f}.",
                bold=True)
    click.echo("Trivial predictors on the same images: " + "; ".join(
        f"{name}: macro F1 {m['macro_f1']:.3f}" for name, m in score["baselines"].items()) + ".")
    click.echo(f"The story on one page: {md} (and {page}, pictures embedded).")
