"""``hpatk export``: ONNX export of classifier and generator checkpoints, checked against
PyTorch with ONNX Runtime. Models are random-init but made realistic (BatchNorm
statistics from data, logits of a trained model's scale) so parity means something."""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from hpatk.cli.main import cli
from hpatk.core import __version__, get_registry
from hpatk.core.checkpoint import load_checkpoint, save_checkpoint
from hpatk.core.classes import CLASS_NAMES, STAINS, TOP5
from hpatk.core.errors import HpatkError

MEAN = [0.08, 0.05, 0.06, 0.09]
STD = [0.11, 0.08, 0.09, 0.12]
ENHANCE = {"name": "clahe", "clip_limit": 2.0, "grid_size": [8, 8]}


# -- helpers shared with the other ONNX / predict tests ---------------------------------


def make_realistic(model, size: int, in_chans: int = 4, seed: int = 0):
    """Give a random-init model a trained model's statistics: BatchNorm running stats from
    data (random init leaves deep nets constant in eval mode) and logits of std ~2."""
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.momentum = None  # cumulative average over the calibration batches
    from hpatk.export.onnx import image_inputs

    def batch(n: int, seed: int):  # images like the export's parity inputs, normalised
        x = torch.from_numpy(image_inputs(n, seed, MEAN, STD, size))
        return (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]

    model.train()
    with torch.no_grad():  # 16 images: the paper's heads normalise 1x1 feature maps
        for i in range(2):
            model(torch.cat([batch(4, seed + 100 + i),
                             torch.randn(4, in_chans, size, size, generator=g)]))
    model.eval()
    with torch.no_grad():
        logits = model(torch.cat([batch(3, seed + 200),
                                  torch.randn(3, in_chans, size, size, generator=g)]))
        head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
        scale = 2.0 / float(logits.std().clamp_min(1e-6))
        head.weight.mul_(scale)
        head.bias.normal_(0.0, 0.5, generator=g)
    for bn in bns:
        bn.momentum = 0.1
    return model


@functools.lru_cache(maxsize=8)
def _weights(backbone: str, size: int, num_classes: int, seed: int, kwargs: str) -> dict:
    torch.manual_seed(seed)
    model = get_registry().backbones.create(backbone, num_classes=num_classes, in_chans=4,
                                            **json.loads(kwargs))
    return make_realistic(model, size, seed=seed).state_dict()


def classifier_ckpt(path, backbone: str = "resnet18", size: int = 64, classes=None,
                    thresholds="default", enhance=None, seed: int = 0,
                    kwargs: dict | None = None) -> dict:
    """Write a classifier checkpoint in the documented format; return the dict."""
    classes = list(range(28)) if classes is None else list(classes)
    kwargs = dict(kwargs or {})
    state = _weights(backbone, size, len(classes), seed, json.dumps(kwargs, sort_keys=True))
    if thresholds == "default":
        thresholds = np.linspace(0.3, 0.6, len(classes)).round(3).tolist()
    ckpt = {
        "kind": "classifier", "format": 1, "hpatk_version": __version__,
        "model": {"backbone": backbone, "num_classes": len(classes), "in_chans": 4,
                  "kwargs": kwargs},
        "state_dict": dict(state), "classes": classes,
        "class_names": [CLASS_NAMES[c] for c in classes], "stains": list(STAINS),
        "size": size, "enhance": dict(enhance or ENHANCE),
        "normalize": {"mean": MEAN, "std": STD}, "thresholds": thresholds,
        "epoch": 1, "metrics": {"macro_f1": 0.1},
    }
    save_checkpoint(ckpt, path)
    return ckpt


def torch_outputs(ckpt: dict, x: np.ndarray, probabilities: bool = True) -> np.ndarray:
    """The reference: the checkpoint's model in PyTorch on normalised float images."""
    m = ckpt["model"]
    model = get_registry().backbones.create(m["backbone"], num_classes=m["num_classes"],
                                            in_chans=m["in_chans"], **m["kwargs"])
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    mean = torch.tensor(ckpt["normalize"]["mean"])[:, None, None]
    std = torch.tensor(ckpt["normalize"]["std"])[:, None, None]
    with torch.inference_mode():
        y = model((torch.from_numpy(x) - mean) / std)
        return (torch.sigmoid(y) if probabilities else y).numpy()


