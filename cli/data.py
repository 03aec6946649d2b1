"""``hpatk data``: synthetic datasets, validation, folds."""

from __future__ import annotations

import click


@click.group()
def data() -> None:
    """Make, check and split datasets in the Kaggle HPA layout.

    \b
    Example:
      hpatk data synth demo-data --n 2000
      hpatk data check demo-data
      hpatk data folds demo-data --k 5 --out folds.csv
    """
