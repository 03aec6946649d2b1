"""Losses against references: torchvision's sigmoid_focal_loss, PyTorch's BCE, Berman's
Lovasz hinge (written out below) and the Jaccard set function, scikit-learn's F1."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hpatk.core import HpatkError, get_registry
from sklearn.metrics import f1_score
from torchvision.ops import sigmoid_focal_loss

REG = get_registry()


def _batch(seed: int = 0, b: int = 16, k: int = 28, scale: float = 3.0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, k, generator=g, dtype=torch.float64) * scale
    targets = (torch.rand(b, k, generator=g) < 0.25).double()
    return logits, targets


@pytest.mark.parametrize("alpha", [None, 0.25, 0.5, 0.75])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0, 5.0])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_focal_equals_torchvision(alpha, gamma, reduction):
    logits, targets = _batch(int(gamma * 10))
    loss = REG.losses.create("focal", gamma=gamma, alpha=alpha, reduction=reduction)
    ref = sigmoid_focal_loss(logits, targets, alpha=-1 if alpha is None else alpha,
                             gamma=gamma, reduction=reduction)
    torch.testing.assert_close(loss(logits, targets), ref, rtol=1e-10, atol=1e-12)


def test_focal_alpha_one_is_the_papers_no_weighting():
    logits, targets = _batch(1)
    paper = REG.losses.create("focal", gamma=2.0, alpha=1.0)(logits, targets)
    ref = sigmoid_focal_loss(logits, targets, alpha=-1, gamma=2.0, reduction="mean")
    torch.testing.assert_close(paper, ref)
    # the literal Eq. 3 with alpha = 1 would ignore the negatives entirely
    literal = sigmoid_focal_loss(logits, targets, alpha=1.0, gamma=2.0, reduction="none")
    assert float(literal[targets == 0].abs().max()) == 0.0
    assert REG.losses.create("focal").alpha is None  # the registered default = the paper's


def test_focal_with_gamma_zero_is_bce():
    logits, targets = _batch(2)
    torch.testing.assert_close(REG.losses.create("focal", gamma=0.0)(logits, targets),
                               F.binary_cross_entropy_with_logits(logits, targets))


@pytest.mark.parametrize("params", [dict(alpha=0.0), dict(alpha=1.5), dict(gamma=-1.0),
                                    dict(reduction="avg")])
def test_focal_bad_parameters(params):
    with pytest.raises(HpatkError):
        REG.losses.create("focal", **params)


def test_focal_is_stable_for_confident_logits():
    logits = torch.tensor([[40.0, -40.0, 20.0]], requires_grad=True)
    targets = torch.tensor([[0.0, 1.0, 1.0]])
    loss = REG.losses.create("focal", gamma=2.0)(logits, targets)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    # confidently wrong entries keep a real gradient (1 - p_t does not round to 0)
    assert logits.grad[0, 0] > 0 and logits.grad[0, 1] < 0


def test_bce_pos_weight_equals_pytorch():
    logits, targets = _batch(3, k=5)
    pw = [1.0, 2.0, 3.0, 0.5, 10.0]
    got = REG.losses.create("bce", pos_weight=pw)(logits, targets)
    ref = F.binary_cross_entropy_with_logits(logits, targets,
                                             pos_weight=torch.tensor(pw, dtype=torch.float64))
    torch.testing.assert_close(got, ref)
    with pytest.raises(HpatkError, match="pos_weight"):
        REG.losses.create("bce", pos_weight=[1.0, 2.0])(logits, targets)


# --- Lovasz hinge -------------------------------------------------------------------------
def _berman_lovasz_grad(gt_sorted):
    """Berman et al.'s reference ``lovasz_grad`` (one flat set)."""
    p = len(gt_sorted)
    gts = gt_sorted.sum()
    intersection = gts - gt_sorted.float().cumsum(0)
    union = gts + (1 - gt_sorted).float().cumsum(0)
    jaccard = 1.0 - intersection / union
    if p > 1:
        jaccard[1:p] = jaccard[1:p] - jaccard[0:-1]
    return jaccard