def ort_run(path, x: np.ndarray, name: str | None = None) -> np.ndarray:
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {name or s.get_inputs()[0].name: x})[0]


def images01(n: int, size: int, seed: int = 0, c: int = 4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mean = np.asarray(MEAN[:c])[:, None, None]
    std = np.asarray(STD[:c])[:, None, None]
    return np.clip(mean + std * rng.standard_normal((n, c, size, size)), 0, 1).astype(np.float32)


def props(path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


@functools.cache
def shared_export(size: int = 32) -> tuple[dict, object, Path]:
    """resnet18 (seed 0) exported with the defaults, once per test process, shared by the
    ONNX and predict tests (read-only): (checkpoint dict, ExportResult, its folder)."""
    from hpatk.export import export_checkpoint

    d = Path(tempfile.mkdtemp(prefix="hpatk-onnx-"))
    atexit.register(shutil.rmtree, d, ignore_errors=True)
    ckpt = classifier_ckpt(d / "ck.pt", size=size)
    res = export_checkpoint(d / "ck.pt", d / "model.onnx")
    return ckpt, res, d


@pytest.fixture
def exported():
    return shared_export()


# -- classifier -------------------------------------------------------------------------


def test_export_default_is_legacy_opset17_single_file(exported):
    _, res, d = exported
    model = onnx.load(str(res.path))
    assert res.exporter == "legacy" and res.opset == 17
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]
    assert res.files == [d / "model.onnx"]
    assert not (d / "model.onnx.data").exists()
    assert sorted(p.name for p in d.iterdir()) == ["ck.pt", "model.onnx"]  # no temp left
    onnx.checker.check_model(str(res.path), full_check=True)
    assert set(res.parity) == {1, 2, 7}
    assert res.max_abs_error < 1e-5


def test_export_graph_io_and_dynamic_batch(exported):
    ckpt, res, _ = exported
    model = onnx.load(str(res.path))
    (inp,), (out,) = model.graph.input, model.graph.output
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert inp.name == "images" and dims[1:] == [4, 32, 32] and isinstance(dims[0], str)
    assert out.name == "probabilities"
    for b in (1, 3, 5):  # 3 and 5 were never used by the exporter's own check
        x = images01(b, 32, seed=10 + b)
        got = ort_run(res.path, x, "images")
        ref = torch_outputs(ckpt, x)
        assert got.shape == (b, 28)
        np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-5)
        assert 0.01 < ref.mean() < 0.99 and ref.std() > 0.01  # a meaningful comparison


def test_export_metadata_round_trip(exported):
    from hpatk.core.io import file_sha256
    from hpatk.export import read_metadata

    ckpt, res, d = exported
    meta = read_metadata(res.path, kind="classifier")
    assert meta["kind"] == "classifier" and meta["format"] == 1
    assert meta["classes"] == ckpt["classes"]
    assert meta["class_names"] == list(CLASS_NAMES)
    assert meta["thresholds"] == pytest.approx(ckpt["thresholds"])
    assert meta["stains"] == list(STAINS)
    assert meta["input_size"] == 32 and meta["trained_size"] == 32
    assert meta["enhance"] == ENHANCE
    assert meta["normalize"] == {"mean": MEAN, "std": STD}
    assert meta["output"] == "probabilities" and meta["backbone"] == "resnet18"
    assert meta["hpatk_version"] == __version__
    assert meta["source_checkpoint"] == "ck.pt"
    assert meta["source_sha256"] == file_sha256(d / "ck.pt")
    import hashlib

    assert meta["source_sha256"] == hashlib.sha256((d / "ck.pt").read_bytes()).hexdigest()
    assert meta["exporter"] == "legacy" and meta["opset"] == 17
    raw = props(res.path)  # readable in Netron: strings plain, the rest JSON
    assert raw["hpatk.kind"] == "classifier"
    assert json.loads(raw["hpatk.class_names"])[27] == "Rods & rings"
    assert meta == res.metadata


