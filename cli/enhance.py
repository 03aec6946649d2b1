"""``hpatk enhance``: contrast-enhancement quality report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from hpatk.core.classes import STAINS


@click.group()
def enhance() -> None:
    """Compare contrast enhancers (the paper's HE / AHE / CLAHE table).

    \b
    Example:
      hpatk enhance compare demo-data --methods he,ahe,clahe --out enhance-report
    """


def _parse_params(values: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """``("clahe.clip_limit=3", "ahe.grid_size=[4, 8]")`` -> per-method dicts (YAML values)."""
    import yaml

    params: dict[str, dict[str, Any]] = {}
    for text in values:
        key, sep, raw = text.partition("=")
        method, dot, name = key.strip().partition(".")
        if not (sep and dot and method and name):
            raise click.BadParameter(f"{text!r}: expected METHOD.KEY=VALUE, e.g. "
                                     "clahe.clip_limit=3", param_hint="'--param'")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise click.BadParameter(f"{text!r}: cannot read the value {raw!r}",
                                     param_hint="'--param'") from None
        params.setdefault(method, {})[name.strip()] = value
    return params


@enhance.command()
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--methods", default="he,ahe,clahe", show_default=True,
              help="Comma-separated enhancer names (see `hpatk registry enhancers`).")
@click.option("--n", "n", type=click.IntRange(min=1), default=200, show_default=True,
              help="Images to sample from DATA_DIR (all if it has fewer).")
@click.option("--size", type=click.IntRange(min=11), default=None,
              help="Compare at SIZE x SIZE (enhance at the original size, then resize, as "
                   "the cache does) [default: the original size].")
@click.option("--seed", type=int, default=0, show_default=True, help="Sampling seed.")
@click.option("--stains", default=",".join(STAINS), show_default=True,
              help="Comma-separated stains to load.")
@click.option("--param", "-p", "params", multiple=True, metavar="METHOD.KEY=VALUE",
              help="Enhancer parameter, repeatable: -p clahe.clip_limit=3 "
                   "-p clahe.grid_size=[4,8].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True, help="auto: OpenCV on the CPU, metrics on a GPU if any; "
                                      "cpu; cuda: torch kernels and metrics on the GPU.")
@click.option("--show", type=click.IntRange(min=1, max=16), default=4, show_default=True,
              help="Images in the picture grid.")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for metrics.csv, metrics.md, per_image.csv and grid.png.")
def compare(data_dir: Path, methods: str, n: int, size: int | None, seed: int, stains: str,
            params: tuple[str, ...], device: str, show: int, out: Path) -> None:
    """Compare enhancers against the original images by MSE, PSNR and SSIM.

    Writes the paper's table (mean ± sd over the sampled images) as metrics.csv and
    metrics.md, every image's scores as per_image.csv, and grid.png: the original and
    each method side by side for a few images (stains as an RGB composite).

    \b
    Example:
      hpatk enhance compare demo-data --methods he,ahe,clahe --out enhance-report
      hpatk enhance compare demo-data --n 50 --size 256 -p clahe.clip_limit=3 --out rep
    """
    from hpatk.core.enhance_report import compare_enhancers, summary_markdown, write_report

    names = [m.strip() for m in methods.split(",") if m.strip()]
    if not names:
        raise click.BadParameter("name at least one enhancer", param_hint="'--methods'")
    result = compare_enhancers(data_dir, names, n=n, size=size, seed=seed,
                               stains=stains.split(","), params=_parse_params(params),
                               device=device, show=show)
    paths = write_report(result, out)
    click.echo(summary_markdown(result), nl=False)
    click.echo(f"wrote {paths['csv']}, {paths['markdown']}, {paths['per_image']}, "
               f"{paths['grid']}")
