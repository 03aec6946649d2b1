"""``hpatk predict``: stain PNGs -> the model's recorded preprocessing -> ONNX Runtime ->
thresholds -> a Kaggle submission; identical to ``hpatk evaluate``'s PyTorch path."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from helpers import invoke
from hpatk.cli.main import cli
from test_onnx_export import ENHANCE, generator_ckpt, shared_export

SIZE = 32  # the model's input; the dataset's PNGs are 64 px


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A synthetic Kaggle-layout dataset: 24 train and 10 test images of 64 px."""
    from hpatk.core.synth import make_synthetic

    return make_synthetic(tmp_path_factory.mktemp("pred") / "data", n=24, size=64, seed=1,
                          n_test=10, workers=1)


@pytest.fixture
def model():
    """(checkpoint path, checkpoint dict, exported .onnx): resnet18 at 32 px, CLAHE,
    exported once per process (read-only)."""
    ckpt, res, d = shared_export(SIZE)
    return d / "ck.pt", ckpt, res.path


@pytest.fixture(scope="module")
def cache(data, tmp_path_factory):
    """The training split cached as the model expects (CLAHE, 32 px), like hpatk train."""
    from hpatk.core.cache import build_cache

    params = {k: v for k, v in ENHANCE.items() if k != "name"}
    return build_cache(data, tmp_path_factory.mktemp("cache") / "c32.h5", enhance="clahe",
                       enhance_params=params, size=SIZE, workers=1)


def _invoke(*args):
    return invoke("predict", *args, ok=False)