def test_export_logits_at_another_size_top5(tmp_path):
    from hpatk.export import export_checkpoint, read_metadata

    ckpt = classifier_ckpt(tmp_path / "ck.pt", size=32, classes=TOP5, thresholds=None, seed=1)
    res = export_checkpoint(tmp_path / "ck.pt", tmp_path / "m.onnx", output="logits", size=48)
    meta = read_metadata(res.path)
    assert meta["output"] == "logits" and meta["input_size"] == 48
    assert meta["trained_size"] == 32 and meta["classes"] == list(TOP5)
    assert meta["thresholds"] is None
    x = images01(3, 48, seed=3)
    got = ort_run(res.path, x)
    assert got.shape == (3, 5)
    np.testing.assert_allclose(got, torch_outputs(ckpt, x, probabilities=False),
                               rtol=1e-3, atol=1e-5)
    assert onnx.load(str(res.path)).graph.output[0].name == "logits"


def test_export_dynamo(tmp_path):
    """The torch.export-based exporter: opset 18, one self-contained file."""
    from hpatk.export import export_checkpoint, read_metadata

    ckpt = classifier_ckpt(tmp_path / "ck.pt", size=32)
    res = export_checkpoint(tmp_path / "ck.pt", tmp_path / "m.onnx", exporter="dynamo")
    assert res.exporter == "dynamo" and res.opset == 18
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt", "m.onnx"]  # no .onnx.data
    assert read_metadata(res.path)["exporter"] == "dynamo"
    for b in (1, 4):
        x = images01(b, 32, seed=b)
        np.testing.assert_allclose(ort_run(res.path, x), torch_outputs(ckpt, x),
                                   rtol=1e-3, atol=1e-5)


def test_export_paper_backbone_inceptionv4(tmp_path):
    """The paper's best 28-class backbone, at a small size to keep the suite fast."""
    from hpatk.export import export_checkpoint

    classifier_ckpt(tmp_path / "ck.pt", backbone="inceptionv4", size=75, seed=3)
    res = export_checkpoint(tmp_path / "ck.pt", tmp_path / "m.onnx")
    assert set(res.parity) == {1, 2, 7}  # within rtol 1e-3 / atol 1e-5, or it had raised
    assert res.metadata["backbone"] == "inceptionv4" and res.metadata["input_size"] == 75


def _registered() -> list:
    """Every registered backbone (third-party ones too), and the paper's heads."""
    names = [n for n in get_registry().backbones.names() if not n.endswith(":*")]
    return [*names, ("inceptionv4", {"head": "paper"}), ("vgg16", {"head": "paper"})]


@pytest.mark.slow
@pytest.mark.parametrize("backbone", _registered(), ids=str)
def test_every_registered_backbone_exports(tmp_path, backbone):
    """Live registry: a backbone is export-tested the moment it is registered."""
    from hpatk.export import export_checkpoint

    name, kwargs = backbone if isinstance(backbone, tuple) else (backbone, {})
    size = 75 if "inception" in name else 64  # the smallest the Inception stems take
    ckpt = classifier_ckpt(tmp_path / "ck.pt", backbone=name, size=size, classes=TOP5,
                           kwargs=kwargs)
    res = export_checkpoint(tmp_path / "ck.pt", tmp_path / "m.onnx")
    assert set(res.parity) == {1, 2, 7}
    x = images01(3, size, seed=1)
    np.testing.assert_allclose(ort_run(res.path, x), torch_outputs(ckpt, x),
                               rtol=1e-3, atol=1e-5)


def test_export_external_data_for_big_models(tmp_path, monkeypatch):
    """Models over protobuf's 2 GiB keep weights in OUT.data beside OUT; they load."""
    from hpatk.export import OnnxClassifier, export_checkpoint
    from hpatk.export import onnx as onnx_export

    monkeypatch.setattr(onnx_export, "SINGLE_FILE_LIMIT", 0)
    ckpt = classifier_ckpt(tmp_path / "ck.pt", size=32)
    res = export_checkpoint(tmp_path / "ck.pt", tmp_path / "m.onnx")
    assert res.files == [tmp_path / "m.onnx", tmp_path / "m.onnx.data"]
    assert (tmp_path / "m.onnx").stat().st_size < 100_000
    clf = OnnxClassifier(tmp_path / "m.onnx", provider="cpu")
    x = images01(2, 32)
    np.testing.assert_allclose(clf.predict_probs(x), torch_outputs(ckpt, x),
                               rtol=1e-3, atol=1e-5)


# -- failures leave nothing behind ------------------------------------------------------


