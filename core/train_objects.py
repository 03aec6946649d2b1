"""What a training run trains with, built from the registry and checked together before
anything is written: the backbone (and the smallest input it takes), the loss and the
batch augmentation; one tiny batch through all three, each failure one line naming the
option behind it."""

from __future__ import annotations

from typing import Any

import torch
from hpatk.core.errors import HpatkError, typed_line
from hpatk.core.registry import get_registry
from hpatk.core.train_config import TrainConfig
from torch import nn


def shown_params(params: dict[str, Any]) -> str:
    """``k=v,k=v``: parameters as the options give them."""
    return ",".join(f"{k}={v}" for k, v in params.items())


def build_model(cfg: TrainConfig, num_classes: int, in_chans: int,
                pretrained: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The backbone from the registry and its checkpoint ``model`` spec."""
    kwargs = dict(cfg.backbone_params)
    if cfg.head != "default":
        kwargs["head"] = cfg.head
    reg = get_registry()
    try:
        model = reg.backbones.create(cfg.backbone, num_classes=num_classes, in_chans=in_chans,
                                     pretrained=pretrained, **kwargs)
    except Exception as exc:
        if isinstance(exc, HpatkError) and (str(exc).startswith("--") or not kwargs):
            raise  # names its option already (--pretrained, --head, ...)
        given = f" {shown_params(cfg.backbone_params)}" if cfg.backbone_params else ""
        raise HpatkError(f"{cfg.where('backbone_params')}{given}: backbone '{cfg.backbone}' "
                         f"cannot be built with these options: {typed_line(exc)}") from exc
    spec = {"backbone": reg.backbones.canonical(cfg.backbone), "num_classes": num_classes,
            "in_chans": in_chans, "kwargs": kwargs}
    return model, spec


def build_loss(cfg: TrainConfig) -> nn.Module:
    """The registered loss with ``loss_params``; bad parameters are one line naming them."""
    try:
        return get_registry().losses.create(cfg.loss, **cfg.loss_params)
    except Exception as exc:
        raise HpatkError(f"{cfg.where('loss_params')} {shown_params(cfg.loss_params)}: loss "
                         f"'{cfg.loss}' refuses them: {typed_line(exc)}") from exc


def _batch_aug_option(cfg: TrainConfig, choice: Any) -> str:
    """The option behind the batch augmentation, for messages: ``--aug-param ...`` when
    ``--aug`` names it, ``--batch-aug NAME`` when ``--aug`` names a synthesizer."""
    if choice.synth is None:
        return f"{cfg.where('aug_params')} {shown_params(choice.batch_params)}"
    return f"{cfg.where('batch_aug')} {choice.batch}"


def build_augment(cfg: TrainConfig) -> nn.Module | None:
    """The batch augmentation module: ``--aug`` when it names one, ``--batch-aug`` when
    ``--aug`` names a synthesizer (its images join the training set; the batches are
    still augmented), None for ``none``."""
    from hpatk.core.synthetic import resolve_aug

    choice = resolve_aug(cfg.aug, cfg.aug_params, cfg.batch_aug)
    if choice.batch is None:
        return None
    try:
        aug = get_registry().augmentations.create(choice.batch, **choice.batch_params)
    except Exception as exc:
        raise HpatkError(f"{_batch_aug_option(cfg, choice)}: augmentation '{choice.batch}' "
                         f"refuses its parameters: {typed_line(exc)}") from exc
    if not isinstance(aug, nn.Module):
        raise HpatkError(f"--aug {choice.batch}: not a batch augmentation (nn.Module)")
    return aug


def _forward_error(model: nn.Module, in_chans: int, size: int,
                   batch: int = 1) -> BaseException | None:
    """The exception ``model`` raises on a random (batch, in_chans, size, size) input,
    or None when it gives logits."""
    try:
        with torch.no_grad():
            model(torch.rand(batch, in_chans, size, size))
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        return exc
    return None


def min_input_size(model: nn.Module, in_chans: int, *, start: int = 16,
                   upto: int = 1024) -> int | None:
    """The smallest square input size ``model`` accepts, at least ``start``: timm's
    ``pretrained_cfg["min_input_size"]`` when it says, else forward passes in eval mode
    (sizes doubled from ``start`` until one works, then a binary search). None when no
    size up to ``upto`` works."""
    cfg_min = (getattr(model, "pretrained_cfg", None) or {}).get("min_input_size")
    if cfg_min:
        return int(cfg_min[-1])
    was_training = model.training
    model.eval()
    try:
        if _forward_error(model, in_chans, start) is None:
            return start
        lo, hi = start, start * 2  # lo fails, hi is tried next
        while _forward_error(model, in_chans, hi) is not None:
            if hi >= upto:
                return None
            lo, hi = hi, min(hi * 2, upto)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if _forward_error(model, in_chans, mid) is None:
                hi = mid
            else:
                lo = mid
        return hi
    finally:
        model.train(was_training)


def backbone_min_size(name: str, *, in_chans: int = 4, num_classes: int = 2,
                      params: dict[str, Any] | None = None) -> int | None:
    """The smallest input size backbone ``name`` accepts (see :func:`min_input_size`)."""
    model = get_registry().backbones.create(name, num_classes=num_classes, in_chans=in_chans,
                                            pretrained=None, **dict(params or {}))
    return min_input_size(model, in_chans)


def check_objects(cfg: TrainConfig, model: nn.Module, loss_fn: nn.Module,
                  augment: nn.Module | None, *, in_chans: int, num_classes: int,
                  size: int, size_from: str) -> None:
    """Run one tiny batch (2 random images) through ``augment``, ``model`` (train mode,
    no gradients) and ``loss_fn``; a failure is one line naming the option behind it.

    Args:
        size_from: what chose ``size``, for the message (``--size 64``).

    Raises:
        HpatkError: the backbone cannot take ``size`` px (naming its minimum), or a
            parameter makes the model, loss or augmentation fail.
    """
    x = torch.rand(2, in_chans, size, size)
    if augment is not None:
        try:
            with torch.no_grad():
                augment(x.clone())
        except Exception as exc:
            from hpatk.core.synthetic import resolve_aug

            choice = resolve_aug(cfg.aug, cfg.aug_params, cfg.batch_aug)
            raise HpatkError(f"{_batch_aug_option(cfg, choice)}: augmentation "
                             f"'{choice.batch}' fails on a test batch: {typed_line(exc)}"
                             ) from exc
    model.train()
    try:
        with torch.no_grad():
            logits = model(x).float()
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        # shape errors are RuntimeErrors; a TypeError/ValueError is a bad option value
        smallest = (min_input_size(model, in_chans, start=size)
                    if isinstance(err, RuntimeError) else None)
        if smallest is not None and smallest > size:
            raise HpatkError(f"--backbone {cfg.backbone}: needs images of at least {smallest} "
                             f"px, and {size_from} gives {size} px; use a larger --size") from None
        where = (f"{cfg.where('backbone_params')} {shown_params(cfg.backbone_params)}: "
                 if cfg.backbone_params else f"--backbone {cfg.backbone}: ")
        raise HpatkError(f"{where}backbone '{cfg.backbone}' fails on a test batch of "
                         f"{size} px images: {typed_line(err)}") from err
    if tuple(logits.shape) != (2, num_classes):
        raise HpatkError(f"--backbone {cfg.backbone}: gives logits of shape "
                         f"{tuple(logits.shape)} for 2 images, not (2, {num_classes})")
    targets = (torch.rand(2, num_classes) > 0.5).float()
    try:
        with torch.no_grad():
            value = loss_fn(logits, targets)
        float(value)
    except Exception as exc:
        raise HpatkError(f"{cfg.where('loss_params')} {shown_params(cfg.loss_params)}: loss "
                         f"'{cfg.loss}' fails on a test batch: {typed_line(exc)}") from exc


def state_dict_cpu(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the weights on the CPU (what checkpoints store)."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in
            model.state_dict().items()}
