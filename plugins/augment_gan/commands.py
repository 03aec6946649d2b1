"""``hpatk gan train`` and ``hpatk gan sample`` (added through hpatk_register_commands)."""

from __future__ import annotations

import click


@click.group()
def gan() -> None:
    """Train per-class DCGANs and add their samples to a cache.

    \b
    Example:
      hpatk gan train --data cache.h5 --top 5 --out gans
      hpatk gan sample gans/class_00/generator.pt --n 1000 --into cache.h5
    """