def _swap_exporter(monkeypatch, module):
    """Export ``module`` instead of the checkpoint's classifier."""
    from hpatk.export import onnx as onnx_export

    original = onnx_export.KIND_EXPORTERS["classifier"]

    def spec(ckpt, options):
        s = original(ckpt, options)
        s.module = module
        return s

    monkeypatch.setitem(onnx_export.KIND_EXPORTERS, "classifier", spec)


class _TraceDependent(torch.nn.Module):
    """Data-dependent control flow: tracing bakes in one branch, so ONNX != PyTorch."""

    def forward(self, x):
        y = x.mean(dim=(2, 3))[:, :1].repeat(1, 28)
        return torch.sigmoid(y * 3 if float(x.sum()) > x.numel() * 0.1 else -y)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_parity_failure_fails_loudly_and_writes_nothing(tmp_path, monkeypatch):
    from hpatk.export import export_checkpoint

    classifier_ckpt(tmp_path / "ck.pt", size=32)
    _swap_exporter(monkeypatch, _TraceDependent())
    out = tmp_path / "m.onnx"
    out.write_bytes(b"previous model")
    with pytest.raises(HpatkError, match="parity check failed at batch"):
        export_checkpoint(tmp_path / "ck.pt", out)
    assert out.read_bytes() == b"previous model"  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt", "m.onnx"]


