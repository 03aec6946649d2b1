"""Built-in GAN augmentation ``dcgan`` (alias ``gan``): the paper's per-class DCGAN, and
the ``hpatk gan train`` / ``hpatk gan sample`` commands.

Modules (imported only when used, so this hook module stays cheap):

- ``dcgan``: :class:`Generator`, :class:`Discriminator` and the :class:`DCGAN` pair that
  the registry's ``dcgan`` factory returns (``.generator``, ``.discriminator``,
  ``.sample(n)``, ``.fit(images)``, ``DCGAN.from_checkpoint(path)``).
- ``trainer``: the paper's training recipe (:func:`train_gan`) and the run folder.
- ``classdata``: one class's images from a cache (fold-aware, as ``hpatk train``).
- ``sampling``: samples into a cache's synthetic group or to PNG files.
- ``commands``: the ``gan`` click group.

A generator checkpoint's ``model`` dict is exactly the factory's keyword arguments::

    gan = get_registry().augmentations.create("dcgan", **ckpt["model"])
    gan.generator.load_state_dict(ckpt["state_dict"])
"""

from __future__ import annotations

from typing import Any

from hpatk.core import hookimpl


def _dcgan(**params: Any) -> Any:
    """``latent_dim=100, channels=4, image_size=512, width=64, dropout=0.25`` -> DCGAN."""
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
