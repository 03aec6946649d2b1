"""``hpatk demo``: the whole pipeline on synthetic data."""

from __future__ import annotations

import click


@click.command()
def demo() -> None:
    """Run the pipeline end to end on a synthetic dataset.

    \b
    Example:
      hpatk demo --out demo-run
    """
    click.echo("hpatk demo: coming — the pipeline steps land with the data, cache, training "
               "and ONNX issues.")
