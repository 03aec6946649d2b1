"""Lovasz hinge (Berman, Triki & Blaschko, CVPR 2018) for multi-label logits.

The Lovasz hinge is the tight convex surrogate of the Jaccard loss 1 - |y n y^| / |y u y^|
of a set of binary predictions. The 1st place of the Kaggle HPA 2018 competition trained
with focal loss + Lovasz hinge. On multi-label logits (B, K) the "set" can be taken three
ways (``per``):

- "class" (default): each class over the batch -- a per-class Jaccard averaged over the K
  classes, the surrogate closest to the macro F1 the competition scores (per class,
  F1 = 2J / (1 + J) is monotone in the Jaccard index J);
- "image": each image's K labels -- the Jaccard of each image's label set, averaged over
  the batch (Berman's ``per_image=True``);
- "batch": all B * K decisions as one set (Berman's ``per_image=False``).

Written by hand (no maintained package ships it); vectorised: one sort for all sets.
Targets are binarised at 0.5.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hpatk.core.errors import HpatkError
from hpatk.plugins.losses.focal import FocalLoss
from torch import nn

PER = ("class", "image", "batch")


def lovasz_grad(gt_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovasz extension of the Jaccard loss w.r.t. sorted errors.

    Shape:
        (S, N) binary labels, each row sorted by decreasing error -> (S, N).
    """
    gts = gt_sorted.sum(dim=1, keepdim=True)
    intersection = gts - gt_sorted.cumsum(dim=1)
    union = gts + (1 - gt_sorted).cumsum(dim=1)  # >= 1 everywhere: no division by zero
    jaccard = 1.0 - intersection / union
    return torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], dim=1)


def lovasz_hinge_sets(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Lovasz hinge of each row of ``logits`` taken as one set of binary decisions.

    Shape:
        (S, N) logits, (S, N) labels in {0, 1} -> (S,) losses.
    """
    labels = labels.to(logits.dtype)
    errors = 1.0 - logits * (2.0 * labels - 1.0)  # hinge errors
    errors_sorted, perm = torch.sort(errors, dim=1, descending=True)
    grad = lovasz_grad(labels.gather(1, perm))
    return (F.relu(errors_sorted) * grad).sum(dim=1)


def lovasz_hinge(logits: torch.Tensor, targets: torch.Tensor, per: str = "class") -> torch.Tensor:
    """Mean Lovasz hinge over the sets chosen by ``per`` ("class", "image" or "batch").

    Shape:
        (B, K), (B, K) -> scalar.
    """
    labels = (targets > 0.5).to(logits.dtype)
    if per == "class":
        return lovasz_hinge_sets(logits.t(), labels.t()).mean()
    if per == "image":
        return lovasz_hinge_sets(logits, labels).mean()
    if per == "batch":
        return lovasz_hinge_sets(logits.reshape(1, -1), labels.reshape(1, -1)).mean()
    raise HpatkError(f"lovasz: per must be one of {', '.join(PER)}, not '{per}'")


class LovaszHinge(nn.Module):
    """Lovasz hinge on logits (B, K) and multi-hot targets (B, K).

    Args:
        per: "class" (per class over the batch, default), "image" or "batch".

    Shape:
        (B, K), (B, K) -> scalar.
    """

    def __init__(self, per: str = "class") -> None:
        super().__init__()
        if per not in PER:
            raise HpatkError(f"lovasz: per must be one of {', '.join(PER)}, not '{per}'")
        self.per = per

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return lovasz_hinge(logits, targets, self.per)

    def extra_repr(self) -> str:
        return f"per={self.per!r}"


class FocalLovasz(nn.Module):
    """``focal + lovasz_weight * lovasz`` (the Kaggle HPA 2018 winner's combination).

    Args:
        gamma, alpha: of the focal loss (see :class:`FocalLoss`).
        lovasz_weight: weight of the Lovasz hinge.
        per: sets of the Lovasz hinge ("class", "image" or "batch").

    Shape:
        (B, K), (B, K) -> scalar.
    """

    def __init__(self, gamma: float = 2.0, alpha: float | None = None,
                 lovasz_weight: float = 1.0, per: str = "class") -> None:
        super().__init__()
        self.focal = FocalLoss(gamma=gamma, alpha=alpha)
        self.lovasz = LovaszHinge(per=per)
        self.lovasz_weight = float(lovasz_weight)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.focal(logits, targets) + self.lovasz_weight * self.lovasz(logits, targets)
