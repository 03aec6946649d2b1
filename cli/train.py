"""``hpatk train``, ``hpatk evaluate``, ``hpatk experiment``."""

from __future__ import annotations

import click


@click.command()
def train() -> None:
    """Train a multi-label classifier (the paper's recipe by default).

    \b
    Example:
      hpatk train --data cache.h5 --backbone inceptionv4 --aug classic --out run1
    """
    raise click.ClickException("hpatk train arrives with the training issue")


@click.command()
def evaluate() -> None:
    """Recompute a run's metrics on a fold or a dataset.

    \b
    Example:
      hpatk evaluate run1 --data cache.h5
    """
    raise click.ClickException("hpatk evaluate arrives with the training issue")


@click.group()
def experiment() -> None:
    """Run the paper's experiments (Table 1: backbones x sizes over folds).

    \b
    Example:
      hpatk experiment backbones --data cache.h5 --backbones resnet50,inceptionv4 --out t1
    """
