"""The enhancers against their references: ``cv2.createCLAHE(...).apply`` and
``cv2.equalizeHist``, bit for bit, on the torch kernels (any device) and the OpenCV
backend, over image sizes the grid does and does not divide, square and non-square
grids, clip limits; plus the input rules (uint8, [0, 1], refused out-of-range input)."""

from __future__ import annotations

import pickle

import cv2
import numpy as np
import pytest
import torch
from hpatk.core import HpatkError, get_registry
from hpatk.plugins.enhance import AHE, CLAHE, HE, EnhanceError, NoEnhance
from hpatk.plugins.enhance.functional import (
    clahe_clip_limit,
    clahe_levels,
    equalize_clahe,
    equalize_hist,
    equalize_hist_levels,
    to_levels,
)

REG = get_registry()


def microscopy_like(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """Low-contrast fluorescence-like planes: dark background, dim smooth blobs, noise.

    Shape: uint8 (n, h, w), mostly below gray level ~60 (the paper's motivation).
    """
    rng = np.random.default_rng(seed)
    out = np.empty((n, h, w), np.uint8)
    for i in range(n):
        field = cv2.GaussianBlur(rng.gamma(1.2, 8.0, (h, w)), (0, 0), max(1.0, h / 24))
        field = field / max(field.max(), 1e-9) * rng.uniform(25, 70)
        noise = rng.normal(0, 1.5, (h, w))
        out[i] = np.clip(field + noise + rng.uniform(2, 8), 0, 255).astype(np.uint8)
    return out


def cv2_clahe(planes: np.ndarray, clip: float, grid: tuple[int, int]) -> np.ndarray:
    return np.stack([cv2.createCLAHE(clip, grid).apply(p) for p in planes])


def cv2_he(planes: np.ndarray) -> np.ndarray:
    return np.stack([cv2.equalizeHist(p) for p in planes])


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


# sizes: divisible, neither axis divisible, only one axis divisible (OpenCV then pads the
# divisible axis by a whole tile too), tiny
SIZES = [(64, 64), (61, 67), (64, 60), (48, 53), (9, 13)]
GRIDS = [(8, 8), (4, 8), (8, 4), (3, 5), (1, 1)]
CLIPS = [0.0, 1.0, 2.0, 4.0, 40.0]


class TestEqualizeClahe:
    def test_smoke(self, device, dtype):
        x = torch.rand(2, 4, 32, 32, device=device, dtype=dtype)
        y = equalize_clahe(x, 2.0, (8, 8))
        assert y.shape == x.shape and y.dtype == dtype and y.device == x.device
        assert float(y.min()) >= 0 and float(y.max()) <= 1
        # quantised to the 256 levels OpenCV works on
        levels = y * 255
        assert torch.allclose(levels, levels.round(), atol=1e-3)

    @pytest.mark.parametrize("shape", [(16, 24), (3, 16, 24), (2, 3, 16, 24), (2, 1, 2, 16, 24)])
    def test_cardinality(self, device, shape):
        x = torch.randint(0, 256, shape, dtype=torch.uint8, device=device)
        y = equalize_clahe(x, 2.0, (4, 4))
        assert y.shape == x.shape and y.dtype == torch.uint8
        flat = x.reshape(-1, 16, 24).cpu().numpy()
        assert np.array_equal(y.reshape(-1, 16, 24).cpu().numpy(), cv2_clahe(flat, 2.0, (4, 4)))

    def test_exception(self):
        with pytest.raises(EnhanceError, match=r"in \[0, 1\]"):
            equalize_clahe(torch.rand(1, 1, 8, 8) * 255)
        with pytest.raises(EnhanceError, match=r"in \[0, 1\]"):
            equalize_clahe(torch.full((1, 1, 8, 8), -0.1))
        with pytest.raises(EnhanceError, match="nan"):
            equalize_clahe(torch.full((1, 1, 8, 8), float("nan")))
        with pytest.raises(EnhanceError, match="dtype"):
            equalize_clahe(torch.zeros(1, 1, 8, 8, dtype=torch.int16))
        with pytest.raises(EnhanceError, match="shape"):
            equalize_clahe(torch.zeros(8))
        with pytest.raises(EnhanceError, match="torch.Tensor"):
            equalize_clahe(np.zeros((8, 8), np.float32))  # type: ignore[arg-type]
        with pytest.raises(EnhanceError, match="clip_limit"):
            equalize_clahe(torch.rand(1, 1, 8, 8), clip_limit=-1)
        with pytest.raises(EnhanceError, match="grid_size"):
            equalize_clahe(torch.rand(1, 1, 8, 8), grid_size=(0, 8))
        # one error type for users and for Python callers
        assert issubclass(EnhanceError, HpatkError) and issubclass(EnhanceError, ValueError)

    @pytest.mark.parametrize("size", SIZES)
    @pytest.mark.parametrize("grid", GRIDS)
    def test_matches_opencv(self, device, size, grid):
        planes = np.concatenate([microscopy_like(3, *size, seed=sum(size)),
                                 np.random.default_rng(1).integers(0, 256, (1, *size),
                                                                   dtype=np.uint8)])
        x = torch.from_numpy(planes).to(device)
        for clip in CLIPS:
            ours = clahe_levels(x, clip, grid).cpu().numpy()
            ref = cv2_clahe(planes, clip, grid)
            assert mean_abs_diff(ours, ref) < 0.25  # the contract
            assert np.array_equal(ours, ref), (size, grid, clip, mean_abs_diff(ours, ref))

    def test_float_input_is_quantised_like_opencv_sees_it(self, device, dtype):
        planes = microscopy_like(4, 40, 56, seed=3)
        x = torch.from_numpy(planes).to(device=device, dtype=dtype) / 255
        y = equalize_clahe(x.view(1, 4, 40, 56), 2.0, (4, 8))
        ref = torch.from_numpy(cv2_clahe(planes, 2.0, (4, 8))).to(device=device, dtype=dtype)
        assert torch.equal(y[0], ref / 255)

    @pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
    def test_half_precision_levels_survive(self, device, half):
        levels = torch.arange(256, dtype=torch.uint8, device=device).view(16, 16)
        x = (levels.double() / 255).to(half)
        assert torch.equal(to_levels(x), levels)
        y = equalize_clahe(x[None], 2.0, (2, 2))
        assert y.dtype == half and torch.equal(to_levels(y[0]), clahe_levels(levels, 2.0, (2, 2)))

    def test_planes_are_independent(self, device):
        planes = torch.from_numpy(microscopy_like(5, 32, 32, seed=4)).to(device)
        batched = clahe_levels(planes, 2.0, (4, 4))
        for i in range(5):
            assert torch.equal(batched[i], clahe_levels(planes[i:i + 1], 2.0, (4, 4))[0])

    def test_chunked_batches(self, device, monkeypatch):
        """Large batches are processed in chunks of planes: same bytes as OpenCV."""
        from hpatk.plugins.enhance import functional

        monkeypatch.setattr(functional, "_CHUNK_PIXELS", {device.type: 3 * 61 * 67})
        monkeypatch.setattr(functional, "_CHUNK_PIXELS_DEFAULT", 3 * 61 * 67)
        planes = microscopy_like(8, 61, 67, seed=15)
        x = torch.from_numpy(planes).to(device)
        assert np.array_equal(clahe_levels(x, 2.0, (4, 8)).cpu().numpy(),
                              cv2_clahe(planes, 2.0, (4, 8)))
        assert np.array_equal(equalize_hist_levels(x).cpu().numpy(), cv2_he(planes))

    def test_empty_batch(self, device):
        x = torch.zeros(0, 4, 16, 16, device=device)
        assert equalize_clahe(x).shape == x.shape

    def test_clip_limit_is_opencvs_integer_limit(self):
        # max(1, int(clipLimit * tileArea / 256)); 0 disables clipping
        assert clahe_clip_limit(2.0, 64 * 64) == 32
        assert clahe_clip_limit(2.0, 8 * 8) == 1
        assert clahe_clip_limit(2.5, 7 * 9) == 1
        assert clahe_clip_limit(3.0, 100 * 100) == int(3.0 * 10000 / 256)
        assert clahe_clip_limit(0.0, 4096) == 0

    def test_redistribution_residual_step(self, device):
        """A histogram with every pixel in one bin: clipped excess spread as OpenCV does
        (``redistBatch`` to every bin, the residual one per ``256 // residual`` bins)."""
        for value, h, w, clip in [(10, 32, 32, 2.0), (200, 48, 40, 1.5), (0, 16, 16, 4.0)]:
            plane = np.full((1, h, w), value, np.uint8)
            plane[0, ::3, ::5] = value // 2 + 3  # a second bin
            ours = clahe_levels(torch.from_numpy(plane).to(device), clip, (2, 2))
            assert np.array_equal(ours.cpu().numpy(), cv2_clahe(plane, clip, (2, 2)))


class TestEqualizeHist:
    def test_smoke(self, device, dtype):
        x = torch.rand(2, 3, 20, 24, device=device, dtype=dtype)
        y = equalize_hist(x)
        assert y.shape == x.shape and y.dtype == dtype and y.device == x.device

    def test_matches_opencv(self, device):
        planes = np.concatenate([
            microscopy_like(4, 61, 67, seed=5),
            np.full((1, 61, 67), 17, np.uint8),  # constant: returned unchanged
            np.where(np.random.default_rng(0).random((1, 61, 67)) < 0.3, 3, 250
                     ).astype(np.uint8),  # two levels
            np.random.default_rng(2).integers(0, 256, (1, 61, 67), dtype=np.uint8),
        ])
        ours = equalize_hist_levels(torch.from_numpy(planes).to(device)).cpu().numpy()
        assert np.array_equal(ours, cv2_he(planes))

    def test_exception(self):
        with pytest.raises(EnhanceError):
            equalize_hist(torch.rand(1, 1, 4, 4) + 1)


class TestEnhancers:
    def test_registered(self):
        names = REG.enhancers.names()
        for name in ("none", "he", "ahe", "clahe"):
            assert name in names
        assert isinstance(REG.enhancers.create("clahe"), CLAHE)
        assert isinstance(REG.enhancers.create("ahe"), AHE)
        assert isinstance(REG.enhancers.create("he"), HE)
        assert isinstance(REG.enhancers.create("identity"), NoEnhance)

    @pytest.mark.parametrize("name", ["none", "he", "ahe", "clahe"])
    def test_config_round_trip(self, name):
        enh = REG.enhancers.create(name, device="cpu", threads=1)
        cfg = enh.config()
        assert cfg["name"] == name and "device" not in cfg and "threads" not in cfg
        # configs travel through YAML/JSON, where tuples become lists
        params = {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()
                  if k != "name"}
        again = REG.enhancers.create(name, **params)
        assert again.config() == cfg
        # spawn-started DataLoader workers receive enhancers pickled
        assert pickle.loads(pickle.dumps(enh)).config() == cfg
        img = microscopy_like(4, 32, 40, seed=6)
        assert np.array_equal(again.apply_uint8(img), enh.apply_uint8(img))

    def test_config_values(self):
        assert REG.enhancers.create("clahe", clip_limit=3, grid_size=[4, 8]).config() == {
            "name": "clahe", "clip_limit": 3.0, "grid_size": (4, 8)}
        assert REG.enhancers.create("ahe", grid_size=6).config() == {
            "name": "ahe", "grid_size": (6, 6)}
        assert REG.enhancers.create("he").config() == {"name": "he"}

    @pytest.mark.parametrize("clip,grid", [(2.0, (8, 8)), (3.0, (4, 8)), (1.0, (5, 3))])
    def test_clahe_apply_uint8_matches_opencv(self, clip, grid):
        img = microscopy_like(4, 67, 53, seed=7)
        enh = REG.enhancers.create("clahe", clip_limit=clip, grid_size=grid)
        out = enh.apply_uint8(img)
        assert out.dtype == np.uint8 and out.shape == img.shape
        assert np.array_equal(out, cv2_clahe(img, clip, grid))
        assert np.array_equal(enh.apply_uint8(img[0]), out[0])  # a single (H, W) plane

    def test_ahe_is_opencv_clahe_with_clip_limit_zero(self):
        img = microscopy_like(4, 64, 60, seed=8)
        out = REG.enhancers.create("ahe", grid_size=(4, 8)).apply_uint8(img)
        assert np.array_equal(out, cv2_clahe(img, 0.0, (4, 8)))
        assert not np.array_equal(out, cv2_clahe(img, 2.0, (4, 8)))

    def test_he_apply_uint8_matches_opencv(self):
        img = microscopy_like(4, 45, 50, seed=9)
        assert np.array_equal(REG.enhancers.create("he").apply_uint8(img), cv2_he(img))

    @pytest.mark.parametrize("name", ["he", "ahe", "clahe"])
    def test_forward_matches_opencv(self, device, dtype, name):
        """``enh(x)`` on any device (OpenCV on the CPU, torch on a GPU) equals OpenCV."""
        img = microscopy_like(8, 40, 44, seed=10)
        enh = REG.enhancers.create(name)
        ref = torch.from_numpy(enh.apply_uint8(img)).to(device)
        x = torch.from_numpy(img).to(device).view(2, 4, 40, 44)
        y = enh(x.to(dtype) / 255)
        assert y.shape == x.shape and y.dtype == dtype and y.device == x.device
        assert torch.equal((y * 255).round().to(torch.uint8).view(8, 40, 44), ref)
        y8 = enh(x)  # uint8 in, uint8 out
        assert y8.dtype == torch.uint8 and torch.equal(y8.view(8, 40, 44), ref)

    @pytest.mark.parametrize("name", ["he", "ahe", "clahe"])
    def test_backends_agree(self, name):
        """The OpenCV backend and the torch kernels (here on the CPU) give the same bytes."""
        img = microscopy_like(8, 52, 47, seed=11)
        x = torch.from_numpy(img).view(2, 4, 52, 47)
        opencv = REG.enhancers.create(name, device="cpu")
        torch_path = REG.enhancers.create(name)._torch(x)
        assert torch.equal(opencv(x), torch_path)

    @pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
    @pytest.mark.parametrize("name", ["he", "ahe", "clahe"])
    def test_device_cuda(self, name):
        img = microscopy_like(8, 64, 60, seed=12)
        gpu = REG.enhancers.create(name, device="cuda")
        cpu = REG.enhancers.create(name, device="cpu")
        assert np.array_equal(gpu.apply_uint8(img), cpu.apply_uint8(img))
        x = torch.from_numpy(img).view(2, 4, 64, 60).float() / 255
        assert torch.equal(gpu(x), cpu(x)) and gpu(x).device.type == "cpu"
        assert gpu(x.cuda()).device.type == "cuda"

    @pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
    def test_device_cuda_without_cuda_is_one_clear_error(self):
        enh = REG.enhancers.create("clahe", device="cuda")
        with pytest.raises(EnhanceError, match="CUDA is not available"):
            enh(torch.rand(1, 1, 16, 16))

    @pytest.mark.parametrize("name", ["none", "he", "ahe", "clahe"])
    def test_exception(self, name):
        enh = REG.enhancers.create(name)
        with pytest.raises(EnhanceError, match=r"in \[0, 1\]"):
            enh(torch.rand(1, 4, 16, 16) * 255)  # 0..255 floats are refused, not clamped
        with pytest.raises(EnhanceError, match="uint8"):
            enh.apply_uint8(np.zeros((4, 16, 16), np.float32))
        with pytest.raises(EnhanceError, match="shape"):
            enh.apply_uint8(np.zeros((1, 4, 16, 16), np.uint8))

    def test_bad_parameters(self):
        for params, match in [({"clip_limit": -1}, "clip_limit"),
                              ({"clip_limit": "lots"}, "clip_limit"),
                              ({"grid_size": (8, 0)}, "grid_size"),
                              ({"grid_size": "88"}, "grid_size"),
                              ({"device": "tpu"}, "device"),
                              ({"threads": 0}, "threads")]:
            with pytest.raises(EnhanceError, match=match):
                REG.enhancers.create("clahe", **params)
        with pytest.raises(TypeError):
            REG.enhancers.create("ahe", clip_limit=2.0)  # AHE has no clip limit

    def test_none_is_the_identity(self, device):
        x = torch.rand(2, 4, 16, 16, device=device)
        assert REG.enhancers.create("none")(x) is x
        img = microscopy_like(4, 16, 16)
        assert np.array_equal(REG.enhancers.create("none").apply_uint8(img), img)

    def test_threads_do_not_change_results(self):
        img = microscopy_like(12, 40, 40, seed=13)
        one = CLAHE(threads=1).apply_uint8(img)
        assert np.array_equal(CLAHE(threads=3).apply_uint8(img), one)
        assert np.array_equal(one, cv2_clahe(img, 2.0, (8, 8)))


def test_matches_opencv_on_synthetic_data(synth_data):
    """The acceptance check on the project's synthetic microscopy: mean |diff| < 0.25
    gray level per image (and in fact 0), torch kernels and the plugin alike."""
    from hpatk.core.data import load_stains, read_kaggle

    refs = read_kaggle(synth_data)[:12]
    images = np.stack([load_stains(r) for r in refs])
    flat = images.reshape(-1, *images.shape[-2:])
    for clip, grid in [(2.0, (8, 8)), (4.0, (4, 8)), (1.0, (3, 5))]:
        ref = cv2_clahe(flat, clip, grid)
        ours = clahe_levels(torch.from_numpy(images), clip, grid).numpy().reshape(ref.shape)
        assert mean_abs_diff(ours, ref) < 0.25 and np.array_equal(ours, ref)
        enh = REG.enhancers.create("clahe", clip_limit=clip, grid_size=grid)
        plugin = np.stack([enh.apply_uint8(im) for im in images]).reshape(ref.shape)
        assert np.array_equal(plugin, ref)
    he = equalize_hist_levels(torch.from_numpy(flat)).numpy()
    assert np.array_equal(he, cv2_he(flat))


def _apply_in_child(enh, img, queue):  # pragma: no cover - runs in a forked child
    queue.put(enh.apply_uint8(img))


def test_fork_after_use_does_not_hang():
    """The OpenCV backend's thread pool is rebuilt in a forked child (DataLoader workers):
    reusing the parent's dead pool would hang forever."""
    import multiprocessing

    img = microscopy_like(4, 32, 32, seed=14)
    enh = CLAHE(threads=2)
    expected = enh.apply_uint8(img)  # the parent's pool now exists
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_apply_in_child, args=(enh, img, queue))
    child.start()
    try:
        out = queue.get(timeout=60)
    finally:
        child.join(10)
        if child.is_alive():
            child.kill()
    assert np.array_equal(out, expected)


def test_cpu_apply_uint8_does_not_import_torch():
    """Cache-build workers call apply_uint8 only; importing torch there costs seconds."""
    import subprocess
    import sys

    code = ("import sys, numpy as np\n"
            "from hpatk.core import get_registry\n"
            "for name in ('clahe', 'ahe', 'he', 'none'):\n"
            "    enh = get_registry().enhancers.create(name)\n"
            "    enh.apply_uint8(np.zeros((4, 32, 32), np.uint8))\n"
            "print('torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