def _berman_lovasz_hinge_flat(logits, labels):
    signs = 2.0 * labels.float() - 1.0
    errors = 1.0 - logits * signs
    errors_sorted, perm = torch.sort(errors, dim=0, descending=True)
    grad = _berman_lovasz_grad(labels[perm])
    return torch.dot(F.relu(errors_sorted), grad)


def _reference_lovasz(logits, targets, per):
    logits, targets = logits.float(), targets.float()
    if per == "image":
        sets = list(zip(logits, targets, strict=True))
    elif per == "class":
        sets = list(zip(logits.t(), targets.t(), strict=True))
    else:
        sets = [(logits.reshape(-1), targets.reshape(-1))]
    return torch.stack([_berman_lovasz_hinge_flat(lg, lb) for lg, lb in sets]).mean()


@pytest.mark.parametrize("per", ["class", "image", "batch"])
@pytest.mark.parametrize("seed", range(3))
def test_lovasz_equals_berman_reference(per, seed):
    logits, targets = _batch(10 + seed, b=12, k=7)
    logits = logits.float()
    got = REG.losses.create("lovasz", per=per)(logits, targets.float())
    torch.testing.assert_close(got, _reference_lovasz(logits, targets, per), rtol=1e-5,
                               atol=1e-6)


def test_lovasz_on_indicator_errors_is_the_jaccard_loss():
    # logits +-1 with the right sign have hinge error 0; logit 0 has error 1. On such 0/1
    # errors the Lovasz extension equals the set function: |M| / |positives u M|.
    rng = np.random.default_rng(0)
    for _ in range(20):
        y = (rng.random(15) < 0.4).astype(np.float32)
        wrong = rng.random(15) < 0.3
        logits = np.where(wrong, 0.0, 2 * y - 1).astype(np.float32)
        m, positives = wrong.sum(), y.astype(bool)
        jaccard_loss = m / max((positives | wrong).sum(), 1)
        got = REG.losses.create("lovasz", per="batch")(torch.from_numpy(logits)[None],
                                                       torch.from_numpy(y)[None])
        assert float(got) == pytest.approx(jaccard_loss, abs=1e-6)


def test_lovasz_bad_per():
    with pytest.raises(HpatkError, match="per"):
        REG.losses.create("lovasz", per="pixel")


def test_soft_f1_on_hard_predictions_is_one_minus_macro_f1():
    rng = np.random.default_rng(4)
    y = (rng.random((40, 6)) < 0.3).astype(np.float32)
    y[0] = 1  # every class has a positive
    pred = (rng.random((40, 6)) < 0.3).astype(np.float32)
    logits = torch.from_numpy(np.where(pred == 1, 40.0, -40.0)).float()
    got = REG.losses.create("soft_f1")(logits, torch.from_numpy(y))
    assert float(got) == pytest.approx(1 - f1_score(y, pred, average="macro"), abs=1e-5)


def test_focal_lovasz_is_the_sum():
    logits, targets = _batch(5)
    logits = logits.float()
    targets = targets.float()
    combo = REG.losses.create("focal_lovasz", lovasz_weight=0.5, per="image")(logits, targets)
    ref = (REG.losses.create("focal")(logits, targets)
           + 0.5 * REG.losses.create("lovasz", per="image")(logits, targets))
    torch.testing.assert_close(combo, ref)


@pytest.mark.parametrize("name", REG.losses.names())
def test_every_loss_has_finite_gradients(name):
    for scale in (0.1, 3.0, 60.0):
        logits, targets = _batch(6, b=8, scale=scale)
        logits = logits.float().requires_grad_(True)
        loss = REG.losses.create(name)(logits, targets.float())
        loss.backward()
        assert loss.ndim == 0 and torch.isfinite(loss)
        assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
