"""``hpatk export`` and ``hpatk predict``."""

from __future__ import annotations

import click


@click.command()
def export() -> None:
    """Export a trained checkpoint (classifier or generator) to ONNX.

    \b
    Example:
      hpatk export run1/best_macro_f1.pt --out model.onnx
    """
    raise click.ClickException("hpatk export arrives with the ONNX issue")


@click.command()
def predict() -> None:
    """Predict with an exported ONNX model and write a Kaggle submission.

    \b
    Example:
      hpatk predict model.onnx demo-data --out submission.csv
    """
    raise click.ClickException("hpatk predict arrives with the ONNX issue")
