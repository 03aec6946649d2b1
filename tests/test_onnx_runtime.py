"""ONNX Runtime side: checked loading of model files (truncated, foreign, external data
outside the folder, wrong shapes), provider selection and reporting, and the serving
API ``OnnxClassifier``."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hpatk.core.errors import HpatkError
from hpatk.export.metadata import PREFIX
from test_onnx_export import ENHANCE, images01, shared_export, torch_outputs

SIZE = 32
CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"


@pytest.fixture
def model():
    """A resnet18 classifier at 32 px (CLAHE), exported once per process: (ckpt, path)."""
    ckpt, res, _ = shared_export(SIZE)
    return ckpt, res.path


@pytest.fixture(scope="module")
def clf():
    from hpatk.export import OnnxClassifier

    return OnnxClassifier(shared_export(SIZE)[1].path, provider="cpu")


def _rewrite(src, dst, edit):
    m = onnx.load(str(src))
    edit(m)
    onnx.save(m, str(dst))
    return dst


def _set_prop(m, key, value):
    for p in m.metadata_props:
        if p.key == PREFIX + key:
            p.value = value


# -- bad model files --------------------------------------------------------------------


@pytest.mark.parametrize("cut", [0.01, 0.5, 0.999])
def test_truncated_model(model, tmp_path, cut):
    from hpatk.export import OnnxClassifier

    data = model[1].read_bytes()
    bad = tmp_path / "cut.onnx"
    bad.write_bytes(data[:int(len(data) * cut)])
    with pytest.raises(HpatkError, match="not a readable ONNX file"):
        OnnxClassifier(bad, provider="cpu")


@pytest.mark.parametrize("content,message", [
    (b"", "is empty"),
    (b"\x00\xff" * 64 + b"garbage", "not a readable ONNX file"),
    (None, "does not exist"),
])
def test_not_a_model(tmp_path, content, message):
    from hpatk.export import OnnxClassifier

    bad = tmp_path / "bad.onnx"
    if content is not None:
        bad.write_bytes(content)
    with pytest.raises(HpatkError, match=message):
        OnnxClassifier(bad, provider="cpu")


def test_foreign_onnx_model(tmp_path):
    """A valid ONNX file not made by hpatk export: refused, it lacks what predict needs."""
    from hpatk.export import OnnxClassifier
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Sigmoid", ["images"], ["out"])], "foreign",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["b", 28])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["b", 28])])
    path = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                ir_version=8), str(path))
    ort.InferenceSession(str(path), providers=[CPU])  # ONNX Runtime itself would run it
    with pytest.raises(HpatkError, match="has no hpatk metadata"):
        OnnxClassifier(path, provider="cpu")


def _external(tmp_path, model_path, location):
    """Copy the model into tmp_path/m/ with its first conv weights 'external' at location."""
    folder = tmp_path / "m"
    folder.mkdir(exist_ok=True)
    m = onnx.load(str(model_path))
    t = next(t for t in m.graph.initializer if len(t.dims) == 4)
    n = len(t.raw_data)
    t.ClearField("raw_data")
    t.data_location = onnx.TensorProto.EXTERNAL
    del t.external_data[:]
    for k, v in (("location", location), ("offset", "0"), ("length", str(n))):
        t.external_data.add(key=k, value=v)
    onnx.save(m, str(folder / "m.onnx"))
    return folder / "m.onnx", n


@pytest.mark.parametrize("where", ["parent", "absolute", "symlink"])
def test_external_data_outside_folder_refused(model, tmp_path, where):
    from hpatk.export import OnnxClassifier

    outside = tmp_path / "evil.bin"
    outside.write_bytes(b"\x01" * 200_000)
    location = {"parent": "../evil.bin", "absolute": str(outside), "symlink": "link.bin"}[where]
    path, _ = _external(tmp_path, model[1], location)
    if where == "symlink":
        (path.parent / "link.bin").symlink_to(outside)
    with pytest.raises(HpatkError, match="outside the model's folder"):
        OnnxClassifier(path, provider="cpu")


def test_external_data_missing_or_truncated(model, tmp_path):
    from hpatk.export import OnnxClassifier

    path, n = _external(tmp_path, model[1], "w.bin")
    with pytest.raises(HpatkError, match="weights file 'w.bin' .* is missing"):
        OnnxClassifier(path, provider="cpu")
    (path.parent / "w.bin").write_bytes(b"\x00" * (n - 1))
    with pytest.raises(HpatkError, match="truncated"):
        OnnxClassifier(path, provider="cpu")


def test_wrong_input_shape(model, tmp_path):
    """Metadata and graph disagree (4 stains at 32 px vs a claimed 48 px)."""
    from hpatk.export import OnnxClassifier

    bad = _rewrite(model[1], tmp_path / "m.onnx", lambda m: _set_prop(m, "input_size", "48"))
    with pytest.raises(HpatkError, match=r"input 'images' has shape \['batch', 4, 32, 32\]"):
        OnnxClassifier(bad, provider="cpu")


def test_static_batch_refused(model, tmp_path):
    from hpatk.export import OnnxClassifier

    def fix_batch(m):
        m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1

    bad = _rewrite(model[1], tmp_path / "m.onnx", fix_batch)
    with pytest.raises(HpatkError, match="dynamic batch axis"):
        OnnxClassifier(bad, provider="cpu")


@pytest.mark.parametrize("key,value,message", [
    ("format", "99", "format 99 is not supported"),
    ("classes", "[0, 1]", "malformed class_names"),
    ("normalize", "{not json", "not valid JSON"),
    ("kind", "generator", "is a generator model, not a classifier"),
])
def test_bad_metadata(model, tmp_path, key, value, message):
    from hpatk.export import OnnxClassifier

    bad = _rewrite(model[1], tmp_path / "m.onnx", lambda m: _set_prop(m, key, value))
    with pytest.raises(HpatkError, match=message):
        OnnxClassifier(bad, provider="cpu")


# -- providers --------------------------------------------------------------------------


def test_requested_providers():
    from hpatk.export import requested_providers, runtime

    assert requested_providers("cpu") == [CPU]
    assert requested_providers("cuda") == [CUDA, CPU]
    assert requested_providers("tensorrt") == ["TensorrtExecutionProvider", CUDA, CPU]
    auto = requested_providers("auto")
    gpu = runtime.gpu_present()
    assert auto == ([CUDA, CPU] if CUDA in ort.get_available_providers() and gpu else [CPU])
    with pytest.raises(HpatkError, match="--provider must be one of"):
        requested_providers("npu")


def test_session_options_disable_spinning():
    from hpatk.export.runtime import session_options

    so = session_options(threads=3)
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert so.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    assert so.intra_op_num_threads == 3


def test_cpu_provider_report(clf):
    assert clf.providers == [CPU]
    assert clf.report.active == (CPU,) and not clf.report.fell_back
    assert clf.report.describe() == f"ONNX Runtime providers: {CPU}"


def _cuda_loads() -> bool:
    return torch.cuda.is_available() and CUDA in ort.get_available_providers()


@pytest.mark.skipif(_cuda_loads(), reason="CUDA loads here: no fallback to observe")
@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_accelerator_fallback_is_reported_and_strict_fails(model, provider, capfd):
    """onnxruntime-gpu quietly runs on the CPU when CUDA cannot load: hpatk says so."""
    from hpatk.export import OnnxClassifier

    clf = OnnxClassifier(model[1], provider=provider)
    assert clf.providers == [CPU]
    assert clf.report.fell_back and CUDA in clf.report.missing
    assert clf.report.reason  # why, from ONNX Runtime's own log or the build
    text = clf.report.describe()
    assert f"warning: {', '.join(clf.report.missing)} requested (--provider {provider}) " \
           f"but not loaded" in text and text.endswith(f"running on {CPU}")
    out, err = capfd.readouterr()
    assert "EP Error" not in out + err and "[E:onnxruntime" not in out + err  # summarised
    with pytest.raises(HpatkError, match="--strict"):
        OnnxClassifier(model[1], provider=provider, strict=True)
    auto = OnnxClassifier(model[1], provider="auto", strict=True)  # auto never fails
    assert auto.providers == [CPU]


@pytest.mark.skipif(_cuda_loads() or CUDA not in ort.get_available_providers(),
                    reason="needs onnxruntime-gpu on a machine where CUDA does not load")
def test_auto_notes_a_cuda_fallback_only_with_a_gpu(model, monkeypatch):
    """No 'CUDA requested but not loaded' note on a machine without a GPU."""
    from hpatk.export import OnnxClassifier, runtime

    monkeypatch.setattr(runtime, "gpu_present", lambda: False)
    quiet = OnnxClassifier(model[1], provider="auto")
    assert quiet.report.requested == (CPU,)
    assert quiet.report.describe() == f"ONNX Runtime providers: {CPU}"
    monkeypatch.setattr(runtime, "gpu_present", lambda: True)  # a GPU whose CUDA fails
    noted = OnnxClassifier(model[1], provider="auto")
    assert noted.providers == [CPU]
    assert f"note: {CUDA} requested (--provider auto) but not loaded" in \
        noted.report.describe()


@pytest.mark.cuda
@pytest.mark.skipif(not _cuda_loads(), reason="needs CUDA and onnxruntime-gpu")
def test_cuda_provider_runs_and_agrees(model, clf):
    from hpatk.export import OnnxClassifier

    gpu = OnnxClassifier(model[1], provider="cuda", strict=True)
    assert gpu.providers[0] == CUDA and not gpu.report.fell_back
    x = images01(4, SIZE)
    np.testing.assert_allclose(gpu.predict_probs(x), clf.predict_probs(x), rtol=1e-3,
                               atol=1e-4)


# -- OnnxClassifier ---------------------------------------------------------------------


def _raw(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Dim uint8 stains, as microscopy is."""
    rng = np.random.default_rng(seed)
    return (rng.gamma(2.0, 12.0, (n, 4, size, size))).clip(0, 255).astype(np.uint8)