class _UpsamplingPool(torch.nn.Module):
    """timm's vgg16 below 224 px: an adaptive pooling that upsamples (3x3 -> 7x7), which
    the TorchScript exporter cannot convert."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 3, 3, stride=8, padding=1)
        self.pool = torch.nn.AdaptiveAvgPool2d(7)
        self.fc = torch.nn.Linear(3 * 49, 28)

    def forward(self, x):
        return torch.sigmoid(self.fc(self.pool(self.conv(x)).flatten(1)))


def test_auto_exporter_falls_back_to_dynamo(tmp_path, monkeypatch):
    from hpatk.export import export_checkpoint, read_metadata

    classifier_ckpt(tmp_path / "ck.pt", size=24)
    _swap_exporter(monkeypatch, _UpsamplingPool())
    with pytest.raises(HpatkError, match="legacy exporter failed .*adaptive_avg_pool2d"):
        export_checkpoint(tmp_path / "ck.pt", tmp_path / "m.onnx", exporter="legacy")
    assert not (tmp_path / "m.onnx").exists()
    res = export_checkpoint(tmp_path / "ck.pt", tmp_path / "m.onnx")  # auto
    assert res.exporter == "dynamo" and res.opset == 18 and set(res.parity) == {1, 2, 7}
    assert "exported with dynamo instead" in res.notes[0]
    assert read_metadata(res.path)["exporter"] == "dynamo"


def test_parity_float64_arbitration(exported, monkeypatch):
    """Beyond rtol/atol, ONNX passes only if it is as close to a float64 PyTorch run as
    PyTorch float32 is (ill-conditioned deep nets); an export error never is."""
    from hpatk.export import onnx as ox
    from hpatk.export import parity

    ckpt, res, _ = exported
    spec = ox.classifier_spec(ckpt, ox.ExportOptions())
    x, refs = parity.reference_outputs(spec)
    off = {b: r * (1 + 3e-3) for b, r in refs.items()}  # a float32 PyTorch 3e-3 off
    report = parity.verify_parity(spec, res.path, x, off)
    assert report[7]["float64_onnx"] < 1e-5 < report[7]["float64_torch"]
    monkeypatch.setattr(parity, "_float64_outputs", lambda spec, xb: off[len(xb)])
    with pytest.raises(HpatkError, match="against float64 ONNX is off by"):
        parity.verify_parity(spec, res.path, x, off)  # PyTorch exact, ONNX 3e-3 off: an error


class _Constant(torch.nn.Module):
    def forward(self, x):
        return torch.sigmoid(x[:, :1, 0, 0].repeat(1, 28) * 0 + 0.3)


def test_degenerate_model_refused_unless_no_verify(tmp_path, monkeypatch):
    """A model whose output ignores the input cannot prove parity: say so."""
    from hpatk.export import export_checkpoint

    classifier_ckpt(tmp_path / "ck.pt", size=32)
    _swap_exporter(monkeypatch, _Constant())
    with pytest.raises(HpatkError, match="do not change with the input"):
        export_checkpoint(tmp_path / "ck.pt", tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
    res = export_checkpoint(tmp_path / "ck.pt", tmp_path / "m.onnx", verify=False)
    assert res.parity is None and (tmp_path / "m.onnx").is_file()


def test_random_init_deep_net_is_degenerate(tmp_path, monkeypatch):
    """Untrained inception_v4 in eval mode outputs its bias whatever the input: the
    parity check must not pass on that vacuously."""
    from hpatk.export import export_checkpoint
    from hpatk.export import onnx as onnx_export

    ckpt = classifier_ckpt(tmp_path / "ck.pt", size=32)
    torch.manual_seed(0)
    raw = get_registry().backbones.create("inceptionv4", num_classes=28, in_chans=4).eval()
    graph = onnx_export.classifier_graph(raw, MEAN, STD, probabilities=True)
    _swap_exporter(monkeypatch, graph)
    monkeypatch.setitem(ckpt, "size", 75)
    save_checkpoint(ckpt, tmp_path / "ck.pt")
    with pytest.raises(HpatkError, match="parity check impossible"):
        export_checkpoint(tmp_path / "ck.pt", tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("field,value,message", [
    ("normalize", {"mean": [0.1], "std": [0.1]}, "'normalize' needs 4"),
    ("normalize", {"mean": MEAN, "std": [0.1, 0.1, 0.0, 0.1]}, "std must be > 0"),
    ("classes", [0, 1], "'classes' has 2 entries for 28 outputs"),
    ("thresholds", [0.5], "'thresholds' must have 28"),
    ("stains", ["green"], "'stains' has 1 entries"),
    ("enhance", None, "no valid 'enhance'"),
])
def test_bad_classifier_checkpoint(tmp_path, field, value, message):
    from hpatk.export import export_checkpoint

    ckpt = classifier_ckpt(tmp_path / "ck.pt", size=32)
    ckpt[field] = value
    save_checkpoint(ckpt, tmp_path / "ck.pt")
    with pytest.raises(HpatkError, match=message):
        export_checkpoint(tmp_path / "ck.pt", tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_weights_that_do_not_fit(tmp_path):
    from hpatk.export import export_checkpoint

    ckpt = classifier_ckpt(tmp_path / "ck.pt", size=32)
    ckpt["model"]["backbone"] = "resnet50"
    save_checkpoint(ckpt, tmp_path / "ck.pt")
    with pytest.raises(HpatkError, match="resnet50"):
        export_checkpoint(tmp_path / "ck.pt", tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


# -- generator --------------------------------------------------------------------------


def generator_ckpt(path, size: int = 16, width: int = 4, class_index: int = 25,
                   seed: int = 0, name: str = "dcgan") -> tuple[dict, torch.nn.Module]:
    """A generator checkpoint as hpatk writes it (random weights, BatchNorm statistics
    of a trained generator), and its export module."""
    from hpatk.core.generator import save_generator

    torch.manual_seed(seed)
    k = 1 if name == "dcgan" else 3
    synth = get_registry().synthesizers.create(name, image_size=size, width=width,
                                               channels=4, **({} if k == 1 else
                                                              {"num_labels": k}))
    model = synth._model()
    model.generator.train()
    with torch.no_grad():  # BatchNorm statistics of a trained generator
        z = torch.randn(8, 100)
        model.generator(z) if k == 1 else model.generator(z, torch.ones(8, k))
    synth.load_state_dict({"generator": model.generator.state_dict()})
    classes = [class_index] if k == 1 else [class_index, 0, 2]
    save_generator(path, synth, name=name, classes=classes, train_ids=["a"],
                   train_labels=np.ones((1, k), np.uint8), stains=list(STAINS),
                   enhance=ENHANCE, fold=None, key="k", cache_fingerprint="f", seed=seed)
    return load_checkpoint(path), synth.export_module()


def test_export_generator(tmp_path):
    from hpatk.export import OnnxGenerator, export_checkpoint, read_metadata

    ckpt, gen = generator_ckpt(tmp_path / "g.pt")
    res = export_checkpoint(tmp_path / "g.pt", tmp_path / "g.onnx")
    assert res.kind == "generator" and res.max_abs_error < 1e-5
    meta = read_metadata(res.path, kind="generator")
    assert meta["class_index"] == 25 and meta["class_name"] == "Cytosol"
    assert meta["synthesizer"] == "dcgan" and meta["label_dim"] == 0
    assert meta["image_size"] == 16 and meta["latent_dim"] == 100
    assert meta["stains"] == list(STAINS) and meta["output_range"] == "[0, 1]"
    model = onnx.load(str(res.path))
    assert model.graph.input[0].name == "noise" and model.graph.output[0].name == "images"
    g = OnnxGenerator(res.path, provider="cpu")
    for n in (1, 5):
        z = np.random.default_rng(n).standard_normal((n, 100)).astype(np.float32)
        with torch.inference_mode():
            ref = gen(torch.from_numpy(z)).numpy()
        got = g.run(z)
        assert got.shape == (n, 4, 16, 16)
        np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-5)
    s = g.sample(3, seed=1)
    assert s.shape == (3, 4, 16, 16) and 0 <= s.min() and s.max() <= 1 and s.std() > 0
    with pytest.raises(HpatkError, match="is a generator model, not a classifier"):
        read_metadata(res.path, kind="classifier")


def test_export_conditional_generator(tmp_path):
    from hpatk.export import OnnxGenerator, export_checkpoint

    _, gen = generator_ckpt(tmp_path / "c.pt", name="cdcgan")
    res = export_checkpoint(tmp_path / "c.pt", tmp_path / "c.onnx")
    assert res.max_abs_error < 1e-5 and res.metadata["label_dim"] == 3
    assert res.metadata["classes"] == [25, 0, 2] and res.metadata["class_index"] is None
    g = OnnxGenerator(res.path, provider="cpu")
    y = np.eye(3, dtype=np.float32)[[0, 1, 2, 0]]
    got = g.sample(4, seed=2, labels=y)
    z = np.random.default_rng(2).standard_normal((4, 100))
    with torch.inference_mode():
        ref = gen(torch.from_numpy(np.concatenate([z, y], 1).astype(np.float32))).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-5)
    assert not np.allclose(got[0], got[1])  # the label changes the image
    with pytest.raises(HpatkError, match="conditional"):
        g.sample(2, seed=0)


def test_generator_refuses_classifier_options(tmp_path):
    from hpatk.export import export_checkpoint

    generator_ckpt(tmp_path / "g.pt")
    with pytest.raises(HpatkError, match="--size"):
        export_checkpoint(tmp_path / "g.pt", tmp_path / "g.onnx", size=32)
    with pytest.raises(HpatkError, match="--logits"):
        export_checkpoint(tmp_path / "g.pt", tmp_path / "g.onnx", output="logits")


def test_exporter_registry():
    from hpatk.export import exporter_kinds, register_exporter
    from hpatk.export import onnx as onnx_export

    assert exporter_kinds() == ["classifier", "generator"]
    with pytest.raises(ValueError, match="already registered"):
        register_exporter("classifier")(lambda ckpt, options: None)
    assert onnx_export.KIND_EXPORTERS["classifier"] is onnx_export.classifier_spec


# -- the command ------------------------------------------------------------------------


def test_cli_export(tmp_path):
    ckpt = classifier_ckpt(tmp_path / "ck.pt", size=32)
    r = CliRunner().invoke(cli, ["export", str(tmp_path / "ck.pt"), "--out",
                                 str(tmp_path / "m.onnx"), "--logits"])
    assert r.exit_code == 0, r.output
    assert "exported classifier" in r.output and "parity vs PyTorch" in r.output
    assert "opset 17" in r.output and "onnx.checker full check passed" in r.output
    x = images01(2, 32)
    np.testing.assert_allclose(ort_run(tmp_path / "m.onnx", x),
                               torch_outputs(ckpt, x, probabilities=False),
                               rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("content,message", [
    (None, "does not exist"),
    (b"not a checkpoint", "refused"),
])
def test_cli_export_bad_checkpoint(tmp_path, content, message):
    ck = tmp_path / "ck.pt"
    if content is not None:
        ck.write_bytes(content)
    r = CliRunner().invoke(cli, ["export", str(ck), "--out", str(tmp_path / "m.onnx")])
    assert r.exit_code == 1 and r.output.startswith("Error:") and message in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "m.onnx").exists()


def test_cli_export_out_is_a_folder(tmp_path):
    classifier_ckpt(tmp_path / "ck.pt", size=32)
    r = CliRunner().invoke(cli, ["export", str(tmp_path / "ck.pt"), "--out", str(tmp_path)])
    assert r.exit_code != 0
