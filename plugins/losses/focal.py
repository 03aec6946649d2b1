"""Focal loss (Lin et al. 2017) and binary cross-entropy, both on logits.

The paper (Verma et al. 2020, Eq. 2-3) uses FL = -alpha_t (1 - p_t)^gamma log(p_t) with
gamma = 2 and "alpha = 1". Read literally, Eq. 3 gives the negatives the weight
1 - alpha = 0, i.e. a loss that never penalises a false positive -- a model predicting every
class would be optimal. hpatk therefore reads the paper's alpha = 1 as "no alpha weighting"
(every term has weight 1), which is also what the widely shared Kaggle HPA focal-loss code
computes. ``alpha`` in (0, 1) is the RetinaNet weighting, identical to torchvision's
``sigmoid_focal_loss``; ``alpha=None`` or a negative value (torchvision's -1) = no weighting.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hpatk.core.errors import HpatkError
from torch import nn


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise HpatkError(f"loss reduction must be 'mean', 'sum' or 'none', not '{reduction}'")


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, gamma: float = 2.0,
               alpha: float | None = None, reduction: str = "mean") -> torch.Tensor:
    """Sigmoid focal loss ``-alpha_t (1 - p_t)^gamma log(p_t)``, element-wise.

    Equal to ``torchvision.ops.sigmoid_focal_loss`` (``alpha=None`` there is ``alpha=-1``),
    but ``1 - p_t`` is computed as a sigmoid of the logit instead of ``1 - sigmoid``, so it
    does not round to 0 for confident predictions.

    Args:
        logits: raw scores.
        targets: same shape, in {0, 1} (soft targets allowed).
        gamma: focusing parameter (0: plain BCE).
        alpha: weight of the positives (negatives get ``1 - alpha``); None or < 0: all 1.
        reduction: "mean" (over all elements), "sum" or "none".

    Shape:
        logits, targets: (B, K) (any shape) -> scalar, or the input shape for "none".

    Example:
        >>> focal_loss(torch.zeros(2, 3), torch.ones(2, 3), gamma=0.0)  # = BCE = log 2
        tensor(0.6931)
    """
    targets = targets.to(logits.dtype)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    # 1 - p_t = (1 - p) t + p (1 - t), with 1 - p = sigmoid(-x) kept exact
    one_minus_pt = torch.sigmoid(-logits) * targets + torch.sigmoid(logits) * (1 - targets)
    loss = ce * one_minus_pt**gamma if gamma else ce
    if alpha is not None and alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return _reduce(loss, reduction)


class FocalLoss(nn.Module):
    """Sigmoid focal loss on logits (B, K) and multi-hot targets (B, K).

    Args:
        gamma: focusing parameter (the paper: 2).
        alpha: None, 1 (the paper's value) or a negative number: no alpha weighting (see the
            module docstring: a literal alpha = 1 would zero the negatives' loss); a float in
            (0, 1): weight of the positives as in RetinaNet / torchvision (e.g. 0.25).
        reduction: "mean" (over B * K elements), "sum" or "none".

    Shape:
        (B, K), (B, K) -> scalar.
    """

    def __init__(self, gamma: float = 2.0, alpha: float | None = None,
                 reduction: str = "mean") -> None:
        super().__init__()
        if alpha is not None:
            alpha = float(alpha)
            if alpha == 1.0 or alpha < 0:
                alpha = None  # the paper's "alpha = 1": no weighting
            elif not 0.0 < alpha < 1.0:
                raise HpatkError(f"focal loss: alpha must be in (0, 1), 1 or None, not {alpha}")
        if float(gamma) < 0:
            raise HpatkError(f"focal loss: gamma must be >= 0, not {gamma}")
        _reduce(torch.zeros(()), reduction)  # validate early
        self.gamma, self.alpha, self.reduction = float(gamma), alpha, reduction

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return focal_loss(logits, targets, self.gamma, self.alpha, self.reduction)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, alpha={self.alpha}, reduction={self.reduction!r}"


class BCEWithLogits(nn.Module):
    """Binary cross-entropy on logits.

    Args:
        pos_weight: optional weight of the positives, one per class (K values), e.g.
            negatives / positives per class for rare classes.
        reduction: "mean", "sum" or "none".

    Shape:
        (B, K), (B, K) -> scalar.
    """

    def __init__(self, pos_weight: list[float] | None = None, reduction: str = "mean") -> None:
        super().__init__()
        pw = torch.as_tensor(pos_weight, dtype=torch.float32) if pos_weight is not None else None
        if pw is not None and pw.ndim != 1:
            raise HpatkError("bce: pos_weight must be a list of one weight per class")
        self.register_buffer("pos_weight", pw)
        _reduce(torch.zeros(()), reduction)
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.pos_weight is not None and self.pos_weight.numel() != logits.shape[-1]:
            raise HpatkError(f"bce: pos_weight has {self.pos_weight.numel()} values for "
                             f"{logits.shape[-1]} classes")
        return F.binary_cross_entropy_with_logits(
            logits, targets.to(logits.dtype), pos_weight=self.pos_weight,
            reduction=self.reduction)
