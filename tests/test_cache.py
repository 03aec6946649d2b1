"""Building the HDF5 cache: contents against an independent OpenCV reference, reuse and
rebuild by fingerprint, a SIGKILLed build, ``preprocess``, and the ``hpatk cache`` CLI."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
from helpers import invoke
from hpatk.core.cache import (
    CacheDataset,
    build_cache,
    cache_ids,
    cache_labels,
    default_cache_path,
    ensure_cache,
    read_cache_meta,
)
from hpatk.core.classes import STAINS
from hpatk.core.errors import HpatkError
from hpatk.core.preprocess import make_enhancer, preprocess

ROOT = Path(__file__).resolve().parents[1]


def _rows(data: Path) -> list[tuple[str, list[int]]]:
    with open(data / "train.csv", newline="") as f:
        return [(r["Id"], [int(t) for t in r["Target"].split()]) for r in csv.DictReader(f)]


def _reference(data: Path, image_id: str, size: int, clip=2.0, grid=(8, 8),
               stains=STAINS) -> np.ndarray:
    """Independent pipeline: cv2.imread each stain, CLAHE per plane, INTER_AREA resize."""
    out = []
    for s in stains:
        plane = cv2.imread(str(data / "train" / f"{image_id}_{s}.png"), cv2.IMREAD_UNCHANGED)
        assert plane.dtype == np.uint8 and plane.ndim == 2
        plane = cv2.createCLAHE(clip, grid).apply(plane)
        if plane.shape != (size, size):
            plane = cv2.resize(plane, (size, size), interpolation=cv2.INTER_AREA)
        out.append(plane)
    return np.stack(out)


@pytest.fixture
def data(synth_data: Path, tmp_path: Path) -> Path:
    """A private copy of the synthetic dataset, free to touch and edit."""
    return Path(shutil.copytree(synth_data, tmp_path / "data"))


# --------------------------------------------------------------------------- contents
def test_cache_equals_independent_decode_clahe(synth_data, synth_cache):
    rows = _rows(synth_data)
    with h5py.File(synth_cache, "r") as f:
        assert f["images"].dtype == np.uint8 and f["images"].shape == (len(rows), 4, 64, 64)
        assert f["images"].chunks == (1, 4, 64, 64)
        for i in (0, 1, len(rows) // 2, len(rows) - 1):
            np.testing.assert_array_equal(f["images"][i], _reference(synth_data, rows[i][0], 64))
    assert cache_ids(synth_cache) == [r[0] for r in rows]
    labels = cache_labels(synth_cache)
    assert labels.dtype == np.uint8 and labels.shape == (len(rows), 28)
    for (_, target), row in zip(rows, labels, strict=True):
        assert set(np.flatnonzero(row)) == set(target)


def test_parallel_build_with_resize_equals_reference(synth_data, tmp_path):
    """Two spawn workers, one writer, order preserved; enhancement before the resize."""
    out = build_cache(synth_data, tmp_path / "c.h5", size=24, stains=("blue", "green"),
                      enhance_params={"clip_limit": 3.0, "grid_size": (4, 4)}, workers=2,
                      quiet=True)
    rows = _rows(synth_data)
    with h5py.File(out, "r") as f:
        images = f["images"][()]
        assert [s.decode() for s in f["source"][()]] == ["kaggle"] * len(rows)
    assert images.shape == (len(rows), 2, 24, 24)
    for i, (image_id, _) in enumerate(rows):
        ref = _reference(synth_data, image_id, 24, 3.0, (4, 4), ("blue", "green"))
        np.testing.assert_array_equal(images[i], ref, err_msg=image_id)
    meta = read_cache_meta(out)
    assert meta["enhance"] == {"name": "clahe", "clip_limit": 3.0, "grid_size": [4, 4]}
    assert meta["stains"] == ["blue", "green"] and meta["size"] == 24
    assert meta["compression"] == "none" and meta["hpatk_version"]


def test_blosc_lz4_round_trip(synth_data, synth_cache, tmp_path, capsys):
    out = build_cache(synth_data, tmp_path / "z.h5", size=64, workers=0, quiet=True,
                      compression="blosc-lz4")
    build_cache(synth_data, out, size=64, workers=0, force=True)  # a rebuild keeps it
    assert "--force" in capsys.readouterr().err
    assert read_cache_meta(out)["compression"] == "blosc-lz4"
    with h5py.File(out, "r") as f, h5py.File(synth_cache, "r") as g:
        assert "32001" in f["images"]._filters  # the blosc filter id
        np.testing.assert_array_equal(f["images"][()], g["images"][()])
        want = g["images"][[2, 3, 40]]
    ds = CacheDataset(out)  # through HDF5's filter pipeline, not the direct-read path
    got, _ = ds.read_batch([40, 2, 3])
    np.testing.assert_array_equal(got.numpy(), want[[2, 0, 1]])
    assert ds._segs[0][1] is None


def test_enhance_none_is_plain_resize(synth_data, tmp_path):
    out = build_cache(synth_data, tmp_path / "n.h5", enhance="none", size=32, workers=0,
                      quiet=True)
    image_id = _rows(synth_data)[3][0]
    plane = cv2.imread(str(synth_data / "train" / f"{image_id}_red.png"), cv2.IMREAD_UNCHANGED)
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(
            f["images"][3, 1], cv2.resize(plane, (32, 32), interpolation=cv2.INTER_AREA))


def test_extra_hpav18_rows_follow_the_kaggle_rows(synth_data, tmp_path, capsys):
    ext = tmp_path / "hpav18"
    (ext / "train").mkdir(parents=True)
    rng = np.random.default_rng(3)
    ids = ["10580_1610_C1_1", "10580_1610_C1_2"]
    for image_id in ids:
        for s in STAINS:  # RGB files, larger than the Kaggle images
            bgr = (rng.random((96, 96, 3)) ** 2 * 200).astype(np.uint8)
            cv2.imwrite(str(ext / "train" / f"{image_id}_{s}.png"), bgr)
    (ext / "HPAv18RBGY_wodpl.csv").write_text(f"Id,Target\n{ids[0]},0 2\n{ids[1]},27\n")
    out = build_cache(synth_data, tmp_path / "c.h5", size=32, extra=[ext], workers=0)
    meta = read_cache_meta(out)
    assert meta["n"] == 98 and meta["sources"] == {"kaggle": 96, "external": 2}
    assert [i["source"] for i in meta["inputs"]] == ["kaggle", "external"]
    assert cache_ids(out)[-2:] == ids
    assert list(np.flatnonzero(cache_labels(out)[-2])) == [0, 2]
    from hpatk.core.data import load_stains, read_external

    ref = read_external(ext)[1]
    want = np.stack([cv2.resize(cv2.createCLAHE(2.0, (8, 8)).apply(c), (32, 32),
                                interpolation=cv2.INTER_AREA) for c in load_stains(ref)])
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(f["images"][-1], want)
        assert [s.decode() for s in f["source"][-3:]] == ["kaggle", "external", "external"]
    capsys.readouterr()
    png = ext / "train" / f"{ids[0]}_red.png"
    os.utime(png, ns=(png.stat().st_atime_ns, png.stat().st_mtime_ns + 10**9))
    build_cache(synth_data, out, size=32, extra=[ext], workers=0)
    assert "inputs changed" in capsys.readouterr().err  # external files are fingerprinted too

    dup = tmp_path / "dup"
    shutil.copytree(ext, dup)
    with pytest.raises(HpatkError, match="appears twice"):
        build_cache(synth_data, tmp_path / "d.h5", size=32, extra=[ext, dup], workers=0)


# ------------------------------------------------------------------- reuse and rebuild
def _build(data: Path, out: Path, capsys, **kw) -> str:
    build_cache(data, out, workers=0, **{"size": 32, **kw})
    return capsys.readouterr().err


def test_reuse_and_rebuild_by_fingerprint(data, tmp_path, capsys):
    out = tmp_path / "c.h5"
    assert "no cache yet" in _build(data, out, capsys)
    inode = out.stat().st_ino
    assert "cache up to date" in _build(data, out, capsys)
    assert out.stat().st_ino == inode  # reused: the very same file

    png = data / "train" / f"{_rows(data)[5][0]}_yellow.png"
    st = png.stat()
    os.utime(png, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touch
    err = _build(data, out, capsys)
    assert "inputs changed" in err and png.name in err
    assert out.stat().st_ino != inode
    assert "cache up to date" in _build(data, out, capsys)

    err = _build(data, out, capsys, enhance_params={"clip_limit": 3.0})
    assert "enhance" in err and "3.0" in err and "up to date" not in err
    assert read_cache_meta(out)["enhance"]["clip_limit"] == 3.0
    err = _build(data, out, capsys, enhance_params={"clip_limit": 3.0}, size=16)
    assert "size 32 -> 16" in err and read_cache_meta(out)["shape"] == (96, 4, 16, 16)
    err = _build(data, out, capsys, enhance_params={"clip_limit": 3.0}, size=16,
                 stains=("green",))
    assert "stains" in err and read_cache_meta(out)["shape"] == (96, 1, 16, 16)
    inode = out.stat().st_ino
    assert "--force" in _build(data, out, capsys, enhance_params={"clip_limit": 3.0}, size=16,
                               stains=("green",), force=True)
    assert out.stat().st_ino != inode


def test_relabelled_row_rebuilds(data, tmp_path, capsys):
    out = tmp_path / "c.h5"
    _build(data, out, capsys)
    text = (data / "train.csv").read_text().splitlines()
    image_id = text[1].split(",")[0]
    text[1] = f"{image_id},27"
    (data / "train.csv").write_text("\n".join(text) + "\n")
    assert "inputs changed" in _build(data, out, capsys)
    assert list(np.flatnonzero(cache_labels(out)[0])) == [27]


def test_concurrent_builders_build_once(data, tmp_path, capsys):
    """DDP ranks calling ensure_cache together: one builds, the others wait and reuse."""
    import threading

    out = tmp_path / "c.h5"
    errors: list[BaseException] = []

    def rank() -> None:
        try:
            build_cache(data, out, size=32, workers=0)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=rank) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    err = capsys.readouterr().err
    assert not errors
    assert err.count("building ") == 1 and err.count("cache up to date") == 2
    assert read_cache_meta(out)["n"] == 96


def test_damaged_cache_is_rebuilt_foreign_file_is_kept(data, tmp_path, capsys):
    out = tmp_path / "c.h5"
    _build(data, out, capsys)
    with open(out, "r+b") as f:
        f.truncate(out.stat().st_size // 2)
    err = _build(data, out, capsys)
    assert "the existing file is unusable" in err and "truncated" in err
    assert read_cache_meta(out)["n"] == 96

    notes = tmp_path / "notes.h5"
    notes.write_bytes(b"not an hdf5 file at all")
    with pytest.raises(HpatkError, match="not an HDF5 cache; choose another --out"):
        _build(data, notes, capsys)
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = [1, 2, 3]
    with pytest.raises(HpatkError, match="hpatk did not write"):
        _build(data, foreign, capsys)
    assert notes.read_bytes() == b"not an hdf5 file at all"
    assert "--force" in _build(data, foreign, capsys, force=True)  # explicit: replaced
    assert read_cache_meta(foreign)["n"] == 96


def test_ensure_cache_folder_then_file(data, tmp_path, capsys):
    path = ensure_cache(data, size=32, workers=0, cache_dir=tmp_path / "caches")
    assert path == default_cache_path(data, size=32, cache_dir=tmp_path / "caches")
    assert path.name.startswith("data.clahe-32px-") and path.exists()
    assert "no cache yet" in capsys.readouterr().err
    assert ensure_cache(data, size=32, workers=0, cache_dir=tmp_path / "caches") == path
    assert "cache up to date" in capsys.readouterr().err
    assert ensure_cache(path) == path  # a file is validated and returned as is
    other = default_cache_path(data, size=32, enhance_params={"clip_limit": 3},
                               cache_dir=tmp_path / "caches")
    assert other != path  # different settings never share a file
    with pytest.raises(HpatkError, match="does not exist"):
        ensure_cache(tmp_path / "nope.h5")


def test_bad_options_are_one_line_errors(data, tmp_path):
    with pytest.raises(HpatkError, match="stains"):
        build_cache(data, tmp_path / "c.h5", stains=("green", "purple"), quiet=True)
    with pytest.raises(HpatkError, match="does not accept"):
        build_cache(data, tmp_path / "c.h5", enhance="he", enhance_params={"clip_limit": 2},
                    quiet=True)
    with pytest.raises(HpatkError, match="unknown enhancer"):
        build_cache(data, tmp_path / "c.h5", enhance="clahee", quiet=True)
    (data / "train" / f"{_rows(data)[2][0]}_blue.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(HpatkError) as exc:
        build_cache(data, tmp_path / "c.h5", size=16, workers=0, quiet=True)
    assert "_blue.png" in str(exc.value) and "\n" not in str(exc.value)
    assert not (tmp_path / "c.h5").exists()
    assert not list(tmp_path.glob(".c.h5.*.tmp"))


# ---------------------------------------------------------------------- killed build
SLOW_PLUGIN = '''
import os
import time
import uuid
from hpatk.core import Enhancer, hookimpl


class Slow(Enhancer):
    """Identity that leaves one mark file per image; with SLOW_STALL_AFTER=N set, a worker
    stops for good once N marks exist, so a build is surely mid-way when the test kills
    it (however slow the machine). A stalled worker ends when its parent dies: the pool
    initializer's watcher thread calls os._exit."""

    name = "slow"

    def forward(self, x):
        return x

    def apply_uint8(self, image):
        marks = os.environ["SLOW_MARKS"]
        open(os.path.join(marks, uuid.uuid4().hex), "w").close()
        stall = int(os.environ.get("SLOW_STALL_AFTER", "0"))
        while stall and len(os.listdir(marks)) >= stall:
            time.sleep(0.05)
        return image