def test_classifier_attributes(clf, model):
    ckpt, _ = model
    assert clf.classes == list(range(28)) and clf.size == SIZE
    assert clf.stains == ["green", "red", "blue", "yellow"]
    np.testing.assert_allclose(clf.thresholds, ckpt["thresholds"])
    assert clf.metadata["enhance"] == ENHANCE
    assert clf.enhancer.config()["name"] == "clahe"


def test_predict_raw_uint8_matches_torch(clf, model):
    """uint8 stains at another size: CLAHE at the original size, INTER_AREA resize, /255,
    then the model: the same as PyTorch on the cache's preprocessing."""
    import cv2
    from hpatk.core.metrics import apply_thresholds

    ckpt, _ = model
    raw = _raw(3, 48)
    clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))  # the reference: OpenCV
    pre = np.stack([[cv2.resize(clahe.apply(c), (SIZE, SIZE), interpolation=cv2.INTER_AREA)
                     for c in img] for img in raw])
    ref = torch_outputs(ckpt, pre.astype(np.float32) / 255)
    pred = clf.predict(raw)
    np.testing.assert_allclose(pred.probs, ref, rtol=1e-3, atol=1e-5)
    want = apply_thresholds(ref, np.asarray(ckpt["thresholds"]), at_least_one=True)
    assert pred.labels == [np.flatnonzero(r).tolist() for r in want]
    assert all(len(lab) >= 1 for lab in pred.labels)
    assert pred.names[0] == [clf.class_names[c] for c in pred.labels[0]]
    # a list of images of different sizes is the same as preprocessing each
    mixed = [raw[0], _raw(1, 40, seed=9)[0]]
    probs = clf.predict_probs(mixed)
    np.testing.assert_allclose(probs[0], pred.probs[0], rtol=1e-5, atol=1e-6)
    # preprocessed float input skips enhancement
    np.testing.assert_allclose(clf.predict_probs(pre.astype(np.float32) / 255), pred.probs,
                               rtol=1e-5, atol=1e-6)