def _read(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def _probs_csv(path):
    rows = _read(path)
    return rows[0], [r[0] for r in rows[1:]], np.array([[float(v) for v in r[1:]]
                                                       for r in rows[1:]], np.float32)


def test_predict_writes_a_kaggle_submission(data, model, tmp_path):
    from hpatk.core.data import load_stains, read_kaggle
    from hpatk.export import OnnxClassifier

    _, ckpt, onnx_path = model
    sub, probs = tmp_path / "sub.csv", tmp_path / "probs.csv"
    r = _invoke(onnx_path, data, "--out", sub, "--probs", probs, "--provider", "cpu",
                "--batch", 4)
    assert r.exit_code == 0, r.output
    assert "ONNX Runtime providers: CPUExecutionProvider" in r.output
    assert "predicted 10 images" in r.output
    rows = _read(sub)
    assert rows[0] == ["Id", "Predicted"]
    expected_ids = [row[0] for row in _read(data / "sample_submission.csv")[1:]]
    assert [row[0] for row in rows[1:]] == expected_ids
    for _, predicted in rows[1:]:
        labels = [int(v) for v in predicted.split(" ")]  # at least one, space-separated
        assert labels == sorted(set(labels)) and all(0 <= c < 28 for c in labels)
    # the probabilities are the model's on the preprocessed PNGs, and give those labels
    header, ids, p = _probs_csv(probs)
    assert header == ["Id", *[str(c) for c in range(28)]] and ids == expected_ids
    clf = OnnxClassifier(onnx_path, provider="cpu")
    refs = read_kaggle(data, split="test")
    images = np.stack([load_stains(ref) for ref in refs])
    pred = clf.predict(images)
    np.testing.assert_allclose(p, pred.probs, atol=6e-7)
    assert [[int(v) for v in row[1].split()] for row in rows[1:]] == pred.labels
    assert 0.05 < p.mean() < 0.95 and p.std() > 0.01  # not a degenerate comparison
    assert ckpt["thresholds"] == pytest.approx(clf.thresholds.tolist())


def test_predict_equals_evaluate(data, model, cache, tmp_path):
    """ONNX on PNGs == the checkpoint in PyTorch on the training cache (hpatk evaluate's
    path), image for image: same preprocessed pixels, same probabilities, same labels."""
    from hpatk.core.cache import CacheDataset
    from hpatk.core.data import load_stains, read_kaggle
    from hpatk.core.evaluate import predict_probs
    from hpatk.core.metrics import apply_thresholds
    from hpatk.export import OnnxClassifier

    ck_path, ckpt, onnx_path = model
    ids, torch_probs = predict_probs(ck_path, cache)

    sub, probs = tmp_path / "sub.csv", tmp_path / "probs.csv"
    r = _invoke(onnx_path, data, "--split", "train", "--out", sub, "--probs", probs,
                "--provider", "cpu")
    assert r.exit_code == 0, r.output
    _, onnx_ids, onnx_probs = _probs_csv(probs)
    order = [onnx_ids.index(i) for i in ids]
    assert sorted(onnx_ids) == sorted(ids) and len(ids) == 24
    np.testing.assert_allclose(onnx_probs[order], torch_probs, rtol=1e-3, atol=1e-5)
    thresholds = np.asarray(ckpt["thresholds"])
    want = apply_thresholds(torch_probs, thresholds)
    got = {row[0]: [int(v) for v in row[1].split()] for row in _read(sub)[1:]}
    assert [got[i] for i in ids] == [np.flatnonzero(w).tolist() for w in want]

    # the reason: predict's preprocessing reproduces the cache bit for bit
    clf = OnnxClassifier(onnx_path, provider="cpu")
    ds = CacheDataset(cache)
    refs = {ref.id: ref for ref in read_kaggle(data, split="train")}
    for i in (0, 7, 23):
        cached = ds[i][0].numpy()
        assert np.array_equal(clf.preprocess(load_stains(refs[ds.ids[i]])), cached)


def test_predict_tta_equals_evaluate_tta(model, cache):
    """--tta flips: ONNX Runtime (hpatk predict/serve) and PyTorch (hpatk evaluate) average
    the same four views."""
    from hpatk.core.cache import CacheDataset
    from hpatk.core.evaluate import predict_rows
    from hpatk.export import OnnxClassifier

    _, ckpt, onnx_path = model
    torch_probs = predict_rows(ckpt, cache, None, device="cpu", tta="flips").probs
    clf = OnnxClassifier(onnx_path, provider="cpu")
    images = np.stack([CacheDataset(cache)[i][0].numpy() for i in range(len(torch_probs))])
    onnx_probs = clf.predict_probs(clf.to_float(images), tta="flips")
    np.testing.assert_allclose(onnx_probs, torch_probs, rtol=1e-3, atol=1e-5)
    plain = predict_rows(ckpt, cache, None, device="cpu").probs
    assert np.abs(plain - torch_probs).max() > 1e-4  # the flips do change the answer


def test_predict_options_ids_batch_tta(data, model, tmp_path):
    _, _, onnx_path = model
    all_ids = [row[0] for row in _read(data / "sample_submission.csv")[1:]]
    pick = all_ids[::-3]  # a subset, in another order
    ids_csv = tmp_path / "ids.csv"
    ids_csv.write_text("Id,Other\n" + "".join(f"{i},x\n" for i in pick))
    base = tmp_path / "a.csv"
    r = _invoke(onnx_path, data, "--out", tmp_path / "s1.csv", "--probs", base, "--ids",
                ids_csv, "--provider", "cpu", "--batch", 16)
    assert r.exit_code == 0, r.output
    _, ids, p1 = _probs_csv(base)
    assert ids == pick and [row[0] for row in _read(tmp_path / "s1.csv")[1:]] == pick
    r = _invoke(onnx_path, data, "--out", tmp_path / "s2.csv", "--probs", tmp_path / "b.csv",
                "--ids", ids_csv, "--provider", "cpu", "--batch", 1, "--workers", 1)
    assert r.exit_code == 0, r.output
    np.testing.assert_allclose(_probs_csv(tmp_path / "b.csv")[2], p1, atol=2e-6)
    r = _invoke(onnx_path, data, "--out", tmp_path / "s3.csv", "--probs", tmp_path / "c.csv",
                "--ids", ids_csv, "--provider", "cpu", "--tta", "flips")
    assert r.exit_code == 0, r.output
    p3 = _probs_csv(tmp_path / "c.csv")[2]
    assert p3.shape == p1.shape and not np.allclose(p3, p1, atol=1e-3)


def test_predict_plain_folder_of_pngs(data, model, tmp_path):
    """A folder of {Id}_{stain}.png without a CSV: every image, sorted by Id."""
    _, _, onnx_path = model
    folder = tmp_path / "images"
    shutil.copytree(data / "test", folder)
    r = _invoke(onnx_path, folder, "--out", tmp_path / "s.csv", "--provider", "cpu")
    assert r.exit_code == 0, r.output
    ids = [row[0] for row in _read(tmp_path / "s.csv")[1:]]
    expected = sorted(row[0] for row in _read(data / "sample_submission.csv")[1:])
    assert ids == expected


# -- errors: one line, exit 1, nothing written -------------------------------------------


def _fails(result, message, *paths):
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: ") or "\nError: " in result.output
    error = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(error) == 1 and message in error[0], result.output
    for p in paths:
        assert not p.exists(), p


def test_predict_missing_or_corrupt_image(data, model, tmp_path):
    _, _, onnx_path = model
    broken = tmp_path / "data"
    shutil.copytree(data, broken)
    victim = next((broken / "test").glob("*_yellow.png"))
    victim.unlink()
    sub, probs = tmp_path / "s.csv", tmp_path / "p.csv"
    _fails(_invoke(onnx_path, broken, "--out", sub, "--probs", probs, "--provider", "cpu"),
           victim.name, sub, probs)
    victim.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)  # a corrupt PNG, found mid-run
    _fails(_invoke(onnx_path, broken, "--out", sub, "--probs", probs, "--provider", "cpu",
                   "--batch", 2), victim.name, sub, probs)


