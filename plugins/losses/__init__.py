"""Built-in losses: ``focal`` and ``bce``, on logits (B, K) and targets (B, K)."""

from __future__ import annotations

from typing import Any

from hpatk.core import hookimpl


def _focal(**params: Any) -> Any:
    from hpatk.plugins.losses.focal import FocalLoss

    return FocalLoss(**params)


def _bce(**params: Any) -> Any:
    from hpatk.plugins.losses.focal import BCEWithLogits

    return BCEWithLogits(**params)


@hookimpl
def hpatk_register_losses(register):
    register("focal", _focal, aliases=("focal_loss",),
             description="sigmoid focal loss (gamma 2, no alpha weighting: the paper's)")
    register("bce", _bce, aliases=("bce_with_logits",), description="binary cross-entropy")
