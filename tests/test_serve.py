"""``hpatk serve``: the HTTP API on FastAPI's TestClient -- the same decode -> enhance ->
resize -> ONNX Runtime path as ``hpatk predict`` (equal labels and probabilities), dynamic
batching, every endpoint, and every kind of bad input answered with one line of JSON
while the server goes on serving."""

from __future__ import annotations

import csv
import functools
import io
import json
import logging
import re
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from helpers import serving
from hpatk.cli.main import cli
from hpatk.core.data import SampleRef, load_stains
from hpatk.export.runtime import OnnxClassifier
from hpatk.export.serve import Batcher, ServeOptions, create_app
from test_onnx_export import shared_export

STAINS = ("green", "red", "blue", "yellow")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A synthetic Kaggle-layout folder: 6 test images of 64 px (the model takes 32 px)."""
    from hpatk.core.synth import make_synthetic

    return make_synthetic(tmp_path_factory.mktemp("serve") / "data", n=6, size=64, seed=3,
                          n_test=6, workers=1)


@pytest.fixture(scope="module")
def model_path():
    return shared_export(32)[1].path


@pytest.fixture(scope="module")
def clf(model_path):
    return OnnxClassifier(model_path, provider="cpu", threads=1)


@pytest.fixture(scope="module")
def client(clf):
    app = create_app(clf, ServeOptions(max_batch=8, max_wait_ms=2, max_request_mb=1,
                                       workers=2))
    with TestClient(app) as c:
        yield c


def _ids(data):
    with open(data / "sample_submission.csv", newline="") as f:
        return [r["Id"] for r in csv.DictReader(f)]


def _files(data, image_id, stains=STAINS):
    return {s: (f"{image_id}_{s}.png", (data / "test" / f"{image_id}_{s}.png").read_bytes(),
                "image/png") for s in stains}


def _npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _raw(data, image_id):
    return load_stains(SampleRef(id=image_id, labels=(), root=data / "test"), STAINS)


def _ok(client, data):
    """A good request still gets a good answer."""
    image_id = _ids(data)[0]
    r = client.post("/v1/predict", files=_files(data, image_id))
    assert r.status_code == 200, r.text
    return r.json()


# -- the prediction ---------------------------------------------------------------------
def test_served_labels_equal_hpatk_predict(client, data, model_path, tmp_path):
    sub, probs_csv = tmp_path / "sub.csv", tmp_path / "probs.csv"
    res = CliRunner().invoke(cli, ["predict", str(model_path), str(data), "--out", str(sub),
                                   "--probs", str(probs_csv), "--provider", "cpu"])
    assert res.exit_code == 0, res.output
    with open(sub, newline="") as f:
        want = {r["Id"]: sorted(int(c) for c in r["Predicted"].split()) for r in csv.DictReader(f)}
    with open(probs_csv, newline="") as f:
        want_p = {r["Id"]: [float(v) for k, v in r.items() if k != "Id"]
                  for r in csv.DictReader(f)}
    assert len(want) == 6
    for image_id in _ids(data):
        r = client.post("/v1/predict", files=_files(data, image_id))
        assert r.status_code == 200, r.text
        body = r.json()
        assert sorted(body["labels"]) == want[image_id]
        np.testing.assert_allclose(body["probabilities"], want_p[image_id], atol=2e-6)
        assert body["names"] == [body["class_names"][body["classes"].index(c)]
                                 for c in body["labels"]]
        assert body["model"]["name"] == "model" and len(body["model"]["fingerprint"]) == 64
        assert set(body["timings_ms"]) == {"decode", "queue", "inference", "total"}


def test_predict_arrays_npy_npz_uint16(client, data, clf):
    image_id = _ids(data)[1]
    want = client.post("/v1/predict", files=_files(data, image_id)).json()["probabilities"]
    raw = _raw(data, image_id)
    npz = io.BytesIO()
    np.savez_compressed(npz, image=raw)
    wide = raw.astype(np.uint16) * 257  # 16-bit is scaled exactly as 16-bit PNGs are
    for kwargs in ({"content": _npy(raw), "headers": {"content-type": "application/x-npy"}},
                   {"content": npz.getvalue(),
                    "headers": {"content-type": "application/octet-stream"}},
                   {"files": {"image": ("x.npy", _npy(raw))}},
                   {"files": {"image": ("x.npy", _npy(wide))}}):
        r = client.post("/v1/predict", **kwargs)
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(r.json()["probabilities"], want, atol=2e-6)
    ref = clf.predict_probs(raw[None])[0]
    np.testing.assert_allclose(want, ref, atol=2e-6)


def test_tta_flips_and_composite(client, data, clf):
    image_id = _ids(data)[2]
    r = client.post("/v1/predict?tta=flips&composite=1", files=_files(data, image_id))
    assert r.status_code == 200, r.text
    body = r.json()
    raw = _raw(data, image_id)
    np.testing.assert_allclose(body["probabilities"], clf.predict_probs(raw[None], tta="flips")[0],
                               atol=2e-6)
    assert not np.allclose(body["probabilities"], clf.predict_probs(raw[None])[0], atol=1e-7)
    assert body["tta"] == "flips"
    import base64

    import cv2
    from hpatk.core.picture import composite

    prefix = "data:image/png;base64,"
    assert body["composite"].startswith(prefix)
    png = np.frombuffer(base64.b64decode(body["composite"][len(prefix):]), np.uint8)
    rgb = cv2.imdecode(png, cv2.IMREAD_COLOR)[:, :, ::-1]
    np.testing.assert_array_equal(rgb, composite(clf.preprocess(raw), STAINS))


def test_batcher_gathers_concurrent_images(clf, data):
    """Eight images from eight threads, at most four per call: two full batches. A batch
    closes when it is full, so the generous max_wait (a hang guard, never reached: a full
    batch does not wait) keeps scheduling out of the result; a partial batch going out
    after max_wait is checked alone, where no other thread can join it."""
    ids = _ids(data)
    images = [clf.preprocess(_raw(data, ids[i % len(ids)])) for i in range(8)]
    sizes = []
    start = threading.Event()
    batcher = Batcher(clf, max_batch=4, max_wait_s=60, on_batch=lambda n, s: sizes.append(n))
    try:
        def go(im):
            start.wait()
            return batcher.submit(im).result(timeout=120)

        with ThreadPoolExecutor(8) as pool:
            futs = [pool.submit(go, im) for im in images]
            start.set()
            results = [f.result() for f in futs]
    finally:
        batcher.close()
    assert not batcher.alive
    assert sizes == [4, 4]
    assert [info["batch"] for _, info in results] == [4] * 8
    want = clf.probs_of(clf.to_float(np.stack(images)))
    np.testing.assert_allclose(np.stack([p for p, _ in results]), want, atol=2e-6)

    alone = Batcher(clf, max_batch=4, max_wait_s=0.01)
    try:
        probs, info = alone.submit(images[0]).result(timeout=120)
    finally:
        alone.close()
    assert info["batch"] == 1  # not full: it goes out once max_wait has passed
    np.testing.assert_allclose(probs, want[0], atol=2e-6)


def test_concurrent_requests_are_batched(clf, data):
    """Six concurrent requests, max_batch 6: one call. The batch closes when full, so the
    long max_wait is only a hang guard (with 300 ms, a loaded machine could let it expire
    between two requests and split the batch)."""
    ids = _ids(data)
    app = create_app(clf, ServeOptions(max_batch=len(ids), max_wait_ms=60_000, workers=4))
    with TestClient(app) as c:
        with ThreadPoolExecutor(len(ids)) as pool:
            bodies = list(pool.map(lambda i: c.post("/v1/predict", files=_files(data, i)).json(),
                                   ids))
        text = c.get("/metrics").text
    assert [b["batch_size"] for b in bodies] == [len(ids)] * len(ids)
    fams = _metrics(text)
    assert fams["hpatk_images_total"][()] == len(ids)
    assert fams["hpatk_batch_size_count"][()] == 1  # one call for all the images


# -- endpoints --------------------------------------------------------------------------
def _metrics(text):
    from prometheus_client.parser import text_string_to_metric_families

    out: dict = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_health_ready_metadata(client, clf):
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.json()["ready"] is True and r.json()["providers"] == ["CPUExecutionProvider"]
    meta = client.get("/v1/metadata").json()
    assert meta["metadata"] == json.loads(json.dumps(clf.metadata))
    assert meta["providers"] == clf.providers
    assert meta["stains"] == list(STAINS)
    assert meta["stain_colours"]["yellow"] == [0.5, 0.5, 0.0]
    assert meta["serve"]["max_batch"] == 8
    assert meta["thresholds"] == pytest.approx(clf.thresholds.tolist())


def test_readyz_fails_without_the_batcher(clf):
    app = create_app(clf)
    client = TestClient(app)  # no `with`: the lifespan (batcher) never started
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["ready"] is False


def test_metrics_count_requests_errors_and_batches(clf, data):
    app = create_app(clf, ServeOptions(max_request_mb=1))
    with TestClient(app) as c:
        for _ in range(3):
            _ok(c, data)
        c.post("/v1/predict", files=_files(data, _ids(data)[0], STAINS[:3]))
        c.post("/v1/predict?tta=bad", files=_files(data, _ids(data)[0]))
        c.get("/healthz")
        r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    m = _metrics(r.text)
    req = m["hpatk_requests_total"]
    assert req[(("code", "200"), ("endpoint", "/v1/predict"))] == 3
    assert req[(("code", "400"), ("endpoint", "/v1/predict"))] == 2
    assert req[(("code", "200"), ("endpoint", "/healthz"))] == 1
    assert m["hpatk_errors_total"][(("kind", "bad_request"),)] == 2
    assert m["hpatk_images_total"][()] == 3
    assert m["hpatk_batch_size_count"][()] == 3 and m["hpatk_batch_size_sum"][()] == 3
    assert m["hpatk_request_seconds_count"][(("endpoint", "/v1/predict"),)] == 5


def test_page_is_self_contained(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    for needle in ('id="predict"', 'id="labels"', 'id="chart"', 'id="composite"',
                   "/v1/predict", "/v1/metadata"):
        assert needle in html

    # nothing fetched from elsewhere: every src/href and fetch() is local
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert not re.search(r"""fetch\(\s*[`"']https?:""", html)
    assert "@import" not in html
    assert client.get("/docs").status_code == 404  # FastAPI's docs page loads a CDN's JS
    assert "/v1/predict" in client.get("/openapi.json").json()["paths"]


# -- bad input --------------------------------------------------------------------------
def _png(array) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", array)
    assert ok
    return buf.tobytes()


@functools.cache
def _bomb() -> bytes:
    """A PNG of 10000 x 10000 black pixels: 100 MB decoded, about 100 kB encoded."""
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (len(body).to_bytes(4, "big") + kind + body
                + zlib.crc32(kind + body).to_bytes(4, "big"))

    side = 10000
    ihdr = side.to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])  # 8-bit gray
    z = zlib.compressobj(6)
    rows = b"\0" * ((side + 1) * 1000)  # 1000 rows of filter byte 0 + black pixels
    raw = b"".join(z.compress(rows) for _ in range(side // 1000)) + z.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def _bad_cases(data):
    image_id = _ids(data)[0]
    good = _files(data, image_id)
    truncated = dict(good, red=("r.png", good["red"][1][:len(good["red"][1]) // 2], "image/png"))
    text = dict(good, blue=("b.png", b"hello, not an image", "image/png"))
    empty = dict(good, green=("g.png", b"", "image/png"))
    small = dict(good, yellow=("y.png", _png(np.zeros((32, 32), np.uint8)), "image/png"))
    rgb = dict(good, green=("g.png", _png(np.random.default_rng(0).integers(
        0, 255, (64, 64, 3), dtype=np.uint8)), "image/png"))
    pickled = io.BytesIO()
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    two = io.BytesIO()
    np.savez(two, a=np.zeros((4, 8, 8), np.uint8), b=np.zeros((4, 8, 8), np.uint8))
    npy = {"content-type": "application/x-npy"}
    return {
        "missing stain": ({"files": {k: v for k, v in good.items() if k != "yellow"}},
                          400, "yellow"),
        "truncated png": ({"files": truncated}, 422, "red"),
        "not an image": ({"files": text}, 422, "blue"),
        "empty file": ({"files": empty}, 422, "green"),
        "stains of different sizes": ({"files": small}, 422, "yellow"),
        "rgb where gray expected": ({"files": rgb}, 422, "green"),
        "unknown field": ({"files": {**good, "purple": ("p.png", b"x", "image/png")}},
                          400, "purple"),
        "text field": ({"files": good, "data": {"green2": "x"}}, 400, "green2"),
        "image and stains": ({"files": {**good, "image": ("x.npy", _npy(
            np.zeros((4, 8, 8), np.uint8)))}}, 400, None),
        "three stains array": ({"content": _npy(np.zeros((3, 16, 16), np.uint8)),
                                "headers": npy}, 422, "image"),
        "float array": ({"content": _npy(np.zeros((4, 16, 16), np.float64)),
                         "headers": npy}, 422, "image"),
        "2d array": ({"content": _npy(np.zeros((16, 16), np.uint8)), "headers": npy},
                     422, "image"),
        "pickled array": ({"content": pickled.getvalue(), "headers": npy}, 422, "image"),
        "npz of two arrays": ({"content": two.getvalue(), "headers": npy}, 422, "image"),
        "garbage array": ({"content": b"\x93NUMPY garbage", "headers": npy}, 422, "image"),
        "empty body": ({"content": b"", "headers": npy}, 400, "image"),
        "wrong content type": ({"content": b"hello", "headers": {"content-type": "text/plain"}},
                               415, "content-type"),
        "malformed multipart": ({"content": b"--x\r\nnonsense",
                                 "headers": {"content-type": "multipart/form-data; boundary=x"}},
                                400, None),
        "bad tta": ({"files": good, "params": {"tta": "rotate"}}, 400, "tta"),
        "too large (declared)": ({"files": {**good, "green": ("g.png", b"\0" * (1 << 20 + 1))}},
                                 413, "body"),
        "decompression bomb": ({"files": dict(good, blue=("b.png", _bomb(), "image/png"))},
                               413, "blue"),
    }


CASES = ["missing stain", "truncated png", "not an image", "empty file",
         "stains of different sizes", "rgb where gray expected", "unknown field", "text field",
         "image and stains", "three stains array", "float array", "2d array", "pickled array",
         "npz of two arrays", "garbage array", "empty body", "wrong content type",
         "malformed multipart", "bad tta", "too large (declared)", "decompression bomb"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_of_json(client, data, case):
    kwargs, status, field = _bad_cases(data)[case]
    r = client.post("/v1/predict", **kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) <= {"error", "field"} and body["error"]
    assert "\n" not in body["error"] and "Traceback" not in body["error"]
    if field is not None:
        assert body["field"] == field, body
    _ok(client, data)  # and the server goes on serving


def test_bad_input_cases_are_all_tested(data):
    assert sorted(_bad_cases(data)) == sorted(CASES)


def test_too_large_streamed_without_length(client, data):
    def chunks():
        for _ in range(20):
            yield b"\0" * 65536  # 1.25 MiB in all, past the 1 MiB cap

    r = client.post("/v1/predict", content=chunks(),
                    headers={"content-type": "application/octet-stream"})
    assert r.status_code == 413 and r.json()["field"] == "body"
    _ok(client, data)


def test_internal_error_500_with_correlation_id(clf, data, caplog, monkeypatch):
    app = create_app(clf)
    calls = {"n": 0}
    real = clf.probs_of

    def flaky(x, *, tta="none"):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("simulated ONNX Runtime failure")
        return real(x, tta=tta)

    monkeypatch.setattr(clf, "probs_of", flaky)
    with TestClient(app) as c, caplog.at_level(logging.ERROR, logger="hpatk.serve"):
        r = c.post("/v1/predict", files=_files(data, _ids(data)[0]))
        assert r.status_code == 500
        cid = r.json()["correlation_id"]
        assert len(cid) == 16 and "simulated" not in r.text
        assert any(cid in rec.getMessage() and rec.exc_info for rec in caplog.records)
        assert _ok(c, data)["labels"]
        assert c.get("/readyz").status_code == 200


# -- the command ------------------------------------------------------------------------
def test_cli_defaults_match_serve_options():
    from hpatk.cli.serve import DEFAULTS

    opts = ServeOptions()
    assert DEFAULTS == {k: getattr(opts, k) for k in DEFAULTS}


def test_cli_serve_refuses_bad_model_and_busy_port(tmp_path, model_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    r = CliRunner().invoke(cli, ["serve", str(bad), "--port", "0"])
    assert r.exit_code == 1 and "not a readable ONNX file" in r.output
    assert len(r.output.strip().splitlines()) == 1
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = CliRunner().invoke(cli, ["serve", str(model_path), "--port", str(port)])
    assert r.exit_code == 1 and f"--port {port}: cannot listen" in r.output
    assert len(r.output.strip().splitlines()) == 1
    r = CliRunner().invoke(cli, ["serve", str(model_path), "--max-batch", "0"])
    assert r.exit_code == 2 and "--max-batch" in r.output


def test_cli_serve_port_0_says_the_port_it_listens_on(tmp_path, model_path, clf):
    """--port 0: the server binds a free port itself and prints it (a test or a script
    starting a server needs no free-port guess that another process could take first)."""
    with serving(model_path, tmp_path / "serve.log") as url:
        assert not url.endswith(":0")
        meta = httpx.get(f"{url}/v1/metadata", timeout=60).json()  # this model's server
        assert meta["metadata"] == json.loads(json.dumps(clf.metadata))
