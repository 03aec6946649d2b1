"""``hpatk data``: synthetic datasets, validation, folds."""

from __future__ import annotations

from pathlib import Path

import click
from hpatk.core.classes import CLASS_NAMES, STAINS
from hpatk.core.errors import HpatkError


@click.group()
def data() -> None:
    """Make, check and split datasets in the Kaggle HPA layout.

    \b
    Example:
      hpatk data synth demo-data --n 2000
      hpatk data check demo-data
      hpatk data folds demo-data --k 5 --out folds.csv
    """


@data.command()
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--n", "n", type=click.IntRange(min=1), default=2000, show_default=True,
              help="Training images (the test split adds max(4, n/10)).")
@click.option("--size", type=click.IntRange(8, 4096), default=512, show_default=True,
              help="Image side in pixels.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option("--classes", type=click.Choice(["all", "top5"]), default="all",
              show_default=True, help="All 28 classes, or the paper's five.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Processes (default: 1 for small jobs, else the core count).")
@click.option("--n-test", type=click.IntRange(min=0), default=None,
              help="Test images (default max(4, n/10)).")
@click.option("--preview", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write a contact sheet of 8 training images to this PNG.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists and is not empty.")
def synth(out: Path, n: int, size: int, seed: int, classes: str, workers: int | None,
          n_test: int | None, preview: Path | None, overwrite: bool) -> None:
    """Write a synthetic HPA dataset in the Kaggle layout to OUT.

    Procedurally rendered cells: nucleus (blue), microtubules (red), ER (yellow) and a
    green protein pattern for each of the labels; Kaggle class frequencies, ~1.6 labels
    per image, low contrast. Deterministic for a seed, whatever --workers.

    \b
    Example:
      hpatk data synth demo-data --n 2000
      hpatk data synth tiny --n 200 --size 64 --seed 1 --preview tiny.png
    """
    import time

    from hpatk.core.synth import make_synthetic

    start = time.perf_counter()
    make_synthetic(out, n=n, size=size, seed=seed, classes=classes, workers=workers,
                   n_test=n_test, overwrite=overwrite, preview=preview)
    elapsed = time.perf_counter() - start
    total = n + (max(4, n // 10) if n_test is None else n_test)
    click.echo(f"wrote {out}: {n} train + {total - n} test images, {size}x{size} px, "
               f"{total / elapsed:.1f} images/s")
    if preview:
        click.echo(f"preview: {preview}")


@data.command()
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--stains", default=",".join(STAINS), show_default=True,
              help="Comma-separated stains to check.")
@click.option("--layout", type=click.Choice(["kaggle", "external"]), default="kaggle",
              show_default=True, help="Kaggle gray PNGs, or HPAv18 RGB files.")
@click.option("--size", type=click.IntRange(min=1), default=None,
              help="Image side every image must have (default: the most common one).")
@click.option("--skip-bad", is_flag=True,
              help="Report bad samples as skipped (exit 0) and list them in a CSV.")
@click.option("--skipped-out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where --skip-bad writes the list [default: DATA_DIR/skipped.csv].")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Decoding threads (default: the core count).")
def check(data_dir: Path, stains: str, layout: str, size: int | None, skip_bad: bool,
          skipped_out: Path | None, workers: int | None) -> None:
    """Validate a dataset: CSV, Ids, labels, files, and every image decoded.

    Prints the number of images, images per class, labels per image and one line per
    problem; exits 1 if there is any problem (with --skip-bad: only if no image is
    usable, after writing the skipped list).

    \b
    Example:
      hpatk data check demo-data
      hpatk data check crawl --skip-bad --skipped-out crawl-skipped.csv
    """
    from hpatk.core.data import check_dataset, parse_stains, write_skipped

    reports = check_dataset(data_dir, stains=parse_stains(stains), layout=layout,
                            expected_size=size, workers=workers)
    problems = [p for r in reports for p in r.problems]
    for r in reports:
        shape = f", {r.shape[1]}x{r.shape[0]} px" if r.shape else ""
        click.echo(f"{r.split}: {r.images} usable images of {r.rows} rows{shape}"
                   + (f", {r.labels_per_image:.2f} labels/image" if r.split != "test" else ""))
        if r.split == "test":
            continue
        click.echo(f"  {'class':<34} {'images':>7} {'share':>7}")
        for c, count in enumerate(r.class_counts):
            share = 100 * count / max(r.images, 1)
            click.echo(f"  {c:>2} {CLASS_NAMES[c]:<31} {int(count):>7} {share:>6.1f}%")
    for p in problems:
        click.echo(f"problem: {p}")
    click.echo(f"problems: {len(problems)}")
    if not problems:
        return
    if not skip_bad:
        raise HpatkError(f"{len(problems)} problem(s) in {data_dir} (listed above); "
                         "fix them or use --skip-bad")
    out = write_skipped(skipped_out or data_dir / "skipped.csv", problems)
    n_bad = len({(r.split, p.id) for r in reports for p in r.problems})
    click.echo(f"skipped {n_bad} sample(s); list written to {out}")
    if not any(r.images for r in reports if r.split != "test"):
        raise HpatkError(f"{data_dir}: no usable training images")


@data.command()
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--k", "k", type=click.IntRange(min=2), default=5, show_default=True,
              help="Number of folds.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The folds CSV to write (Id,fold).")
@click.option("--seed", type=int, default=0, show_default=True, help="Shuffling seed.")
@click.option("--stains", default=",".join(STAINS), show_default=True,
              help="Stains whose files must exist (e.g. green,red,blue).")
@click.option("--skip-bad", is_flag=True, help="Leave out rows with problems.")
def folds(data_dir: Path, k: int, out: Path, seed: int, stains: str, skip_bad: bool) -> None:
    """Split DATA_DIR/train.csv into K multilabel-stratified folds (Id,fold CSV).

    Iterative stratification (the Kaggle winners' choice) keeps each class's share in
    every fold close to its share overall.

    \b
    Example:
      hpatk data folds demo-data --k 5 --out folds.csv --seed 0
    """
    import numpy as np
    from hpatk.core.data import label_matrix, parse_stains, read_kaggle
    from hpatk.core.folds import fold_shares, make_folds, write_folds

    refs = read_kaggle(data_dir, "train", skip_bad=skip_bad, stains=parse_stains(stains))
    y = label_matrix(refs)
    fold = make_folds(y, k=k, seed=seed)
    write_folds(out, [r.id for r in refs], fold)
    shares = fold_shares(y, fold)
    common = y.sum(axis=0) >= 10 * k  # rare classes cannot be split finely: report separately
    dev = np.abs(shares - y.mean(axis=0))
    sizes = ", ".join(str(int((fold == f).sum())) for f in range(k))
    click.echo(f"wrote {out}: {len(refs)} images in {k} folds ({sizes})")
    if common.any():
        click.echo(f"largest class-share deviation from the whole: "
                   f"{100 * dev[:, common].max():.1f} points "
                   f"({int(common.sum())} classes with >= {10 * k} images)")
    present = y.sum(axis=0) >= k
    everywhere = all((y[fold == f][:, present].sum(axis=0) > 0).all() for f in range(k))
    click.echo(f"classes with >= {k} images in every fold: {'yes' if everywhere else 'no'}")
