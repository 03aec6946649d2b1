"""The DCGAN plugin: architecture (the paper's), the training recipe, checkpoints,
determinism, resume, and a quality check that could fail (pixel distributions of the
samples move toward the real class's)."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from hpatk.core import get_registry
from hpatk.core.checkpoint import load_checkpoint
from hpatk.core.errors import HpatkError
from hpatk.core.generator import resize_uint8
from hpatk.plugins.augment_gan.dcgan import DCGAN, Discriminator, Generator, from_uint8, to_uint8
from hpatk.plugins.augment_gan.trainer import GanTrainConfig, ImageBank, train_gan
from torch import nn

STAINS = ["green", "red", "blue", "yellow"]
FACTORY_KEYS = {"latent_dim", "channels", "image_size", "width"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _class_images(cache, class_index=0):
    from hpatk.core.cache import CacheDataset, cache_labels

    rows = np.flatnonzero(cache_labels(cache)[:, class_index])
    return CacheDataset(cache, indices=rows).read_batch(np.arange(len(rows)))[0]


def _tiny_cfg(**kw):
    base = dict(steps=6, batch_size=8, seed=0, device="cpu", sample_every=0)
    base.update(kw)
    return GanTrainConfig(**base)


# --- architecture ---------------------------------------------------------------------

@pytest.mark.parametrize("size", [16, 64, 128, 256, 512])
def test_shapes_for_every_size(size):
    torch.manual_seed(0)
    gan = DCGAN(channels=4, image_size=size, width=1)
    z = torch.randn(2, 100)
    x = gan.generator(z)
    assert x.shape == (2, 4, size, size)
    assert x.min() >= -1 and x.max() <= 1
    assert gan.discriminator(x).shape == (2, 1)


@pytest.mark.parametrize("size", [0, 48, 100, 8, 1024 + 8])
def test_bad_sizes_are_refused(size):
    with pytest.raises(ValueError, match="8 \\* 2\\*\\*n"):
        Generator(image_size=size, width=1)


def test_batchnorm_is_keras_momentum_0_8():
    gan = DCGAN(image_size=64, width=2)
    bns = [m for m in gan.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 3 + 2  # G: after dense + 2 of 3 transposed convs; D: convs 2-3
    assert all(m.momentum == pytest.approx(0.2) and m.eps == pytest.approx(1e-3) for m in bns)
    # torch momentum 0.2: running = 0.8 * running + 0.2 * batch, as Keras momentum 0.8
    bn = bns[0].train()
    bn.reset_running_stats()
    bn(torch.full((4, bn.num_features, 8, 8), 5.0))
    assert torch.allclose(bn.running_mean, torch.full_like(bn.running_mean, 1.0))


def test_paper_architecture_at_width_64_and_512_px():
    """8x8x1024 dense, 6 transposed 3x3 stride-2 convs; D 6 strided 3x3 convs + dense 1."""
    g = Generator(latent_dim=100, channels=4, image_size=512, width=64)
    assert g.fc.in_features == 100 and g.fc.out_features == 8 * 8 * 1024
    convs = [m for m in g.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert len(convs) == 6
    assert [c.in_channels for c in convs] == [1024, 512, 256, 128, 64, 32]
    assert convs[-1].out_channels == 4
    assert all(c.kernel_size == (3, 3) and c.stride == (2, 2) for c in convs)
    acts = [type(m) for m in g.net]
    assert acts[-1] is nn.Tanh and acts.count(nn.ReLU) == 6
    d = Discriminator(channels=4, image_size=512, width=64)
    dconvs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert len(dconvs) == 6
    assert all(c.kernel_size == (3, 3) and c.stride == (2, 2) for c in dconvs)
    assert [c.out_channels for c in dconvs] == [32, 64, 128, 256, 512, 1024]
    drops = [m for m in d.modules() if isinstance(m, nn.Dropout)]
    assert len(drops) == 6 and all(m.p == 0.25 for m in drops)
    assert sum(isinstance(m, nn.LeakyReLU) for m in d.modules()) == 6
    assert d.fc.in_features == 1024 * 8 * 8 and d.fc.out_features == 1


def test_synthesizer_round_trips_through_a_generator_checkpoint(synth_cache, tmp_path):
    from hpatk.core.generator import load_generator, save_generator

    reg = get_registry()
    synth = reg.synthesizers.create("gan", image_size=16, width=1, steps=3, batch_size=4,
                                    device="cpu", sample_every=0)
    assert reg.synthesizers.canonical("gan") == "dcgan" and synth.per_class
    images = resize_uint8(_class_images(synth_cache, 2), 16).numpy()
    summary = synth.fit(images, np.ones((len(images), 1), np.uint8), classes=[2], seed=1)
    assert summary["steps"] == 3 and synth.params["channels"] == 4
    path = save_generator(tmp_path / "generator.pt", synth, name="dcgan", classes=[2],
                          train_ids=["b", "a"], train_labels=np.ones((2, 1), np.uint8),
                          stains=STAINS, enhance={"name": "clahe"}, fold=None, key="k",
                          cache_fingerprint="f", seed=1)
    ckpt = load_checkpoint(path)
    assert (ckpt["synthesizer"], ckpt["format"], ckpt["train_ids"]) == ("dcgan", 2, ["a", "b"])
    again = load_generator(path)
    assert np.array_equal(again.synth.sample(3, seed=4), synth.sample(3, seed=4))
    with pytest.raises(HpatkError, match="unknown parameter 'stepz'"):
        reg.synthesizers.create("gan", stepz=3)
    with pytest.raises(HpatkError, match="image_size"):
        reg.synthesizers.create("gan", image_size=48)


def test_uint8_conversion_round_trips():
    u = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    x = from_uint8(u)
    assert x.min() == -1 and x.max() == 1
    assert torch.equal(to_uint8(x), u)
    clipped = to_uint8(torch.tensor([-3.0, 3.0]))
    assert torch.equal(clipped, torch.tensor([0, 255], dtype=torch.uint8))


def test_resize_matches_opencv_area():
    import cv2
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (1, 2, 64, 64), dtype=np.uint8)
    ours = resize_uint8(torch.from_numpy(img), 32).numpy()
    ref = np.stack([cv2.resize(c, (32, 32), interpolation=cv2.INTER_AREA) for c in img[0]])
    assert np.abs(ours[0].astype(int) - ref).max() <= 1


# --- training -------------------------------------------------------------------------

def test_short_training_writes_everything(synth_cache, tmp_path):
    images = _class_images(synth_cache, 0)
    torch.manual_seed(0)
    gan = DCGAN(channels=4, image_size=32, width=4)
    meta = {"class_index": 0, "class_name": "Nucleoplasm", "stains": STAINS,
            "enhance": {"name": "clahe"}, "fold": None, "n_images": len(images)}
    out = tmp_path / "class_00"
    res = train_gan(gan, images, _tiny_cfg(steps=12, sample_every=5), out_dir=out, meta=meta)
    names = {p.name for p in out.iterdir()}
    assert {"last.pt", "losses.csv", "losses.png", "samples_real.png",
            "samples_step_0.png", "samples_step_5.png", "samples_step_10.png",
            "samples_step_12.png"} <= names
    assert not [n for n in names if n.endswith(".tmp")]
    with open(out / "losses.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == list(range(1, 13))
    assert list(rows[0]) == ["step", "d_loss_real", "d_loss_fake", "g_loss", "d_acc"]
    for r in rows:
        assert all(math.isfinite(float(r[k])) for k in ("d_loss_real", "d_loss_fake", "g_loss"))
        assert 0 <= float(r["d_acc"]) <= 1
    assert len(res.history) == 12
    assert "generator.pt" not in names  # core's synthetic step writes that one
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["kind"] == "state" and set(ckpt["model"]) == FACTORY_KEYS
    assert ckpt["model"] == {"latent_dim": 100, "channels": 4, "image_size": 32, "width": 4}
    assert (ckpt["class_index"], ckpt["class_name"], ckpt["stains"], ckpt["fold"],
            ckpt["seed"], ckpt["steps"]) == (0, "Nucleoplasm", STAINS, None, 0, 12)
    assert ckpt["enhance"] == {"name": "clahe"} and "hpatk_version" in ckpt
    assert "discriminator" in ckpt
    s = gan.sample(5, seed=0)
    assert s.shape == (5, 4, 32, 32) and s.min() >= 0 and s.max() <= 1
    # The discriminator learned something in 12 steps: its loss on real+fake dropped.
    d = [h["d_loss_real"] + h["d_loss_fake"] for h in res.history]
    assert np.mean(d[-4:]) < np.mean(d[:2])


def _run(images, seed, steps=5, **kw):
    torch.manual_seed(seed)
    gan = DCGAN(channels=4, image_size=16, width=2)
    hist = train_gan(gan, images, _tiny_cfg(steps=steps, seed=seed, **kw)).history
    return gan, hist


def test_determinism_for_a_seed(synth_cache):
    images = _class_images(synth_cache, 25)
    g1, h1 = _run(images, 3)
    g2, h2 = _run(images, 3)
    _, h3 = _run(images, 4)
    assert h1 == h2 and h1 != h3
    for a, b in zip(g1.state_dict().values(), g2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(g1.sample_uint8(4, seed=9), g2.sample_uint8(4, seed=9))
    assert not torch.equal(g1.sample_uint8(4, seed=9), g1.sample_uint8(4, seed=10))
    # Batch size does not change the samples for a seed.
    assert torch.equal(g1.sample_uint8(5, seed=9, batch_size=2), g1.sample_uint8(5, seed=9))


def _assert_resume_matches_straight(images, straight, h_straight, out_dir, **kw):
    """3 steps, then a resume to 6 from ``out_dir/last.pt`` under another caller RNG,
    equal the uninterrupted 6-step run (``straight``, its history ``h_straight``)."""
    torch.manual_seed(0)
    train_gan(DCGAN(channels=4, image_size=16, width=2), images,
              _tiny_cfg(steps=3, checkpoint_every=3, **kw), out_dir=out_dir)
    torch.manual_seed(123)  # resume must not depend on the caller's RNG
    gan2 = DCGAN(channels=4, image_size=16, width=2)
    h = train_gan(gan2, images, _tiny_cfg(steps=6, checkpoint_every=3, **kw), out_dir=out_dir,
                  resume=True).history
    assert [r["step"] for r in h] == list(range(1, 7))
    assert h == h_straight
    for a, b in zip(straight.state_dict().values(), gan2.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_resume_continues_exactly(synth_cache, tmp_path):
    images = _class_images(synth_cache, 0)
    straight, h_straight = _run(images, 0, steps=6)
    _assert_resume_matches_straight(images, straight, h_straight, tmp_path)
    with pytest.raises(HpatkError, match="cannot resume"):
        train_gan(DCGAN(channels=4, image_size=16, width=3), images,
                  _tiny_cfg(steps=8), out_dir=tmp_path, resume=True)


def test_recipe_settings_reach_the_optimisers(synth_cache, monkeypatch):
    """Adam(2e-4, beta1 0.5) for G, SGD for D, real targets 0.9, ~5% flipped labels."""
    seen = {}
    real_adam, real_sgd = torch.optim.Adam, torch.optim.SGD

    def adam(params, **kw):
        seen["adam"] = kw
        return real_adam(params, **kw)

    def sgd(params, **kw):
        seen["sgd"] = kw
        return real_sgd(params, **kw)

    targets = []
    real_bce = torch.nn.BCEWithLogitsLoss.forward

    def bce(self, logits, target):
        targets.append(target.detach().flatten().clone())
        return real_bce(self, logits, target)

    monkeypatch.setattr(torch.optim, "Adam", adam)
    monkeypatch.setattr(torch.optim, "SGD", sgd)
    monkeypatch.setattr(torch.nn.BCEWithLogitsLoss, "forward", bce)
    _run(_class_images(synth_cache, 0), 0, steps=40, batch_size=32, d_lr=0.01)
    assert seen["adam"]["lr"] == 2e-4 and seen["adam"]["betas"][0] == 0.5
    assert seen["sgd"]["lr"] == 0.01
    real_t = torch.cat(targets[0::3])
    fake_t = torch.cat(targets[1::3])
    g_t = torch.cat(targets[2::3])
    assert real_t.unique().tolist() == pytest.approx([0.0, 0.9])
    assert 0.02 < (real_t == 0).float().mean() < 0.09  # 5% of 1280 labels flipped
    assert 0.02 < (fake_t > 0).float().mean() < 0.09
    assert torch.all(g_t == 1)  # non-saturating G loss: -log D(G(z))


def _w1(a: np.ndarray, b: np.ndarray) -> float:
    """1-D Wasserstein distance between two equal-size samples."""
    return float(np.abs(np.sort(a) - np.sort(b)).mean())


def test_training_moves_samples_toward_the_real_class(synth_cache):
    """Per stain, the samples' pixel-intensity distribution approaches the real one.

    An untrained generator gives tanh(~0) = mid-gray everywhere; a generator whose
    loss or update had the wrong sign, or that never saw the real images, stays away."""
    real = resize_uint8(_class_images(synth_cache, 0), 16).numpy().astype(np.float32)
    n = len(real)
    torch.manual_seed(0)
    gan = DCGAN(channels=4, image_size=16, width=4)

    def dist():
        fake = gan.sample_uint8(n, seed=1).numpy().astype(np.float32)
        return np.array([_w1(fake[:, c].ravel(), real[:, c].ravel()) for c in range(4)])

    before = dist()
    train_gan(gan, torch.from_numpy(real.astype(np.uint8)),
              _tiny_cfg(steps=80, batch_size=16))
    after = dist()
    assert before.mean() > 20  # gray vs dark CLAHE backgrounds: a real gap to close
    assert after.mean() < 0.5 * before.mean(), (before, after)
    assert np.all(after < before), (before, after)


def test_bad_training_inputs():
    with pytest.raises(HpatkError, match="uint8"):
        ImageBank(np.zeros((2, 4, 16, 16), np.float32), size=16)
    with pytest.raises(HpatkError, match="no images"):
        ImageBank(np.zeros((0, 4, 16, 16), np.uint8), size=16)
    with pytest.raises(HpatkError, match="channels"):
        train_gan(DCGAN(channels=4, image_size=16, width=1),
                  np.zeros((4, 3, 16, 16), np.uint8), _tiny_cfg())
    with pytest.raises(HpatkError, match="batch size"):
        GanTrainConfig(batch_size=1)
    with pytest.raises(HpatkError, match="flip"):
        GanTrainConfig(flip=0.7)


def test_non_finite_loss_stops_with_a_clear_error(tmp_path):
    gan = DCGAN(channels=4, image_size=16, width=1)
    with torch.no_grad():
        gan.discriminator.fc.bias.fill_(float("nan"))
    with pytest.raises(HpatkError, match="non-finite loss at step 1"):
        train_gan(gan, np.zeros((4, 4, 16, 16), np.uint8), _tiny_cfg(), out_dir=tmp_path)
    assert not (tmp_path / "generator.pt").exists()


def test_sampling_on_device_matches_cpu(device):
    torch.manual_seed(0)
    gan = DCGAN(channels=4, image_size=16, width=2)
    cpu = gan.sample(3, seed=5)
    on = gan.to(device).sample(3, seed=5).cpu()
    assert torch.allclose(cpu, on, atol=1e-4)


# --- few-image stabilisers (not in the paper; opt-in) ---------------------------------

def test_diffaugment_ops_keep_shape_and_gradients():
    from hpatk.plugins.augment_gan.diffaugment import diff_augment, parse_policy

    torch.manual_seed(0)
    x = torch.rand(6, 4, 16, 16, requires_grad=True)
    ops = parse_policy("color,translation,cutout")
    y = diff_augment(x * 2 - 1, ops)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # differentiable, for G's step
    # cutout blanks a square of half the side: a quarter of each image (less at borders)
    ones = torch.ones(64, 1, 16, 16)
    kept = diff_augment(ones, ["cutout"]).mean(dim=(1, 2, 3))
    assert torch.all(kept >= 0.75 - 1e-6) and torch.all(kept < 1)
    # translation moves content by at most 1/8 of the side, filling with zeros
    moved = diff_augment(ones, ["translation"])
    assert torch.all(moved[:, :, 2:-2, 2:-2] == 1) and (moved == 0).any()
    with pytest.raises(ValueError, match="unknown op 'flip'"):
        parse_policy("color,flip")
    with pytest.raises(HpatkError, match="unknown op"):
        GanTrainConfig(diffaugment="colour")


def test_spectral_norm_discriminator_has_unit_norm_and_no_batchnorm():
    torch.manual_seed(0)
    d = Discriminator(channels=4, image_size=32, width=2, spectral_norm=True).train()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in d.modules())
    x = torch.randn(4, 4, 32, 32)
    for _ in range(30):  # power iterations converge while training
        d(x)
    conv = d.net[0]
    w = conv.weight.detach().flatten(1)
    assert torch.linalg.matrix_norm(w, ord=2).item() == pytest.approx(1.0, rel=0.05)


def test_stabilised_dcgan_fits_and_round_trips(synth_cache):
    reg = get_registry()
    synth = reg.synthesizers.create("gan", image_size=16, width=1, steps=3, batch_size=4,
                                    device="cpu", sample_every=0, spectral_norm=True,
                                    diffaugment="color,translation,cutout")
    images = resize_uint8(_class_images(synth_cache, 2), 16).numpy()
    synth.fit(images, np.ones((len(images), 1), np.uint8), classes=[2], seed=0)
    again = reg.synthesizers.create("gan", **synth.params)
    again.load_state_dict(synth.state_dict())
    assert np.array_equal(again.sample(2, seed=3), synth.sample(2, seed=3))


# --- the discriminator's optimiser (sgd = the paper; adam = opt-in) -------------------

def test_d_optimizer_defaults_and_validation():
    assert GanTrainConfig().d_optimizer == "sgd" and GanTrainConfig().d_lr == 0.005
    adam = GanTrainConfig(d_optimizer="adam")
    assert adam.d_lr == 2e-4 and adam.d_beta1 == 0.5
    assert GanTrainConfig(d_optimizer="adam", d_lr=1e-3).d_lr == 1e-3
    with pytest.raises(HpatkError, match="d_optimizer must be one of sgd, adam"):
        GanTrainConfig(d_optimizer="rmsprop")
    with pytest.raises(HpatkError, match="beta1"):
        GanTrainConfig(d_optimizer="adam", d_beta1=1.0)
    with pytest.raises(HpatkError, match="dcgan: d_optimizer"):
        get_registry().synthesizers.create("gan", d_optimizer="Adamw")


def test_adam_discriminator_is_built_and_resumes_exactly(synth_cache, tmp_path, monkeypatch):
    """d_optimizer=adam: D gets Adam(d_lr, (d_beta1, 0.999)) and no SGD is built; a
    resumed run matches an uninterrupted one (Adam's moments are checkpointed); a
    ``last.pt`` of the other optimiser is refused, not half-loaded."""
    images = _class_images(synth_cache, 0)
    built = []
    real_adam, real_sgd = torch.optim.Adam, torch.optim.SGD
    monkeypatch.setattr(torch.optim, "Adam",
                        lambda p, **kw: built.append(("adam", kw)) or real_adam(p, **kw))
    monkeypatch.setattr(torch.optim, "SGD",
                        lambda p, **kw: built.append(("sgd", kw)) or real_sgd(p, **kw))
    kw = dict(d_optimizer="adam", d_lr=3e-4, d_beta1=0.4)
    straight, h_straight = _run(images, 0, steps=6, **kw)
    assert [b[0] for b in built] == ["adam", "adam"]
    assert built[1][1] == {"lr": 3e-4, "betas": (0.4, 0.999)}
    _assert_resume_matches_straight(images, straight, h_straight, tmp_path, **kw)
    with pytest.raises(HpatkError, match="d_optimizer=adam, this run asks for sgd"):
        train_gan(DCGAN(channels=4, image_size=16, width=2), images,
                  _tiny_cfg(steps=8), out_dir=tmp_path, resume=True)
