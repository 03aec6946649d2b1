"""The ``hpatk serve`` web page in a real browser: headless Chromium (Debian's package,
driven by Playwright for Python) against a live server on 127.0.0.1.

Skipped, saying why, only where no Chromium executable exists (``.ci/run`` installs
Debian's ``chromium`` when it is missing)."""

from __future__ import annotations

import csv
import os
import re
import shutil
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from helpers import serving
from hpatk.cli.main import cli
from playwright import sync_api
from test_onnx_export import shared_export

pytestmark = [pytest.mark.browser, pytest.mark.slow]
STAINS = ("green", "red", "blue", "yellow")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def chromium_path() -> str | None:
    """Debian's Chromium (or $HPATK_CHROMIUM); never a browser Playwright downloads."""
    for candidate in (os.environ.get("HPATK_CHROMIUM"), "/usr/bin/chromium",
                      shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


if chromium_path() is None:  # skipped on a developer's machine, never in CI (.ci/run installs it)
    _why = ("no Chromium executable (/usr/bin/chromium or chromium on PATH): "
            "apt-get install chromium")
    if os.environ.get("CI"):
        raise RuntimeError(_why)
    pytest.skip(_why, allow_module_level=True)


@pytest.fixture(scope="module")
def live_server(tmp_path_factory):
    """``hpatk serve`` in a subprocess on a port of its choosing on 127.0.0.1:
    (base url, model path)."""
    model = shared_export(32)[1].path
    log = tmp_path_factory.mktemp("serve-log") / "serve.log"
    with serving(model, log) as url:
        yield url, model


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from hpatk.core.synth import make_synthetic

    return make_synthetic(tmp_path_factory.mktemp("browser") / "data", n=3, size=64, seed=5,
                          n_test=3, workers=1)


@pytest.fixture
def browser_page(tmp_path):
    exe = chromium_path()
    assert exe is not None  # the module is skipped without one
    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=exe, headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1180, "height": 900})
        try:
            yield context.new_page()
        finally:
            context.close()


def test_page_predicts_like_the_api_and_hpatk_predict(live_server, data, browser_page,
                                                      tmp_path):
    url, model = live_server
    with open(data / "sample_submission.csv", newline="") as f:
        image_id = next(csv.DictReader(f))["Id"]
    paths = {s: data / "test" / f"{image_id}_{s}.png" for s in STAINS}

    # the API and hpatk predict on the same image
    api = httpx.post(f"{url}/v1/predict", timeout=60, files={
        s: (p.name, p.read_bytes(), "image/png") for s, p in paths.items()}).json()
    sub = tmp_path / "sub.csv"
    res = CliRunner().invoke(cli, ["predict", str(model), str(data), "--out", str(sub),
                                   "--provider", "cpu"])
    assert res.exit_code == 0, res.output
    with open(sub, newline="") as f:
        predicted = {r["Id"]: sorted(int(c) for c in r["Predicted"].split())
                     for r in csv.DictReader(f)}[image_id]
    assert sorted(api["labels"]) == predicted

    page = browser_page
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url + "/")
    page.wait_for_selector("body[data-ready='1']", timeout=30_000)
    assert page.is_disabled("#predict")
    for stain, path in paths.items():
        page.set_input_files(f"#file-{stain}", str(path))
    page.click("#predict")
    page.wait_for_selector("#result-card[data-state='done']", timeout=60_000)

    shown = sorted(int(c) for c in page.eval_on_selector_all(
        "#labels li", "els => els.map(e => e.dataset.class)"))
    assert shown == sorted(api["labels"]) == predicted
    rows = page.eval_on_selector_all("#chart .bar-row", """rows => rows.map(r => ({
        cls: +r.dataset.class, on: r.classList.contains('on'),
        val: +r.querySelector('.val').textContent,
        fill: parseFloat(r.querySelector('.fill').style.width),
        thr: r.querySelector('.thr').style.left}))""")
    assert [r["cls"] for r in rows] == api["classes"]
    assert sorted(r["cls"] for r in rows if r["on"]) == shown
    for r, p, t in zip(rows, api["probabilities"], api["thresholds"], strict=True):
        assert r["val"] == pytest.approx(p, abs=6e-4)
        assert r["fill"] == pytest.approx(100 * p, abs=0.01)
        left = re.fullmatch(r"calc\(([\d.]+)% - 1px\)", r["thr"])
        assert left and float(left.group(1)) == pytest.approx(100 * t, abs=0.01), r["thr"]
    natural = page.eval_on_selector("#composite", "img => [img.naturalWidth, img.complete]")
    assert natural == [32, True]  # the model's input size: what the model sees
    # $HPATK_TEST_ARTIFACTS keeps it past pytest's rotation of its temporary folders
    shot = Path(os.environ.get("HPATK_TEST_ARTIFACTS") or tmp_path) / "serve_page.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shot), full_page=True)
    print(f"\nscreenshot of the hpatk serve page: {shot}")
    assert shot.stat().st_size > 10_000

    # a truncated stain: the page shows the server's one-line error, naming the field
    bad = tmp_path / f"{image_id}_red.png"
    bad.write_bytes(paths["red"].read_bytes()[:200])
    page.set_input_files("#file-red", str(bad))
    page.click("#predict")
    page.wait_for_selector("#result-card[data-state='error']", timeout=60_000)
    status = page.inner_text("#status")
    assert "422" in status and "(red)" in status and "truncated" in status

    # dropping the four files (in another order) assigns them by name and predicts again
    import base64

    dropped = [[p.name, base64.b64encode(p.read_bytes()).decode()]
               for p in reversed(list(paths.values()))]
    transfer = page.evaluate_handle("""files => {
        const dt = new DataTransfer();
        for (const [name, b64] of files) {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            dt.items.add(new File([bytes], name, {type: 'image/png'}));
        }
        return dt; }""", dropped)
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
    for stain, path in paths.items():
        assert page.eval_on_selector(f"#file-{stain}", "e => e.files[0].name") == path.name
    page.click("#predict")
    page.wait_for_selector("#result-card[data-state='done']", timeout=60_000)
    shown = sorted(int(c) for c in page.eval_on_selector_all(
        "#labels li", "els => els.map(e => e.dataset.class)"))
    assert shown == predicted
    assert not errors, errors