def test_predict_batches_agree(clf):
    x = images01(7, SIZE, seed=3)
    whole = clf.predict_probs(x, batch_size=7)
    np.testing.assert_allclose(clf.predict_probs(x, batch_size=2), whole, rtol=1e-4,
                               atol=1e-6)


def test_tta_flips_is_the_mean_of_four_flips(clf, model):
    ckpt, _ = model
    x = images01(2, SIZE, seed=7)
    views = [x, x[..., ::-1], x[..., ::-1, :], x[..., ::-1, ::-1]]
    ref = torch_outputs(ckpt, np.ascontiguousarray(np.concatenate(views)))
    ref = ref.reshape(4, 2, -1).mean(axis=0)
    got = clf.predict_probs(x, tta="flips")
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-5)
    assert not np.allclose(got, clf.predict_probs(x), atol=1e-4)  # the flips mattered
    with pytest.raises(HpatkError, match="--tta"):
        clf.predict_probs(x, tta="rot90")


def test_logits_model_gives_probabilities(model, tmp_path, clf):
    from hpatk.export import OnnxClassifier, export_checkpoint

    export_checkpoint(model[1].parent / "ck.pt", tmp_path / "l.onnx", output="logits")
    logits = OnnxClassifier(tmp_path / "l.onnx", provider="cpu")
    x = images01(3, SIZE, seed=11)
    np.testing.assert_allclose(logits.predict_probs(x), clf.predict_probs(x), rtol=1e-4,
                               atol=1e-6)


