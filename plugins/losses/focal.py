"""Focal loss (Lin et al. 2017) and BCE, both on logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, gamma: float = 2.0,
               alpha: float | None = None, reduction: str = "mean") -> torch.Tensor:
    """Sigmoid focal loss ``-alpha_t (1 - p_t)^gamma log(p_t)``, element-wise.

    Args:
        logits: (B, K) raw scores.
        targets: (B, K) in {0, 1} (soft targets allowed).
        gamma: focusing parameter.
        alpha: weight of positives (negatives get 1 - alpha); ``None`` weighs all 1.
        reduction: "mean", "sum" or "none".
    """
    targets = targets.to(logits.dtype)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p = torch.sigmoid(logits)
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha is not None and alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


class FocalLoss(nn.Module):
    """Module over :func:`focal_loss`.

    The paper's ``alpha = 1`` is read as "no alpha weighting": a literal alpha_t with
    alpha = 1 would give the negatives weight 0. Pass ``alpha=0.25`` for RetinaNet's.
    """

    def __init__(self, gamma: float = 2.0, alpha: float | None = None,
                 reduction: str = "mean") -> None:
        super().__init__()
        if alpha == 1 or alpha == 1.0:
            alpha = None
        self.gamma, self.alpha, self.reduction = float(gamma), alpha, reduction

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return focal_loss(logits, targets, self.gamma, self.alpha, self.reduction)


class BCEWithLogits(nn.Module):
    """Binary cross-entropy on logits; ``pos_weight`` optional, per class."""

    def __init__(self, pos_weight: list[float] | None = None, reduction: str = "mean") -> None:
        super().__init__()
        pw = torch.tensor(pos_weight, dtype=torch.float32) if pos_weight is not None else None
        self.register_buffer("pos_weight", pw)
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(
            logits, targets.to(logits.dtype), pos_weight=self.pos_weight,
            reduction=self.reduction)
