"""Built-in GAN augmentation ``dcgan``: the paper's per-class DCGAN (Radford et al.),
with a width parameter so small models fit a CPU; and the ``hpatk gan`` commands."""

from __future__ import annotations

from typing import Any

from hpatk.core import hookimpl


def _dcgan(**params: Any) -> Any:
    from hpatk.plugins.augment_gan.dcgan import DCGAN

    return DCGAN(**params)


@hookimpl
def hpatk_register_augmentations(register):
    register("dcgan", _dcgan, aliases=("gan",),
             description="per-class DCGAN synthetic images (the paper's generator/discriminator)")


@hookimpl
def hpatk_register_commands(cli):
    from hpatk.plugins.augment_gan.commands import gan

    cli.add_command(gan)