@pytest.mark.parametrize("images,message", [
    (np.zeros((2, 3, 32, 32), np.uint8), r"takes 4 stains \(green, red, blue, yellow\)"),
    (np.zeros((4, 32, 32), np.uint8), r"must be \(B, C, H, W\)"),
    (np.zeros((1, 4, 40, 40), np.float32), "preprocessed to 32 x 32"),
    (np.full((1, 4, 32, 32), 255.0, np.float32), r"must lie in \[0, 1\]"),
    (np.zeros((1, 4, 32, 32), np.int32), "uint8 .* or float"),
    ([np.zeros((4, 32, 32), np.float32)], "uint8 \\(C, H, W\\) arrays"),
])
def test_bad_images(clf, images, message):
    with pytest.raises(HpatkError, match=message):
        clf.predict(images)


def test_generator_file_is_not_a_classifier(tmp_path, model):
    from hpatk.export import OnnxGenerator

    with pytest.raises(HpatkError, match="is a classifier model, not a generator"):
        OnnxGenerator(model[1], provider="cpu")


def test_model_folder_can_move(model, tmp_path):
    """A deployed model is one self-contained file."""
    from hpatk.export import OnnxClassifier

    dst = tmp_path / "deployed" / "m.onnx"
    dst.parent.mkdir()
    shutil.copy(model[1], dst)
    assert OnnxClassifier(dst, provider="cpu").predict(_raw(1, SIZE)).labels


def test_onnx_runtime_refusal_is_one_line(model, tmp_path):
    """A file ONNX accepts but this ONNX Runtime cannot load (a newer IR version)."""
    from hpatk.export import OnnxClassifier

    def newer(m):
        m.ir_version = 14

    bad = _rewrite(model[1], tmp_path / "m.onnx", newer)
    onnx.checker.check_model(str(bad))
    with pytest.raises(HpatkError, match="ONNX Runtime cannot load .*IR version") as err:
        OnnxClassifier(bad, provider="cpu")
    assert "\n" not in str(err.value)
