"""Built-in synthesizers: ``dcgan`` (alias ``gan``), the paper's per-class DCGAN, and
``cdcgan``, one conditional DCGAN for all classes.

Modules (imported only when used, so this hook module stays cheap):

- ``dcgan``: :class:`Generator`, :class:`Discriminator` and the :class:`DCGAN` pair.
- ``trainer``: the paper's training recipe (:func:`train_gan`) and what it writes.
- ``synthesizer``: :class:`DCGANSynthesizer`, the ``dcgan`` factory's product.
- ``cdcgan``: the conditional generator, the projection discriminator and
  :class:`ConditionalDCGANSynthesizer`.

Checkpoints, fold safety and sampling into a cache are core's (:mod:`hpatk.core.synthetic`):
this plugin only implements the :class:`hpatk.core.Synthesizer` contract.
"""

from __future__ import annotations

from typing import Any

from hpatk.core import hookimpl


def _dcgan(**params: Any) -> Any:
    """Model (``image_size, channels, latent_dim=100, width=64, dropout=0.25``) and
    training (``steps=10000, batch_size=32, g_lr, d_lr, ..., device``) parameters."""
    from hpatk.plugins.augment_gan.synthesizer import DCGANSynthesizer

    return DCGANSynthesizer(**params)


def _cdcgan(**params: Any) -> Any:
    """One DCGAN for all classes, conditioned on the multi-hot label vector."""
    from hpatk.plugins.augment_gan.cdcgan import ConditionalDCGANSynthesizer

    return ConditionalDCGANSynthesizer(**params)


@hookimpl
def hpatk_register_synthesizers(register):
    register("dcgan", _dcgan, aliases=("gan",),
             description="one DCGAN per class (the paper's generator/discriminator)")
    register("cdcgan", _cdcgan,
             description="one conditional DCGAN for all classes (projection discriminator, "
                         "multi-hot labels)")

