"""NASNet-A Mobile (Zoph et al. 2018, "Learning Transferable Architectures for Scalable
Image Recognition"), the "4 @ 1056" ImageNet model the paper trains as "NASNet Mobile".

timm ships NASNet-A *Large* only, so this module is hpatk's worked example of a backbone
plugin for a real architecture: a plain ``nn.Module`` that follows timm's model interface
(``forward_features``, ``forward_head``, ``num_features``, ``reset_classifier``,
``pretrained_cfg``), built with timm's ``build_model_with_cfg`` so that a local weights file
is loaded, and its first convolution adapted to 4 stains, exactly as for timm's own models.

Architecture (TF-slim ``mobile_imagenet_config``, Keras ``NASNetMobile``):

- stem: 3x3 conv, 32 filters, stride 2, valid padding, BatchNorm;
- two reduction "stem" cells (``cell_stem_0``, ``cell_stem_1``);
- 3 stacks of N = 4 normal cells, a reduction cell between stacks; the filters per branch
  double at every reduction: 44, 88, 176 (penultimate filters 1056 = 24 * 44);
- ReLU, global average pooling, dropout, linear classifier.

Every cell takes the outputs of the two layers before it (``x``, ``x_prev``). When
``x_prev`` has twice the resolution of ``x`` (right after a reduction) it goes through a
"factorized reduction" (two shifted 1x1 stride-2 paths, concatenated). Mobile does not skip
the reduction cell's input (``skip_reduction_layer_input = 0``): the cell after a reduction
cell sees the last normal cell before it as ``x_prev`` -- unlike NASNet-A Large. Every
operation is "ReLU -> op -> BatchNorm"; separable convs are applied twice; padding is
TensorFlow's "SAME" (timm's ``padding='same'`` layers), so TF/Keras weights fit.

Not included: the auxiliary head and drop-path (training-time regularisers of the original
ImageNet training). Parameter and buffer names follow Cadene's ``pretrainedmodels``
``nasnetamobile``, so its ImageNet file (``nasnetamobile-7e03cead.pth``) loads as is.

Parameter count at 1000 classes and 3 channels: 5,289,978 trainable parameters; with the
36,738 BatchNorm running statistics 5,326,716 -- exactly Keras ``NASNetMobile``'s "Total
params" (4,269,716 without the 1000-class top).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from timm.layers import create_classifier, create_conv2d, create_pool2d
from torch import nn

__all__ = ["NASNetAMobile", "create_nasnet_mobile"]

_BN = dict(eps=0.001, momentum=0.1)  # TF-slim's batch-norm epsilon


def _act_conv_bn(in_chs: int, out_chs: int) -> nn.Sequential:
    """ReLU -> 1x1 conv -> BatchNorm: projects a cell input to the cell's width."""
    return nn.Sequential(OrderedDict(
        relu=nn.ReLU(),
        conv=nn.Conv2d(in_chs, out_chs, 1, bias=False),
        bn=nn.BatchNorm2d(out_chs, **_BN),
    ))


