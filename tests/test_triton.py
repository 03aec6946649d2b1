"""``hpatk export --triton-repo``: a Triton model repository whose config.pbtxt parses with
Triton's own ModelConfig protobuf (shipped by ``tritonclient``) and agrees with the model."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from hpatk.cli.main import cli
from hpatk.export.runtime import read_metadata
from hpatk.export.triton import triton_config, write_triton_repo
from test_onnx_export import shared_export


@pytest.fixture(scope="module")
def model_config_pb2():
    """Triton's ModelConfig protobuf module, from tritonclient's files (loaded by path:
    ``import tritonclient.grpc`` would also want grpcio, which serving does not need)."""
    spec = importlib.util.find_spec("tritonclient")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("tritonclient is not installed (pip install tritonclient)")
    path = Path(next(iter(spec.submodule_search_locations))) / "grpc" / "model_config_pb2.py"
    if not path.is_file():
        pytest.skip(f"this tritonclient has no {path.name}")
    mod_spec = importlib.util.spec_from_file_location("model_config_pb2", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module


def _parse(pb2, text):
    from google.protobuf import text_format

    return text_format.Parse(text, pb2.ModelConfig())


def _io(model):
    def dims(v):
        return [d.dim_value if d.HasField("dim_value") else -1
                for d in v.type.tensor_type.shape.dim]

    (inp,), (out,) = model.graph.input, model.graph.output
    return inp, dims(inp), out, dims(out)


def test_triton_repo_matches_the_model(model_config_pb2, tmp_path):
    src = shared_export(32)[1].path
    res = write_triton_repo(src, tmp_path / "repo", max_batch=8)
    folder = tmp_path / "repo" / "model"
    assert res.folder == folder
    assert sorted(p.relative_to(folder).as_posix() for p in res.files) == [
        "1/model.onnx", "config.pbtxt", "hpatk_metadata.json", "labels.txt"]
    assert [p.name for p in (tmp_path / "repo").iterdir()] == ["model"]  # no temp left
    assert (folder / "1" / "model.onnx").read_bytes() == src.read_bytes()

    pb = model_config_pb2
    cfg = _parse(pb, (folder / "config.pbtxt").read_text())
    model = onnx.load(str(folder / "1" / "model.onnx"))
    inp, in_dims, out, out_dims = _io(model)
    assert cfg.name == "model" and cfg.platform == "onnxruntime_onnx"
    assert cfg.max_batch_size == 8 and cfg.HasField("dynamic_batching")
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 5000
    assert in_dims[0] == -1 and out_dims[0] == -1  # the batch axis Triton adds
    (ci,), (co,) = cfg.input, cfg.output
    assert (ci.name, list(ci.dims)) == (inp.name, in_dims[1:])
    assert (co.name, list(co.dims)) == (out.name, out_dims[1:])
    f32 = onnx.TensorProto.FLOAT
    assert inp.type.tensor_type.elem_type == out.type.tensor_type.elem_type == f32
    assert ci.data_type == co.data_type == pb.TYPE_FP32
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert params == {"intra_op_thread_count": "0", "inter_op_thread_count": "1",
                      "execution_mode": "0"}
    assert not cfg.optimization.HasField("graph")  # Triton's default: all optimisations
    assert not cfg.instance_group  # float: Triton picks the GPU where there is one

    meta = read_metadata(src)
    assert json.loads((folder / "hpatk_metadata.json").read_text()) == json.loads(
        json.dumps(meta))
    assert co.label_filename == "labels.txt"
    assert (folder / "labels.txt").read_text().splitlines() == meta["class_names"]

    # the repository's model computes what the source does
    x = np.random.default_rng(0).random((3, *in_dims[1:]), dtype=np.float32)
    run = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(
        None, {ci.name: x})[0] for p in (src, folder / "1" / "model.onnx")]
    np.testing.assert_array_equal(run[0], run[1])


def test_triton_config_int8_runs_on_cpu(model_config_pb2):
    meta = read_metadata(shared_export(32)[1].path)
    cfg = _parse(model_config_pb2, triton_config({**meta, "quantization": {"method": "qdq"}},
                                                 name="m8", threads=2))
    (group,) = cfg.instance_group
    assert group.kind == model_config_pb2.ModelInstanceGroup.KIND_CPU and group.count == 1
    assert cfg.parameters["intra_op_thread_count"].string_value == "2"


def test_cli_packages_an_onnx_model_and_replaces_its_own(tmp_path, model_config_pb2):
    src = shared_export(32)[1].path
    repo = tmp_path / "repo"
    r = CliRunner().invoke(cli, ["export", str(src), "--triton-repo", str(repo),
                                 "--triton-name", "hpa", "--triton-max-batch", "4"])
    assert r.exit_code == 0, r.output
    assert "tritonserver --model-repository" in r.output
    cfg = _parse(model_config_pb2, (repo / "hpa" / "config.pbtxt").read_text())
    assert cfg.name == "hpa" and cfg.max_batch_size == 4
    r = CliRunner().invoke(cli, ["export", str(src), "--triton-repo", str(repo),
                                 "--triton-name", "hpa"])  # replaces what hpatk wrote
    assert r.exit_code == 0, r.output
    assert _parse(model_config_pb2, (repo / "hpa" / "config.pbtxt").read_text()
                  ).max_batch_size == 16
    assert sorted(p.name for p in repo.iterdir()) == ["hpa"]


def test_cli_triton_refusals(tmp_path):
    src = shared_export(32)[1].path
    foreign = tmp_path / "repo" / "model"
    foreign.mkdir(parents=True)
    (foreign / "config.pbtxt").write_text("name: 'theirs'\n")
    cases = [
        (["export", str(src), "--triton-repo", str(tmp_path / "repo")],
         "was not written by hpatk"),
        (["export", str(src), "--triton-repo", str(tmp_path / "r2"), "--triton-name", "a b"],
         "--triton-name 'a b'"),
        (["export", str(src)], "already exported"),
        (["export", str(src), "--out", str(tmp_path / "x.onnx"), "--triton-repo",
          str(tmp_path / "r3")], "--out"),
    ]
    for args, message in cases:
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 1 and message in r.output, (args, r.output)
        assert len(r.output.strip().splitlines()) == 1
    assert (foreign / "config.pbtxt").read_text() == "name: 'theirs'\n"
    assert not (tmp_path / "r2").exists() and not (tmp_path / "r3").exists()


def test_cli_export_checkpoint_with_triton_repo(tmp_path, model_config_pb2):
    d = shared_export(32)[2]
    out, repo = tmp_path / "clf.onnx", tmp_path / "repo"
    r = CliRunner().invoke(cli, ["export", str(d / "ck.pt"), "--out", str(out),
                                 "--triton-repo", str(repo)])
    assert r.exit_code == 0, r.output
    assert (repo / "clf" / "1" / "model.onnx").read_bytes() == out.read_bytes()
    assert _parse(model_config_pb2, (repo / "clf" / "config.pbtxt").read_text()).name == "clf"


def test_documented_triton_client_snippet(tmp_path, monkeypatch, capsys, documentation):
    """The documented client (docs/pages/deploy.md), run against a stand-in for Triton that
    executes the repository's model with ONNX Runtime: it prints the labels `hpatk predict`
    gives."""
    import re
    import sys
    import types

    from hpatk.core.synth import make_synthetic
    from hpatk.export.runtime import OnnxClassifier

    section = documentation[documentation.index("Triton runs the graph only"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)

    src = shared_export(32)[1].path
    write_triton_repo(src, tmp_path / "triton-models")
    data = make_synthetic(tmp_path / "data", n=1, size=64, seed=2, n_test=1, workers=1)
    image_id = sorted(p.name for p in (data / "test").iterdir())[0].rsplit("_", 1)[0]
    for s in ("green", "red", "blue", "yellow"):
        (tmp_path / f"x_{s}.png").write_bytes((data / "test" / f"{image_id}_{s}.png")
                                              .read_bytes())

    class InferInput:
        def __init__(self, name, shape, dtype):
            self.name, self.shape, self.dtype = name, shape, dtype

        def set_data_from_numpy(self, x):
            assert x.dtype == np.float32 and list(x.shape) == self.shape
            self.x = x

    class Result:
        def __init__(self, out):
            self.out = out

        def as_numpy(self, name):
            return self.out[name]

    class InferenceServerClient:  # Triton's HTTP client, answered by ONNX Runtime
        def __init__(self, url):
            assert url.startswith("127.0.0.1:")

        def infer(self, model, inputs):
            path = tmp_path / "triton-models" / model / "1" / "model.onnx"
            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            outs = sess.run(None, {i.name: i.x for i in inputs})
            return Result({o.name: v for o, v in zip(sess.get_outputs(), outs, strict=True)})

    http = types.ModuleType("tritonclient.http")
    http.InferInput, http.InferenceServerClient = InferInput, InferenceServerClient
    pkg = types.ModuleType("tritonclient")
    pkg.http = http
    monkeypatch.setitem(sys.modules, "tritonclient", pkg)
    monkeypatch.setitem(sys.modules, "tritonclient.http", http)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/pages/deploy.md", "exec"), {})
    printed = capsys.readouterr().out.strip()

    from hpatk.core.data import SampleRef

    clf = OnnxClassifier(src, provider="cpu")
    ref = SampleRef(id="x", labels=(), root=tmp_path)
    from hpatk.export.predict import load_image

    want = clf.predict(clf.to_float(load_image(clf, ref)[None])).names[0]
    assert printed == repr(want)