@hookimpl
def hpatk_register_enhancers(register):
    register("slow", lambda **p: Slow(**p))
'''


def _group_alive(pgid: int) -> list[int]:
    alive = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                alive.append(int(d.name))
    return alive


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").exists(), reason="needs /proc")
def test_sigkill_mid_build_leaves_nothing_and_rerun_completes(synth_data, tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "slow_enhancer.py").write_text(SLOW_PLUGIN)
    out = tmp_path / "out" / "cache.h5"
    script = textwrap.dedent(f"""
        from hpatk.core.cache import build_cache
        if __name__ == "__main__":
            build_cache({str(synth_data)!r}, {str(out)!r}, enhance="slow", size=32, workers=2)
    """)
    marks = tmp_path / "marks"  # one file per image enhanced
    marks.mkdir()
    env = {**os.environ, "HPATK_PLUGINS_DIR": str(plugins), "SLOW_MARKS": str(marks)}
    # the workers stall after a third of the images: the kill lands mid-build, by
    # construction rather than by how fast this process polls
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True,
                            env={**env, "SLOW_STALL_AFTER": "30"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300  # a hang guard: the marks come in seconds
    try:
        while len(list(marks.iterdir())) < 30:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the build never started"
            time.sleep(0.02)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)  # no stalled workers left behind
        raise
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(list(marks.iterdir())) < 96
    assert list(out.parent.glob(".cache.h5.*.tmp"))  # the partial file is not at `out`
    assert not out.exists()
    # the spawned workers notice their parent died and exit (no orphans left waiting)
    deadline = time.monotonic() + 60  # they poll every 0.5 s; 60 s: a hang guard
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _group_alive(proc.pid)

    rerun = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                           text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "left by a killed process" in rerun.stderr
    assert not list(out.parent.glob(".cache.h5.*.tmp"))
    meta = read_cache_meta(out)
    assert meta["n"] == 96 and meta["enhance"] == {"name": "slow"}
    image_id = _rows(synth_data)[-1][0]
    plane = cv2.imread(str(synth_data / "train" / f"{image_id}_green.png"),
                       cv2.IMREAD_UNCHANGED)
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(
            f["images"][-1, 0], cv2.resize(plane, (32, 32), interpolation=cv2.INTER_AREA))


# ------------------------------------------------------------------------- preprocess
def test_preprocess_matches_opencv_and_checks_input():
    rng = np.random.default_rng(0)
    image = (rng.random((3, 80, 80)) ** 3 * 120).astype(np.uint8)  # dim, low contrast
    clahe = make_enhancer("clahe", {"clip_limit": 2.0, "grid_size": (8, 8)})
    got = preprocess(image, clahe, 40)
    want = np.stack([cv2.resize(cv2.createCLAHE(2.0, (8, 8)).apply(c), (40, 40),
                                interpolation=cv2.INTER_AREA) for c in image])
    np.testing.assert_array_equal(got, want)
    assert got.flags.c_contiguous and got.dtype == np.uint8
    np.testing.assert_array_equal(preprocess(image, None, None), image)
    # a recorded config rebuilds the same enhancer
    again = make_enhancer(json.loads(json.dumps(clahe.config())))
    np.testing.assert_array_equal(preprocess(image, again, 40), got)
    with pytest.raises(HpatkError, match="uint8"):
        preprocess(image.astype(np.float32), clahe, 40)
    with pytest.raises(HpatkError, match="uint8"):
        preprocess(image[0], clahe, 40)


# -------------------------------------------------------------------------------- CLI
def test_cli_build_and_info(data, tmp_path):
    out = tmp_path / "c.h5"
    r = invoke("cache", "build", data, "--out", out, "--size", 32, "--workers", 0,
               "--clip-limit", 2.5, "--grid-size", 4, ok=False)
    assert r.exit_code == 0, r.output
    assert "96 x 4 x 32 x 32 uint8" in r.output and "clip_limit=2.5" in r.output
    assert read_cache_meta(out)["enhance"]["grid_size"] == [4, 4]
    r = invoke("cache", "build", data, "--out", out, "--size", 32, "--workers", 0,
               "-p", "clip_limit=2.5", "-p", "grid_size=4,4", ok=False)
    assert r.exit_code == 0 and "cache up to date" in r.output

    r = invoke("cache", "info", out, ok=False)
    assert r.exit_code == 0, r.output
    meta = read_cache_meta(out)
    counts = cache_labels(out).sum(axis=0)
    assert "96 x 4 x 32 x 32 uint8" in r.output and meta["fingerprint"] in r.output
    assert "compression none" in r.output and "on disk" in r.output
    assert re.search(rf"\b0 Nucleoplasm +{int(counts[0])} ", r.output)
    assert re.search(rf"\b27 Rods & rings +{int(counts[27])} ", r.output)
    assert "synthetic    0 batches" in r.output
    r = invoke("cache", "info", out, "--json", ok=False)
    info = json.loads(r.output)
    assert info["class_counts"] == counts.tolist() and info["shape"] == [96, 4, 32, 32]
    assert info["size_on_disk"] == out.stat().st_size


def test_cli_default_out_is_what_ensure_cache_reuses(data, tmp_path):
    r = invoke("cache", "build", data, "--size", 16, "--workers", 0, ok=False)
    assert r.exit_code == 0, r.output
    path = default_cache_path(data, size=16)
    assert str(path) in r.output and path.parent == data.parent
    assert ensure_cache(data, size=16, quiet=True) == path


def test_cli_errors(data, tmp_path):
    r = invoke("cache", "build", data, "--enhance", "nope", "--out", tmp_path / "c.h5", ok=False)
    assert r.exit_code == 1 and r.output.startswith("Error: unknown enhancer 'nope'")
    r = invoke("cache", "build", data, "-p", "clip_limit", "--out", tmp_path / "c.h5", ok=False)
    assert r.exit_code == 2 and "KEY=VALUE" in r.output
    r = invoke("cache", "info", tmp_path / "missing.h5", ok=False)
    assert r.exit_code == 1 and "no such cache file" in r.output
