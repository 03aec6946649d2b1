"""The classic augmentation: every op with p = 1 does what it says (torch / kornia
references), p = 0 is the identity, randomness is per sample and follows torch's seed."""

from __future__ import annotations

import kornia
import pytest
import torch
from hpatk.core import HpatkError, get_registry

REG = get_registry()
OFF = dict(hflip=0, vflip=0, crop=0, scale=0, rotate=0, shear=0, sharpen=0, invert=0)


def _only(op: str, **params):
    return REG.augmentations.create("classic", **{**OFF, op: 1.0, **params})


def _images(b: int = 4, c: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, c, size, size, generator=torch.Generator().manual_seed(seed))


def test_all_off_is_identity():
    x = _images()
    assert torch.equal(REG.augmentations.create("classic", **OFF)(x), x)


def test_flips():
    x = _images()
    assert torch.equal(_only("hflip")(x), torch.flip(x, dims=(-1,)))
    assert torch.equal(_only("vflip")(x), torch.flip(x, dims=(-2,)))


def test_invert():
    x = _images()
    torch.testing.assert_close(_only("invert")(x), 1 - x)


def test_rotation_by_90_degrees_is_rot90():
    x = _images()
    y = _only("rotate", degrees=(90.0, 90.0))(x)
    torch.testing.assert_close(y, torch.rot90(x, 1, dims=(-2, -1)), atol=1e-4, rtol=0)


def test_sharpen_is_kornia_sharpness_above_one():
    x = _images()
    y = _only("sharpen", sharpness=(2.0, 2.0))(x)
    torch.testing.assert_close(y, kornia.enhance.sharpness(x, 2.0))
    # it sharpens: more local contrast than the input
    lap = torch.tensor([[0, -1, 0], [-1, 4, -1], [0, -1, 0]], dtype=x.dtype)[None]
    detail = kornia.filters.filter2d
    assert detail(y, lap).abs().mean() > detail(x, lap).abs().mean()


def _ramp(b: int = 2, size: int = 64) -> torch.Tensor:
    """Value = column index / size: a linear ramp along x."""
    return (torch.arange(size, dtype=torch.float32) / size).expand(b, 4, size, size).clone()


def test_scale_zooms_about_the_centre():
    x = _ramp()
    y = _only("scale", scale_range=(2.0, 2.0))(x)
    # zoom x2: neighbouring output pixels are half an input pixel apart
    inner = y[..., 8:56, 8:56].diff(dim=-1)
    torch.testing.assert_close(inner, torch.full_like(inner, 0.5 / 64), atol=1e-5, rtol=0)
    centre = x[..., 31:33, 31:33].mean()
    assert float(y[..., 31:33, 31:33].mean()) == pytest.approx(float(centre), abs=1e-3)


def test_crop_is_a_resized_crop():
    x = _ramp()
    y = _only("crop", crop_scale=(0.25, 0.25), crop_ratio=(1.0, 1.0))(x)
    assert y.shape == x.shape
    # a 32-pixel-wide crop stretched back to 64 pixels: the ramp's slope becomes 31/63
    slope = y.diff(dim=-1) * 64
    torch.testing.assert_close(slope, torch.full_like(slope, 31 / 63), atol=1e-4, rtol=0)
    assert float(y.min()) >= 0 and float(y.max()) <= 63 / 64


def test_shear_along_x_keeps_rows():
    rows = (torch.arange(32, dtype=torch.float32) / 32).view(1, 1, 32, 1).expand(2, 4, 32, 32)
    y = _only("shear", shear_degrees=(10.0, 10.0, 0.0, 0.0))(rows.clone())
    # an x-shear moves pixels along their row: a row-constant image is unchanged inside
    torch.testing.assert_close(y[..., 8:24, 8:24], rows[..., 8:24, 8:24])
    y = _only("shear", shear_degrees=(0.0, 0.0, 10.0, 10.0))(rows.clone())
    assert float((y - rows)[..., 8:24, 8:24].abs().max()) > 0.01


def test_randomness_is_per_sample_and_seeded():
    one = _images(b=1)
    x = one.expand(64, -1, -1, -1).clone()
    aug = _only("hflip", hflip=0.5)
    torch.manual_seed(0)
    y = aug(x)
    flipped = torch.tensor([torch.equal(img, torch.flip(one[0], dims=(-1,))) for img in y])
    kept = torch.tensor([torch.equal(img, one[0]) for img in y])
    assert bool((flipped | kept).all()) and 10 < int(flipped.sum()) < 54

    full = REG.augmentations.create("classic")
    torch.manual_seed(123)
    a = full(_images(b=8))
    torch.manual_seed(123)
    b = full(_images(b=8))
    torch.manual_seed(124)
    c = full(_images(b=8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_defaults_run_on_four_stains(device):
    x = _images(b=6, size=48).to(device)
    y = REG.augmentations.create("classic")(x)
    assert y.shape == x.shape and y.device == x.device and y.dtype == x.dtype
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    assert REG.augmentations.create("classic")(_images(b=2, c=3)).shape == (2, 3, 32, 32)


def test_config_replays():
    aug = REG.augmentations.create("classic", hflip=0.1, degrees=30, shear_degrees=(-5, 5))
    cfg = aug.config()
    assert cfg["name"] == "classic" and cfg["hflip"] == 0.1 and cfg["degrees"] == [-30.0, 30.0]
    params = {k: v for k, v in cfg.items() if k != "name"}
    assert REG.augmentations.create("classic", **params).config() == cfg


@pytest.mark.parametrize("params", [dict(hflip=1.5), dict(invert=-0.1),
                                    dict(scale_range=(1.2, 0.8)), dict(shear_degrees=(1, 2, 3)),
                                    dict(crop_scale="big")])
def test_bad_parameters(params):
    with pytest.raises(HpatkError):
        REG.augmentations.create("classic", **params)


def test_needs_float_batches():
    with pytest.raises(HpatkError, match="float"):
        REG.augmentations.create("classic")(torch.zeros(2, 4, 8, 8, dtype=torch.uint8))
