"""Backbones: every registered one trains (forward + backward) on 4 and 3 stains at a
small size, the paper's heads, pretrained weights from a file (timm's first-conv
adaptation), clear errors, and NASNet-A Mobile against Keras' parameter count and timm's
NASNet-A Large."""

from __future__ import annotations

import functools
import pickle
from pathlib import Path

import pytest
import timm
import torch
from hpatk.core import HpatkError, RegistryError, get_registry
from hpatk.plugins.backbones.nasnet import NASNetAMobile
from timm.models._manipulate import adapt_input_conv
from torch import nn

REG = get_registry()
BACKBONES = [n for n in REG.backbones.names() if not n.endswith(":*")]
SIZE = {"inceptionv3": 75, "inceptionv4": 75}  # their smallest input


@functools.cache
def _built(name: str, in_chans: int, head: str) -> nn.Module:
    """Each (backbone, stains, head) built once per session: vgg16 alone costs seconds."""
    torch.manual_seed(0)
    return REG.backbones.create(name, num_classes=3, in_chans=in_chans, head=head)


def _train_step(net: nn.Module, in_chans: int, size: int) -> torch.Tensor:
    net.train()
    x = torch.rand(2, in_chans, size, size)  # batch 2: BatchNorm on 1x1 maps needs > 1 value
    out = net(x)
    out.square().mean().backward()
    return out


# 4 stains with timm's head, 3 stains with the paper's: both heads and channel counts for
# every backbone at the cost of two builds each.
@pytest.mark.parametrize("in_chans,head", [(4, "default"), (3, "paper")])
@pytest.mark.parametrize("name", BACKBONES)
def test_backbone_trains_on_stains(name, in_chans, head):
    net = _built(name, in_chans, head)
    out = _train_step(net, in_chans, SIZE.get(name, 64))
    assert out.shape == (2, 3) and torch.isfinite(out).all()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads[:1] + grads[-2:])


def test_any_timm_model_by_name():
    net = REG.backbones.create("timm:resnet10t", num_classes=5, in_chans=4).eval()
    assert net(torch.rand(1, 4, 32, 32)).shape == (1, 5)
    with pytest.raises(RegistryError, match="no_such_model"):
        REG.backbones.create("timm:no_such_model", num_classes=5)


def test_inceptionv4_paper_head():
    net = _built("inceptionv4", 3, "paper")
    head = net.head
    assert isinstance(head.drop, nn.Dropout) and head.drop.p == 0.5
    assert isinstance(head.norm, nn.BatchNorm2d) and head.norm.num_features == 1536
    assert (head.fc1.in_features, head.fc1.out_features) == (1536, 128)
    assert (head.fc2.in_features, head.fc2.out_features) == (128, 3)
    # order: dropout -> batchnorm -> pooling -> dense 128 relu -> dense K (logits)
    net.eval()
    feats = torch.rand(2, 1536, 3, 3)
    with torch.no_grad():
        ref = head.fc2(torch.relu(head.fc1(head.norm(feats).mean(dim=(2, 3)))))
        torch.testing.assert_close(head(feats), ref)


def test_vgg16_paper_head_drops_timms_4096_wide_head():
    net = _built("vgg16", 3, "paper")
    assert (net.head.fc1.in_features, net.head.fc1.out_features) == (512, 256)
    assert net.head.fc2.out_features == 3
    n_params = sum(p.numel() for p in net.parameters())
    assert n_params == 14_714_688 + 512 * 256 + 256 + 256 * 3 + 3  # Keras' conv base + head
    net.zero_grad(set_to_none=True)
    out = _train_step(net, 3, 32)  # every parameter is used: all get a gradient
    assert out.shape == (2, 3)
    assert all(p.grad is not None for p in net.parameters())


def test_paper_head_elsewhere_is_timms_and_named_heads_work_anywhere():
    net = REG.backbones.create("resnet18", num_classes=3, head="paper")
    assert isinstance(net, timm.models.ResNet)
    net = REG.backbones.create("resnet18", num_classes=3, head="paper_inceptionv4")
    assert net.head.fc1.out_features == 128 and net(torch.rand(2, 4, 32, 32)).shape == (2, 3)
    with pytest.raises(HpatkError, match="unknown head 'papr'"):
        REG.backbones.create("resnet18", num_classes=3, head="papr")


def test_unknown_option_is_one_clear_error():
    with pytest.raises(HpatkError, match="resnet18.*unexpected keyword argument 'nope'"):
        REG.backbones.create("resnet18", num_classes=3, nope=1)


# --- pretrained weights ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory) -> tuple[Path, nn.Module]:
    torch.manual_seed(1)
    src = timm.create_model("resnet18")  # 3 channels, 1000 classes: like ImageNet weights
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(src.state_dict(), path)
    return path, src


