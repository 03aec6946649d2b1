"""Macro soft-F1 loss: 1 - mean over classes of a differentiable F1 (a Kaggle HPA favourite).

Per class over the batch, with p = sigmoid(logits): TP = sum p y, FP = sum p (1 - y),
FN = sum (1 - p) y, soft F1 = 2 TP / (2 TP + FP + FN + eps). A class without positives in
the batch has soft F1 = 0 whatever the predictions (no gradient): its false positives are
not penalised, so soft-F1 works best with large batches or combined with BCE / focal loss.
"""

from __future__ import annotations

import torch
from torch import nn


def soft_f1_loss(logits: torch.Tensor, targets: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """``1 - mean_k softF1_k`` over the batch.

    Shape:
        (B, K), (B, K) -> scalar.
    """
    p = torch.sigmoid(logits)
    y = targets.to(p.dtype)
    tp = (p * y).sum(0)
    fp = (p * (1 - y)).sum(0)
    fn = ((1 - p) * y).sum(0)
    return 1.0 - (2 * tp / (2 * tp + fp + fn + eps)).mean()


class SoftF1Loss(nn.Module):
    """Macro soft-F1 loss on logits (B, K) and multi-hot targets (B, K).

    Args:
        eps: added to the denominator.

    Shape:
        (B, K), (B, K) -> scalar.
    """

    def __init__(self, eps: float = 1e-7) -> None:
        super().__init__()
        self.eps = float(eps)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return soft_f1_loss(logits, targets, self.eps)
