"""``hpatk enhance``: contrast-enhancement quality report."""

from __future__ import annotations

import click


@click.group()
def enhance() -> None:
    """Compare contrast enhancers (the paper's HE / AHE / CLAHE table).

    \b
    Example:
      hpatk enhance compare demo-data --methods he,ahe,clahe --out enhance-report
    """
