"""``hpatk cache``: the HDF5 dataset cache."""

from __future__ import annotations

import click


@click.group()
def cache() -> None:
    """Build and inspect the HDF5 cache of decoded, enhanced, resized images.

    \b
    Example:
      hpatk cache build demo-data --out cache.h5 --enhance clahe --size 256
      hpatk cache info cache.h5
    """
