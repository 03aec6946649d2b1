"""Every registered enhancer, loss, backbone, augmentation and synthesizer runs on tiny
data — parametrized over the live registry, third-party plugins included (timm style).
tests/test_meta.py checks every plugin kind has its test here."""

from __future__ import annotations

import pytest
import torch
from hpatk.core import Enhancer, get_registry

REG = get_registry()
# Heavy paper backbones get their own (slower) tests in the training suite.
SMALL_BACKBONE_SIZE = {"inceptionv3": 75, "inceptionv4": 75}


@pytest.mark.parametrize("name", REG.enhancers.names())
def test_enhancer_smoke(name):
    enh = REG.enhancers.create(name)
    assert isinstance(enh, Enhancer)
    x = torch.rand(2, 4, 32, 32)
    y = enh(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    assert isinstance(enh.config(), dict) and enh.config()["name"]


@pytest.mark.parametrize("name", REG.losses.names())
def test_loss_smoke(name):
    loss_fn = REG.losses.create(name)
    logits = torch.randn(4, 28, requires_grad=True)
    targets = (torch.rand(4, 28) > 0.8).float()
    loss = loss_fn(logits, targets)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("name", [n for n in REG.backbones.names() if not n.endswith(":*")])
def test_backbone_smoke(name):
    torch.manual_seed(0)
    net = REG.backbones.create(name, num_classes=3, in_chans=4).eval()
    size = SMALL_BACKBONE_SIZE.get(name, 64)
    with torch.no_grad():
        out = net(torch.rand(1, 4, size, size))
    assert out.shape == (1, 3) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", REG.synthesizers.names())
def test_synthesizer_smoke(name, tmp_path):
    """Every registered synthesizer: fit on 8 tiny images of one class (a few steps where
    it has a ``steps`` parameter), sample uint8 images, round-trip its state."""
    import numpy as np
    from hpatk.core import Synthesizer

    probe = REG.synthesizers.create(name)
    assert isinstance(probe, Synthesizer) and isinstance(probe.per_class, bool)
    tiny = {k: v for k, v in {"steps": 2, "batch_size": 4, "width": 1, "sample_every": 0,
                              "device": "cpu", "image_size": 16}.items() if k in probe.params}
    synth = REG.synthesizers.create(name, **tiny)
    images = np.random.default_rng(0).integers(0, 256, (8, 4, 16, 16), dtype=np.uint8)
    labels = np.ones((8, 1), np.uint8)
    synth.fit(images, labels, classes=[0], out_dir=tmp_path, seed=0)
    y = None if synth.per_class else labels[:3]
    out = synth.sample(3, y, seed=1)
    assert out.dtype == np.uint8 and out.shape == (3, 4, synth.image_size, synth.image_size)
    again = REG.synthesizers.create(name, **synth.params)
    again.load_state_dict(synth.state_dict())
    assert np.array_equal(again.sample(3, y, seed=1), out)


@pytest.mark.parametrize("name", REG.augmentations.names())
def test_augmentation_smoke(name):
    """Every registered augmentation: an nn.Module mapping a float batch in [0, 1] to a
    batch of the same shape and dtype, finite and in [0, 1]."""
    torch.manual_seed(0)
    aug = REG.augmentations.create(name)
    assert isinstance(aug, torch.nn.Module)
    x = torch.rand(3, 4, 32, 32)
    with torch.no_grad():
        y = aug(x.clone())
    assert y.shape == x.shape and y.dtype == x.dtype and torch.isfinite(y).all()
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