def test_predict_bad_model_files(data, model, tmp_path):
    _, _, onnx_path = model
    sub = tmp_path / "s.csv"
    truncated = tmp_path / "t.onnx"
    truncated.write_bytes(onnx_path.read_bytes()[:5000])
    _fails(_invoke(truncated, data, "--out", sub), "not a readable ONNX file", sub)
    _fails(_invoke(tmp_path / "nope.onnx", data, "--out", sub), "does not exist", sub)
    generator_ckpt(tmp_path / "g.pt")
    from hpatk.export import export_checkpoint

    export_checkpoint(tmp_path / "g.pt", tmp_path / "g.onnx")
    _fails(_invoke(tmp_path / "g.onnx", data, "--out", sub),
           "is a generator model, not a classifier", sub)


def test_predict_bad_options(data, model, tmp_path):
    _, _, onnx_path = model
    sub = tmp_path / "s.csv"
    bad_ids = tmp_path / "ids.csv"
    bad_ids.write_text("Name\nabc\n")
    _fails(_invoke(onnx_path, data, "--out", sub, "--ids", bad_ids), "no 'Id' column", sub)
    bad_ids.write_text("Id\n../../etc/passwd\n")
    _fails(_invoke(onnx_path, data, "--out", sub, "--ids", bad_ids), "invalid Id", sub)
    _fails(_invoke(onnx_path, data, "--out", onnx_path), "same file as MODEL")
    assert onnx_path.stat().st_size > 1000
    _fails(_invoke(onnx_path, tmp_path / "missing", "--out", sub), "is not a folder", sub)
    sub.write_text("previous")
    _fails(_invoke(onnx_path, data, "--out", sub, "--probs", sub), "same file as --out")
    assert sub.read_text() == "previous"
    r = _invoke(onnx_path, data, "--out", tmp_path / "x.csv", "--provider", "npu")
    assert r.exit_code == 2  # a usage error


def _cuda_loads() -> bool:
    return torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.mark.skipif(_cuda_loads(), reason="CUDA loads here: no fallback to observe")
def test_predict_strict_refuses_cpu_fallback(data, model, tmp_path):
    _, _, onnx_path = model
    sub = tmp_path / "s.csv"
    _fails(_invoke(onnx_path, data, "--out", sub, "--provider", "cuda", "--strict"),
           "--strict: CUDAExecutionProvider requested but not loaded", sub)
    r = _invoke(onnx_path, data, "--out", sub, "--provider", "cuda")
    assert r.exit_code == 0 and sub.is_file()
    assert "warning: CUDAExecutionProvider requested (--provider cuda) but not loaded" in r.output
    assert "ONNX Runtime providers: CPUExecutionProvider" in r.output


@pytest.mark.slow
def test_trained_model_end_to_end(data, cache, tmp_path):
    """hpatk train -> hpatk export (parity) -> hpatk predict: a correct Kaggle submission
    on the CPU provider, and the ONNX probabilities equal hpatk evaluate's PyTorch ones."""
    from hpatk.core.evaluate import predict_probs

    run = tmp_path / "run"
    r = CliRunner().invoke(cli, ["train", "--data", str(cache), "--backbone", "resnet18",
                                 "--epochs", "1", "--size", str(SIZE), "--aug", "none",
                                 "--batch-size", "8", "--out", str(run)])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["export", str(run / "best_macro_f1.pt"), "--out",
                                 str(tmp_path / "m.onnx")])
    assert r.exit_code == 0, r.output
    assert "parity vs PyTorch" in r.output
    sub = tmp_path / "sub.csv"
    r = _invoke(tmp_path / "m.onnx", data, "--out", sub, "--provider", "cpu")
    assert r.exit_code == 0, r.output
    assert "ONNX Runtime providers: CPUExecutionProvider" in r.output
    rows = _read(sub)
    assert rows[0] == ["Id", "Predicted"]
    assert [row[0] for row in rows[1:]] == [row[0] for row in
                                           _read(data / "sample_submission.csv")[1:]]
    assert all(row[1] and all(0 <= int(c) < 28 for c in row[1].split()) for row in rows[1:])

    r = _invoke(tmp_path / "m.onnx", data, "--split", "train", "--out", tmp_path / "t.csv",
                "--probs", tmp_path / "p.csv", "--provider", "cpu")
    assert r.exit_code == 0, r.output
    ids, torch_probs = predict_probs(run / "best_macro_f1.pt", cache)
    _, onnx_ids, onnx_probs = _probs_csv(tmp_path / "p.csv")
    np.testing.assert_allclose(onnx_probs[[onnx_ids.index(i) for i in ids]], torch_probs,
                               rtol=1e-3, atol=1e-5)