@pytest.mark.parametrize("head", ["default", "paper_vgg16"])
def test_pretrained_file_is_loaded_and_first_conv_adapted(resnet18_file, head):
    path, src = resnet18_file
    net = REG.backbones.create("resnet18", num_classes=3, in_chans=4, pretrained=str(path),
                               head=head)
    body = net.backbone if head != "default" else net
    assert torch.equal(body.layer4[1].conv2.weight, src.layer4[1].conv2.weight)
    assert torch.equal(body.bn1.running_mean, src.bn1.running_mean)
    # timm's adaptation of the 3-channel first conv to 4 stains
    assert body.conv1.weight.shape == (64, 4, 7, 7)
    torch.testing.assert_close(body.conv1.weight, adapt_input_conv(4, src.conv1.weight))
    if head == "default":
        assert body.fc.weight.shape == (3, 512)  # the 1000-class classifier is not loaded


def test_pretrained_file_with_three_stains_is_exact(resnet18_file):
    path, src = resnet18_file
    net = REG.backbones.create("resnet18", num_classes=1000, in_chans=3, pretrained=path)
    for key, value in src.state_dict().items():
        assert torch.equal(net.state_dict()[key], value), key


def _one_line_error(call) -> str:
    with pytest.raises(HpatkError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    return message


def test_pretrained_errors(tmp_path, resnet18_file, monkeypatch):
    def create(name: str, pretrained: object) -> nn.Module:
        return REG.backbones.create(name, num_classes=3, pretrained=pretrained)

    missing = tmp_path / "missing.pth"
    assert str(missing) in _one_line_error(lambda: create("resnet18", missing))
    assert "is a folder" in _one_line_error(lambda: create("resnet18", tmp_path))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"this is not a weights file")
    msg = _one_line_error(lambda: create("resnet18", junk))
    assert "cannot load weights file" in msg and str(junk) in msg
    msg = _one_line_error(lambda: create("resnet50", resnet18_file[0]))
    assert "resnet50" in msg and "state_dict" in msg  # weights of another architecture

    def offline(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(timm.models._builder, "load_state_dict_from_hf", offline)
    msg = _one_line_error(lambda: create("resnet18", "timm/resnet18.a1_in1k"))
    assert "hub" in msg and "local weights file" in msg


class _Payload:
    """Pickles to a call of Path.touch: loading it unsafely would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pretrained_file_with_code_is_refused(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as fh:
        pickle.dump({"conv1.weight": _Payload(marker)}, fh, protocol=2)
    msg = _one_line_error(lambda: REG.backbones.create("resnet18", num_classes=3, pretrained=path))
    assert "weights_only" in msg
    assert not marker.exists()


# --- NASNet-A Mobile ---------------------------------------------------------------------
def test_nasnet_mobile_parameter_count_is_keras():
    # Keras NASNetMobile (1000 classes): 5,326,716 total = 5,289,978 trainable + 36,738
    # BatchNorm moving statistics; 4,269,716 without the top (include_top=False).
    net = NASNetAMobile(num_classes=1000, in_chans=3)
    trainable = sum(p.numel() for p in net.parameters())
    stats = sum(b.numel() for n, b in net.named_buffers() if n.endswith(("running_mean",
                                                                          "running_var")))
    top = sum(p.numel() for p in net.last_linear.parameters())
    assert trainable == 5_289_978
    assert trainable + stats == 5_326_716
    assert trainable + stats - top == 4_269_716


def test_nasnet_cells_equal_timms_nasnet_a_large():
    # The same cells wired as NASNet-A Large (6 @ 4032, stem 96, reduction inputs skipped)
    # must be timm's nasnetalarge: same parameter names and shapes, same outputs.
    torch.manual_seed(0)
    ref = timm.create_model("nasnetalarge", num_classes=4).eval()
    ours = NASNetAMobile(num_classes=4, in_chans=3, stem_size=96, num_features=4032,
                         cells_per_stack=6, skip_reduction_layer_input=True).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size,grid", [(32, 1), (64, 2), (75, 3), (224, 7)])
def test_nasnet_mobile_feature_map(size, grid):
    net = NASNetAMobile(num_classes=2, in_chans=4).eval()
    with torch.no_grad():
        feats = net.forward_features(torch.rand(1, 4, size, size))
    assert feats.shape == (1, 1056, grid, grid) and float(feats.min()) >= 0  # ReLU'd


def test_nasnet_mobile_registered_with_alias_and_pretrained_file(tmp_path):
    torch.manual_seed(2)
    src = NASNetAMobile(num_classes=1000, in_chans=3)  # stands in for ImageNet weights
    path = tmp_path / "nasnetamobile.pth"
    torch.save(src.state_dict(), path)
    net = REG.backbones.create("nasnetamobile", num_classes=3, in_chans=4, pretrained=path)
    assert isinstance(net, NASNetAMobile)
    key = "cell_15.comb_iter_0_left.separable_1.depthwise_conv2d.weight"
    assert torch.equal(net.state_dict()[key], src.state_dict()[key])
    torch.testing.assert_close(net.conv0.conv.weight, adapt_input_conv(4, src.conv0.conv.weight))
    assert net.last_linear.weight.shape == (3, 1056)
    msg = _one_line_error(lambda: REG.backbones.create("nasnet_mobile", num_classes=3,
                                                             pretrained="imagenet"))
    assert "local weights file" in msg
