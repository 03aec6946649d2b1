"""The enhancement quality report: its numbers against scikit-image, its files, its CLI."""

from __future__ import annotations

import csv
import math

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hpatk.cli.main import cli
from hpatk.core.enhance_report import (
    EnhanceComparison,
    compare_enhancers,
    image_metrics,
    mean_sd,
    ssim,
    ssim_cpu,
    write_report,
)
from hpatk.core.errors import HpatkError
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity


def sk_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """scikit-image's SSIM with the settings of Wang et al. (what the report uses)."""
    return structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False, data_range=255, channel_axis=0)


def pair(shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = cv2.GaussianBlur(rng.integers(0, 90, shape[-2:]).astype(np.float32), (0, 0), 2)
    a = np.stack([np.clip(a * (i + 1) + rng.normal(0, 3, a.shape), 0, 255)
                  for i in range(shape[0])]).astype(np.uint8)
    b = np.clip(a.astype(np.int16) * 2 - 10 + rng.integers(-20, 20, a.shape), 0, 255)
    return a, b.astype(np.uint8)


def test_ssim_refuses_unequal_shapes_and_images_below_its_window():
    for f, zeros in ((ssim, torch.zeros), (ssim_cpu, np.zeros)):
        with pytest.raises(HpatkError, match=r"two \(N, H, W\) \w+ of one shape, got "
                                             r"\(2, 16, 16\) and \(2, 16, 17\)"):
            f(zeros((2, 16, 16)), zeros((2, 16, 17)))
        with pytest.raises(HpatkError, match="at least 11x11 pixels, got 8x10"):
            f(zeros((1, 10, 8)), zeros((1, 10, 8)))


class TestMetrics:
    @pytest.mark.parametrize("shape", [(4, 64, 64), (1, 23, 41), (3, 11, 30)])
    def test_ssim_matches_skimage(self, device, shape):
        a, b = pair(shape, seed=shape[1])
        x = torch.from_numpy(a).to(device, torch.float64)
        y = torch.from_numpy(b).to(device, torch.float64)
        per_plane = ssim(x, y).cpu().numpy()  # torch + kornia, any device
        expected = [sk_ssim(a[i:i + 1], b[i:i + 1]) for i in range(shape[0])]
        np.testing.assert_allclose(per_plane, expected, rtol=0, atol=1e-10)
        assert abs(float(ssim(x, x).mean()) - 1.0) < 1e-12
        np.testing.assert_allclose(ssim_cpu(a, b), expected, rtol=0, atol=1e-10)  # OpenCV

    def test_image_metrics_on_a_torch_device(self, device):
        a, b = pair((4, 40, 36), seed=4)
        on_device = image_metrics(a, b, device=str(device) if device.type != "cpu" else "cpu")
        via_torch = float(ssim(torch.from_numpy(a).double(), torch.from_numpy(b).double()).mean())
        assert on_device["ssim"] == pytest.approx(via_torch, abs=1e-12)

    def test_image_metrics_match_skimage(self):
        a, b = pair((4, 48, 56), seed=1)
        got = image_metrics(a, b)
        assert got["mse"] == pytest.approx(mean_squared_error(a, b), rel=1e-12)
        assert got["psnr"] == pytest.approx(peak_signal_noise_ratio(a, b, data_range=255),
                                             rel=1e-12)
        assert got["ssim"] == pytest.approx(sk_ssim(a, b), abs=1e-10)

    def test_identical_images(self):
        a, _ = pair((2, 32, 32), seed=2)
        got = image_metrics(a, a.copy())
        assert got["mse"] == 0 and got["psnr"] == math.inf and got["ssim"] == pytest.approx(1)

    def test_exception(self):
        a, b = pair((2, 32, 32), seed=3)
        with pytest.raises(HpatkError, match="same shape|one shape"):
            image_metrics(a, b[:, :16])
        with pytest.raises(HpatkError, match="at least 11"):
            image_metrics(a[:, :8, :8], b[:, :8, :8])

    def test_mean_sd_is_the_sample_sd(self):
        values = [0.5, 0.7, 0.9, 0.2]
        mean, sd = mean_sd(values)
        assert mean == pytest.approx(np.mean(values))
        assert sd == pytest.approx(np.std(values, ddof=1))
        assert mean_sd([3.0]) == (3.0, 0.0)


def test_compare_numbers_match_skimage(synth_data):
    """Every per-image number equals scikit-image's on the OpenCV-enhanced image, and the
    table is their mean and sample sd."""
    from hpatk.core.data import load_stains, read_kaggle

    result = compare_enhancers(synth_data, ["he", "ahe", "clahe", "none"], n=5, seed=1,
                               params={"clahe": {"clip_limit": 3.0}}, show=2)
    assert len(result.rows) == 5 * 4 and len(result.examples) == 2
    refs = {r.id: r for r in read_kaggle(synth_data)}
    ops = {"he": cv2.equalizeHist, "ahe": cv2.createCLAHE(0.0, (8, 8)).apply,
           "clahe": cv2.createCLAHE(3.0, (8, 8)).apply, "none": lambda p: p}
    for row in result.rows:
        original = load_stains(refs[row["id"]])
        enhanced = np.stack([ops[row["method"]](p) for p in original])
        assert row["mse"] == pytest.approx(mean_squared_error(original, enhanced), rel=1e-12)
        if row["method"] == "none":
            assert row["psnr"] == math.inf and row["ssim"] == pytest.approx(1.0)
            continue
        assert row["psnr"] == pytest.approx(
            peak_signal_noise_ratio(original, enhanced, data_range=255), rel=1e-12)
        assert row["ssim"] == pytest.approx(sk_ssim(original, enhanced), abs=1e-10)
    for summary in result.summary():
        ssims = [r["ssim"] for r in result.rows if r["method"] == summary["method"]]
        assert summary["n"] == 5
        assert summary["ssim_mean"] == pytest.approx(np.mean(ssims))
        assert summary["ssim_sd"] == pytest.approx(np.std(ssims, ddof=1))
    by_method = {s["method"]: s for s in result.summary()}
    # the paper's finding, on low-contrast microscopy: CLAHE keeps the structure best
    assert by_method["clahe"]["ssim_mean"] > by_method["he"]["ssim_mean"]
    assert by_method["clahe"]["ssim_mean"] > by_method["ahe"]["ssim_mean"]


def test_compare_at_a_smaller_size(synth_data):
    """--size compares what the classifier sees: enhanced at the original size, resized."""
    from hpatk.core.data import load_stains, read_kaggle

    result = compare_enhancers(synth_data, ["clahe"], n=2, size=32, show=1)
    ref = {r.id: r for r in read_kaggle(synth_data)}[result.rows[0]["id"]]
    image = load_stains(ref)

    def resize(planes: np.ndarray) -> np.ndarray:
        return np.stack([cv2.resize(p, (32, 32), interpolation=cv2.INTER_AREA) for p in planes])

    original = resize(image)
    enhanced = resize(np.stack([cv2.createCLAHE(2.0, (8, 8)).apply(p) for p in image]))
    assert result.examples[0][1]["original"].shape == (4, 32, 32)
    assert np.array_equal(result.examples[0][1]["clahe"], enhanced)
    assert result.rows[0]["ssim"] == pytest.approx(sk_ssim(original, enhanced), abs=1e-10)


def test_compare_exceptions(synth_data):
    with pytest.raises(HpatkError, match="unknown enhancer 'clahx'"):
        compare_enhancers(synth_data, ["clahx"], n=1)
    with pytest.raises(HpatkError, match="not in --methods"):
        compare_enhancers(synth_data, ["he"], n=1, params={"clahe": {"clip_limit": 1}})
    with pytest.raises(HpatkError, match="enhancer 'clahe': clip_limit"):
        compare_enhancers(synth_data, ["clahe"], n=1, params={"clahe": {"clip_limit": -2}})


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_compare_device_cuda_without_cuda(synth_data):
    with pytest.raises(HpatkError, match="CUDA is not available"):
        compare_enhancers(synth_data, ["clahe"], n=1, device="cuda")


def test_write_report_files(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (4, 24, 24), dtype=np.uint8)
    result = EnhanceComparison(methods=["a", "b"], configs={"a": {"name": "a"},
                               "b": {"name": "b", "grid_size": (4, 8)}},
                               stains=("green", "red", "blue", "yellow"),
                               settings={"data_dir": "d", "n": 2, "size": None, "seed": 0})
    for i, (mse, ssim_value) in enumerate([(1.0, 0.5), (3.0, 0.7)]):
        for m in ("a", "b"):
            result.rows.append({"id": f"id{i}", "method": m, "mse": mse,
                                "psnr": 10 * math.log10(255**2 / mse), "ssim": ssim_value})
    result.examples.append(("id0", {"original": img, "a": img, "b": 255 - img}))
    paths = write_report(result, tmp_path / "rep")
    rows = list(csv.DictReader(open(paths["csv"])))
    assert [r["method"] for r in rows] == ["a", "b"]
    assert float(rows[0]["mse_mean"]) == 2.0
    assert float(rows[0]["mse_sd"]) == pytest.approx(np.std([1.0, 3.0], ddof=1))
    assert rows[1]["config"] == "name=b;grid_size=4x8"
    assert len(list(csv.DictReader(open(paths["per_image"])))) == 4
    md = paths["markdown"].read_text()
    assert "| a | - | 2 | 2.0 ± 1.4 |" in md and "grid.png" in md
    png = cv2.imread(str(paths["grid"]))
    assert png is not None and png.shape[0] > 100 and png.shape[1] > 200
    assert not [p for p in (tmp_path / "rep").iterdir() if p.name.startswith(".")]


def test_cli_writes_table_and_picture(synth_data, tmp_path):
    out = tmp_path / "report"
    res = CliRunner().invoke(cli, ["enhance", "compare", str(synth_data), "--methods",
                                   "he,ahe,clahe", "--n", "4", "--show", "2", "-p",
                                   "clahe.grid_size=[4, 8]", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "| clahe | clip_limit=2.0, grid_size=4x8 | 4 |" in res.output
    for name in ("metrics.csv", "metrics.md", "per_image.csv", "grid.png"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [r["method"] for r in rows] == ["he", "ahe", "clahe"]
    assert all(0 < float(r["ssim_mean"]) < 1 for r in rows)
    grid = cv2.imread(str(out / "grid.png"))
    assert grid is not None and grid.shape[1] > grid.shape[0]  # 2 rows x 4 columns


def test_cli_errors(synth_data, tmp_path):
    runner = CliRunner()
    res = runner.invoke(cli, ["enhance", "compare", str(synth_data), "--methods", "he,nope",
                              "--out", str(tmp_path / "x")])
    assert res.exit_code == 1 and "Error: unknown enhancer 'nope'" in res.output
    assert "Traceback" not in res.output
    res = runner.invoke(cli, ["enhance", "compare", str(synth_data), "-p", "clip_limit=3",
                              "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "METHOD.KEY=VALUE" in res.output
    assert not (tmp_path / "x").exists()