class SeparableConv2d(nn.Module):
    """Depthwise k x k conv (stride s, SAME padding) followed by a pointwise 1x1 conv."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.depthwise_conv2d = create_conv2d(in_chs, in_chs, kernel_size, stride=stride,
                                              padding="same", groups=in_chs)
        self.pointwise_conv2d = create_conv2d(in_chs, out_chs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise_conv2d(self.depthwise_conv2d(x))


class BranchSeparables(nn.Module):
    """NASNet's "sep k x k" operation: (ReLU -> separable conv -> BN) twice.

    Only the first separable conv has the stride. ``stem_cell=True`` changes the width in
    the first conv (the raw stem input of ``cell_stem_0`` has ``stem_size`` channels).
    """

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int = 1,
                 stem_cell: bool = False) -> None:
        super().__init__()
        mid_chs = out_chs if stem_cell else in_chs
        self.relu = nn.ReLU()
        self.separable_1 = SeparableConv2d(in_chs, mid_chs, kernel_size, stride)
        self.bn_sep_1 = nn.BatchNorm2d(mid_chs, **_BN)
        self.relu1 = nn.ReLU()
        self.separable_2 = SeparableConv2d(mid_chs, out_chs, kernel_size, 1)
        self.bn_sep_2 = nn.BatchNorm2d(out_chs, **_BN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn_sep_1(self.separable_1(self.relu(x)))
        return self.bn_sep_2(self.separable_2(self.relu1(x)))


class _Cell(nn.Module):
    """What normal and reduction cells share: bringing both inputs to ``out_chs``.

    ``prev`` says how ``x_prev`` is brought to the cell's width:
    "conv" (ReLU-1x1-BN), "factorized" (x_prev has twice the resolution: two 1x1 stride-2
    paths, the second shifted by one pixel, concatenated, BN) or "raw" (``cell_stem_0``:
    used as is; its branches change the width themselves).
    """

    def __init__(self, prev_chs: int, in_chs: int, out_chs: int, prev: str) -> None:
        super().__init__()
        self.prev = prev
        if prev == "conv":
            self.conv_prev_1x1 = _act_conv_bn(prev_chs, out_chs)
        elif prev == "factorized":
            self.relu = nn.ReLU()
            self.path_1 = nn.Sequential(OrderedDict(
                avgpool=nn.AvgPool2d(1, stride=2, count_include_pad=False),
                conv=nn.Conv2d(prev_chs, out_chs // 2, 1, bias=False),
            ))
            self.path_2 = nn.Sequential(OrderedDict(
                pad=nn.ZeroPad2d((-1, 1, -1, 1)),  # shift by one pixel: the other half
                avgpool=nn.AvgPool2d(1, stride=2, count_include_pad=False),
                conv=nn.Conv2d(prev_chs, out_chs // 2, 1, bias=False),
            ))
            self.final_path_bn = nn.BatchNorm2d(out_chs, **_BN)
        elif prev != "raw":
            raise ValueError(f"prev must be 'conv', 'factorized' or 'raw', not {prev!r}")
        self.conv_1x1 = _act_conv_bn(in_chs, out_chs)

    def _prev(self, x_prev: torch.Tensor) -> torch.Tensor:
        if self.prev == "conv":
            return self.conv_prev_1x1(x_prev)
        if self.prev == "factorized":
            x_prev = self.relu(x_prev)
            return self.final_path_bn(torch.cat([self.path_1(x_prev), self.path_2(x_prev)], 1))
        return x_prev


class NormalCell(_Cell):
    """NASNet-A normal cell: 5 blocks, output = concat(prev, 5 blocks) = 6 * out_chs.

    Shape: x (B, in_chs, H, W), x_prev (B, prev_chs, H or 2H, W or 2W) -> (B, 6 out_chs, H, W).
    """

    def __init__(self, prev_chs: int, in_chs: int, out_chs: int, prev: str = "conv") -> None:
        super().__init__(prev_chs, in_chs, out_chs, prev)
        c = out_chs
        self.comb_iter_0_left = BranchSeparables(c, c, 5)
        self.comb_iter_0_right = BranchSeparables(c, c, 3)
        self.comb_iter_1_left = BranchSeparables(c, c, 5)
        self.comb_iter_1_right = BranchSeparables(c, c, 3)
        self.comb_iter_2_left = create_pool2d("avg", 3, 1, padding="same", count_include_pad=False)
        self.comb_iter_3_left = create_pool2d("avg", 3, 1, padding="same", count_include_pad=False)
        self.comb_iter_3_right = create_pool2d("avg", 3, 1, padding="same",
                                               count_include_pad=False)
        self.comb_iter_4_left = BranchSeparables(c, c, 3)

    def forward(self, x: torch.Tensor, x_prev: torch.Tensor) -> torch.Tensor:
        h_prev, h = self._prev(x_prev), self.conv_1x1(x)
        c0 = self.comb_iter_0_left(h) + self.comb_iter_0_right(h_prev)
        c1 = self.comb_iter_1_left(h_prev) + self.comb_iter_1_right(h_prev)
        c2 = self.comb_iter_2_left(h) + h_prev
        c3 = self.comb_iter_3_left(h_prev) + self.comb_iter_3_right(h_prev)
        c4 = self.comb_iter_4_left(h) + h
        return torch.cat([h_prev, c0, c1, c2, c3, c4], 1)


class ReductionCell(_Cell):
    """NASNet-A reduction cell (stride 2): output = concat(4 blocks) = 4 * out_chs.

    Also the two stem cells: ``cell_stem_0`` (``prev="raw"``, both inputs the stem conv's
    output) and ``cell_stem_1`` (``prev="factorized"``).

    Shape: x (B, in_chs, H, W), x_prev (B, prev_chs, H or 2H, ...) -> (B, 4 out_chs, H/2, W/2).
    """

    def __init__(self, prev_chs: int, in_chs: int, out_chs: int, prev: str = "conv") -> None:
        super().__init__(prev_chs, in_chs, out_chs, prev)
        c, stem = out_chs, prev == "raw"
        p = prev_chs if stem else c  # the raw stem input keeps its own width
        self.comb_iter_0_left = BranchSeparables(c, c, 5, 2)
        self.comb_iter_0_right = BranchSeparables(p, c, 7, 2, stem_cell=stem)
        self.comb_iter_1_left = create_pool2d("max", 3, 2, padding="same")
        self.comb_iter_1_right = BranchSeparables(p, c, 7, 2, stem_cell=stem)
        self.comb_iter_2_left = create_pool2d("avg", 3, 2, padding="same", count_include_pad=False)
        self.comb_iter_2_right = BranchSeparables(p, c, 5, 2, stem_cell=stem)
        self.comb_iter_3_right = create_pool2d("avg", 3, 1, padding="same",
                                               count_include_pad=False)
        self.comb_iter_4_left = BranchSeparables(c, c, 3, 1)
        self.comb_iter_4_right = create_pool2d("max", 3, 2, padding="same")

    def forward(self, x: torch.Tensor, x_prev: torch.Tensor) -> torch.Tensor:
        h_prev, h = self._prev(x_prev), self.conv_1x1(x)
        c0 = self.comb_iter_0_left(h) + self.comb_iter_0_right(h_prev)
        c1 = self.comb_iter_1_left(h) + self.comb_iter_1_right(h_prev)
        c2 = self.comb_iter_2_left(h) + self.comb_iter_2_right(h_prev)
        c3 = self.comb_iter_3_right(c0) + c1
        c4 = self.comb_iter_4_left(c0) + self.comb_iter_4_right(h)
        return torch.cat([c1, c2, c3, c4], 1)


class NASNetAMobile(nn.Module):
    """NASNet-A Mobile ("4 @ 1056"): (B, in_chans, H, W) -> logits (B, num_classes).

    Args:
        num_classes: outputs of the linear classifier (0: no classifier, features only).
        in_chans: input channels (4 stains, or 3).
        stem_size: filters of the stem conv (32).
        num_features: penultimate filters (1056); branch width = num_features // 24.
        cells_per_stack: normal cells per stack, N (4).
        channel_multiplier: width factor at each reduction (2).
        drop_rate: dropout before the classifier (0: Keras ``NASNetMobile`` has none).
        global_pool: timm pooling type ("avg").
        skip_reduction_layer_input: TF-slim's switch, False for Mobile; True (with
            ``stem_size=96, num_features=4032, cells_per_stack=6``) gives NASNet-A Large,
            wired as timm's ``nasnetalarge``.

    Shape:
        forward: (B, in_chans, H, W) -> (B, num_classes); any H, W >= 32.
        forward_features: (B, in_chans, H, W) -> (B, num_features, ~H/32, ~W/32), ReLU'd.

    Example:
        >>> net = NASNetAMobile(num_classes=28, in_chans=4)
        >>> net(torch.rand(2, 4, 64, 64)).shape
        torch.Size([2, 28])
    """

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, stem_size: int = 32,
                 num_features: int = 1056, cells_per_stack: int = 4,
                 channel_multiplier: int = 2, drop_rate: float = 0.0,
                 global_pool: str = "avg", skip_reduction_layer_input: bool = False,
                 **kwargs: Any) -> None:
        super().__init__()
        if num_features % 24 or cells_per_stack < 1 or cells_per_stack > 6:
            raise ValueError("num_features must be a multiple of 24 and cells_per_stack 1..6")
        self.num_classes, self.in_chans, self.drop_rate = num_classes, in_chans, drop_rate
        self.num_features = self.head_hidden_size = num_features
        self.skip_reduction_layer_input = skip_reduction_layer_input
        m, width = channel_multiplier, num_features // 24

        self.conv0 = nn.Sequential(OrderedDict(
            conv=nn.Conv2d(in_chans, stem_size, 3, stride=2, padding=0, bias=False),
            bn=nn.BatchNorm2d(stem_size, **_BN),
        ))
        # (name, module, output channels): every layer takes (x, x_prev) of the two before.
        stem0 = width // m**2
        layers: list[tuple[str, nn.Module, int]] = [
            ("cell_stem_0", ReductionCell(stem_size, stem_size, stem0, prev="raw"), 4 * stem0),
            ("cell_stem_1", ReductionCell(stem_size, 4 * stem0, width // m, prev="factorized"),
             4 * (width // m)),
        ]
        prev_chs, in_chs, prev_bigger = 4 * stem0, 4 * (width // m), True
        for stack in range(3):
            out = width * m**stack
            if stack:
                # Cadene's names: cells of stack s are cell_{6s}..; the reduction cells keep 0/1.
                name = f"reduction_cell_{stack - 1}"
                layers.append((name, ReductionCell(prev_chs, in_chs, out), 4 * out))
                if not skip_reduction_layer_input:  # else x_prev skips the reduction cell
                    prev_chs = in_chs
                in_chs, prev_bigger = 4 * out, True
            for i in range(cells_per_stack):
                prev = "factorized" if prev_bigger else "conv"
                cell = NormalCell(prev_chs, in_chs, out, prev=prev)
                layers.append((f"cell_{6 * stack + i}", cell, 6 * out))
                prev_chs, in_chs, prev_bigger = in_chs, 6 * out, False
        self.layer_names = [name for name, _, _ in layers]
        for name, module, _ in layers:
            self.add_module(name, module)
        self.act = nn.ReLU()
        self.feature_info = [
            dict(num_chs=stem_size, reduction=2, module="conv0"),
            dict(num_chs=4 * stem0, reduction=4, module="cell_stem_0"),
            dict(num_chs=6 * width, reduction=8, module=f"cell_{cells_per_stack - 1}"),
            dict(num_chs=12 * width, reduction=16, module=f"cell_{6 + cells_per_stack - 1}"),
            dict(num_chs=num_features, reduction=32, module="act"),
        ]
        self.global_pool, self.head_drop, self.last_linear = create_classifier(
            num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate)

    def get_classifier(self) -> nn.Module:
        return self.last_linear

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new classifier for ``num_classes`` (0: none), as timm models have."""
        self.num_classes = num_classes
        pool = self.global_pool.pool_type if global_pool is None else global_pool
        self.global_pool, self.head_drop, self.last_linear = create_classifier(
            self.num_features, num_classes, pool_type=pool, drop_rate=self.drop_rate)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv0(x)
        x_prev = x  # cell_stem_0 sees the stem output twice: projected and raw
        for name in self.layer_names:
            layer = getattr(self, name)
            if self.skip_reduction_layer_input and name.startswith("reduction_cell"):
                x = layer(x, x_prev)  # Large: the next cell's x_prev skips this cell
            else:
                x_prev, x = x, layer(x, x_prev)
        return self.act(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.global_pool(x))
        return x if pre_logits else self.last_linear(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# timm's description of the model and its (ImageNet) weights: first conv and classifier
# names let timm adapt the stem to 4 stains and drop a 1000-class classifier.
PRETRAINED_CFG: dict[str, Any] = dict(
    num_classes=1000, input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=0.875,
    interpolation="bicubic", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
    first_conv="conv0.conv", classifier="last_linear", architecture="nasnet_mobile",
)


def create_nasnet_mobile(num_classes: int, in_chans: int = 4, pretrained_file: str | None = None,
                         **kwargs: Any) -> NASNetAMobile:
    """Build NASNet-A Mobile, optionally from a local weights file (3-channel ImageNet
    weights are adapted to ``in_chans`` by timm, a different classifier is dropped)."""
    from timm.models import build_model_with_cfg

    overlay = dict(file=str(pretrained_file)) if pretrained_file else None
    return build_model_with_cfg(
        NASNetAMobile, "nasnet_mobile", pretrained=bool(pretrained_file),
        pretrained_cfg=dict(PRETRAINED_CFG), pretrained_cfg_overlay=overlay,
        num_classes=num_classes, in_chans=in_chans, **kwargs)

