"""Built-in losses on logits (B, K) and multi-hot targets (B, K) -> scalar:

- ``focal`` (gamma=2.0, alpha=None, reduction="mean"): sigmoid focal loss; the paper's
  ``alpha=1`` means no alpha weighting, ``alpha`` in (0, 1) = torchvision's.
- ``bce`` (pos_weight=None, reduction="mean"): binary cross-entropy.
- ``lovasz`` (per="class"): Lovasz hinge, per class over the batch / per image / batch.
- ``soft_f1`` (eps=1e-7): 1 - macro soft F1 over the batch.
- ``focal_lovasz`` (gamma=2.0, alpha=None, lovasz_weight=1.0, per="class"): focal + Lovasz,
  the 1st place recipe of the Kaggle HPA 2018 competition.

torch is imported inside the factories: this module stays cheap to import.
"""

from __future__ import annotations

from typing import Any

from hpatk.core import hookimpl


def _focal(**params: Any) -> Any:
    from hpatk.plugins.losses.focal import FocalLoss

    return FocalLoss(**params)


def _bce(**params: Any) -> Any:
    from hpatk.plugins.losses.focal import BCEWithLogits

    return BCEWithLogits(**params)


def _lovasz(**params: Any) -> Any:
    from hpatk.plugins.losses.lovasz import LovaszHinge

    return LovaszHinge(**params)


def _soft_f1(**params: Any) -> Any:
    from hpatk.plugins.losses.soft_f1 import SoftF1Loss

    return SoftF1Loss(**params)


def _focal_lovasz(gamma: float = 2.0, alpha: float | None = None, lovasz_weight: float = 1.0,
                  per: str = "class") -> Any:
    from hpatk.plugins.losses.lovasz import FocalLovasz

    return FocalLovasz(gamma=gamma, alpha=alpha, lovasz_weight=lovasz_weight, per=per)


@hookimpl
def hpatk_register_losses(register):
    register("focal", _focal, aliases=("focal_loss",),
             description="sigmoid focal loss (gamma 2, no alpha weighting: the paper's)")
    register("bce", _bce, aliases=("bce_with_logits",), description="binary cross-entropy")
    register("lovasz", _lovasz, aliases=("lovasz_hinge",),
             description="Lovasz hinge (per class over the batch by default)")
    register("soft_f1", _soft_f1, aliases=("f1",), description="1 - macro soft F1")
    register("focal_lovasz", _focal_lovasz,
             description="focal + Lovasz hinge (Kaggle HPA 2018 1st place)")
