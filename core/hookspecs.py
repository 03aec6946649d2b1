"""The hooks hpatk plugins implement.

Each hook receives a ``register`` callback (or the click group) instead of returning a
list, so keyword arguments can be added later without breaking a single plugin.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import pluggy

if TYPE_CHECKING:
    import click

hookspec = pluggy.HookspecMarker("hpatk")
hookimpl = pluggy.HookimplMarker("hpatk")


class Register(Protocol):
    """``register(name, factory, *, aliases=(), description="")``."""

    def __call__(
        self,
        name: str,
        factory: Callable[..., Any],
        *,
        aliases: tuple[str, ...] | list[str] = (),
        description: str = "",
    ) -> None: ...


@hookspec
def hpatk_register_enhancers(register: Register) -> None:
    """Register contrast enhancers.

    ``factory(**params) -> Enhancer``: the enhancer maps float (B, C, H, W) in [0, 1]
    to the same shape, per channel, on any device (see :class:`hpatk.core.Enhancer`).
    """


@hookspec
def hpatk_register_augmentations(register: Register) -> None:
    """Register augmentations.

    ``factory(**params) -> nn.Module`` mapping a float batch (B, C, H, W) in [0, 1] to
    an augmented batch of the same shape, applied on the training device every batch.
    """


@hookspec
def hpatk_register_synthesizers(register: Register) -> None:
    """Register synthesizers (generative augmentation: GANs, diffusion models, ...).

    ``factory(**params) -> Synthesizer`` (see :class:`hpatk.core.Synthesizer`):
    ``fit(images uint8 (N, C, S, S), labels uint8 (N, K), *, classes, out_dir, seed,
    progress, resume)``, ``sample(n, labels=None, *, seed) -> uint8 (n, C, S, S)``,
    ``state_dict()`` / ``load_state_dict()``, ``export_module()``. ``hpatk train --aug
    NAME`` fits one per class (or one conditional model) on the fold's training images.
    """


@hookspec
def hpatk_register_backbones(register: Register) -> None:
    """Register classifier backbones.

    ``factory(num_classes, in_chans=4, pretrained=None, **kw) -> nn.Module`` mapping
    (B, in_chans, H, W) to logits (B, num_classes).
    """


@hookspec
def hpatk_register_losses(register: Register) -> None:
    """Register multi-label losses.

    ``factory(**params) -> nn.Module`` called as ``loss(logits (B, K), targets (B, K))``
    and returning a scalar.
    """


@hookspec
def hpatk_register_commands(cli: click.Group) -> None:
    """Add click commands (or groups) to the ``hpatk`` command line.

    A command whose name a built-in command or an earlier plugin's command has is
    refused (the first stays; ``hpatk plugins`` lists the refusal, naming both).
    """