def test_export_int8(data, model, tmp_path):
    """--quantize int8: QDQ integer convolutions calibrated on real images, close to the
    float model, and served by the same predict path."""
    import onnx
    from hpatk.export import OnnxClassifier, export_checkpoint, read_metadata

    ck_path, _, float_path = model
    res = export_checkpoint(ck_path, tmp_path / "q.onnx", quantize="int8", calibration=data,
                            calibration_n=8)
    assert res.parity and res.max_abs_error < 1e-4  # the float model was verified first
    q = read_metadata(res.path)["quantization"]
    assert q["calibration_images"] == 8 and q["calibration_source"] == data.name
    assert q["label_agreement"] > 0.9 and q == res.quantization
    ops = {n.op_type for n in onnx.load(str(res.path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    assert res.path.stat().st_size < 0.35 * float_path.stat().st_size  # int8 weights
    x = np.random.default_rng(0).integers(0, 60, (3, 4, 64, 64), dtype=np.uint8)
    p8 = OnnxClassifier(res.path, provider="cpu").predict_probs(x)
    p32 = OnnxClassifier(float_path, provider="cpu").predict_probs(x)
    assert np.abs(p8 - p32).max() < 0.2 and not np.array_equal(p8, p32)
    r = _invoke(res.path, data, "--out", tmp_path / "s.csv", "--provider", "cpu")
    assert r.exit_code == 0, r.output


def test_export_int8_options(data, model, cache, tmp_path):
    from hpatk.core.cache import build_cache
    from hpatk.core.errors import HpatkError
    from hpatk.export import export_checkpoint

    ck_path, _, _ = model
    out = tmp_path / "q.onnx"
    with pytest.raises(HpatkError, match="needs --calibration"):
        export_checkpoint(ck_path, out, quantize="int8")
    with pytest.raises(HpatkError, match="only used with --quantize"):
        export_checkpoint(ck_path, out, calibration=data)
    generator_ckpt(tmp_path / "g.pt")
    with pytest.raises(HpatkError, match="applies to classifiers"):
        export_checkpoint(tmp_path / "g.pt", out, quantize="int8", calibration=data)
    params = {k: v for k, v in ENHANCE.items() if k != "name"}
    wrong = build_cache(data, tmp_path / "c48.h5", enhance="clahe", enhance_params=params,
                        size=48, workers=1)
    with pytest.raises(HpatkError, match="holds 48 px"):
        export_checkpoint(ck_path, out, quantize="int8", calibration=wrong)
    assert not out.exists()
    res = export_checkpoint(ck_path, out, quantize="int8", calibration=cache,
                            calibration_n=5, verify=False)
    assert res.quantization["calibration_images"] == 5 and out.is_file()


def test_trained_generator_exports(cache, tmp_path):
    """hpatk gan train -> hpatk export: the generator the GAN command writes exports and
    matches PyTorch."""
    from hpatk.export import OnnxGenerator, read_metadata

    r = CliRunner().invoke(cli, ["gan", "train", "--data", str(cache), "--class", "0",
                                 "--size", "16", "--param", "width=2", "--steps", "3",
                                 "--batch-size", "4", "--param", "sample_every=0",
                                 "--device", "cpu", "--out", str(tmp_path / "gans")])
    assert r.exit_code == 0, r.output
    gen = next((tmp_path / "gans").glob("class_*/generator.pt"))
    r = CliRunner().invoke(cli, ["export", str(gen), "--out", str(tmp_path / "g.onnx")])
    assert r.exit_code == 0, r.output
    assert "exported generator" in r.output and "parity vs PyTorch" in r.output
    meta = read_metadata(tmp_path / "g.onnx", kind="generator")
    assert meta["class_index"] == 0 and meta["class_name"] == "Nucleoplasm"
    assert meta["image_size"] == 16
    images = OnnxGenerator(tmp_path / "g.onnx", provider="cpu").sample(4)
    assert images.shape == (4, 4, 16, 16) and 0 <= images.min() <= images.max() <= 1
