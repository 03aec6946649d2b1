"""Reading the HDF5 cache: CacheDataset under 0/N workers with fork and spawn, fold and
class selection, the synthetic group (round trip, exclusion, crash safety), and damaged
files giving one-line errors."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hpatk.cli.main import cli
from hpatk.core.cache import (
    CacheDataset,
    add_synthetic,
    cache_labels,
    read_cache_meta,
    remove_synthetic,
    synthetic_info,
)
from hpatk.core.classes import TOP5
from hpatk.core.errors import HpatkError
from torch.utils.data import DataLoader


@pytest.fixture
def cache(synth_cache: Path, tmp_path: Path) -> Path:
    """A private copy of the session cache, free to modify."""
    return Path(shutil.copy(synth_cache, tmp_path / "cache.h5"))


def _images(path: Path) -> np.ndarray:
    # locking=False as the cache's own readers: HDF5 refuses to open a file twice in one
    # process with different locking flags
    with h5py.File(path, "r", locking=False) as f:
        return f["images"][()]


# ------------------------------------------------------------------------------ basics
def test_items_labels_and_selection(synth_cache):
    images, labels = _images(synth_cache), cache_labels(synth_cache)
    ds = CacheDataset(synth_cache)
    assert len(ds) == 96 and ds.labels.shape == (96, 28)
    x, y = ds[7]
    assert x.dtype == torch.uint8 and x.shape == (4, 64, 64)
    assert torch.equal(x, torch.from_numpy(images[7]))
    assert y.dtype == torch.float32 and torch.equal(y, torch.from_numpy(labels[7]).float())
    assert ds.meta["enhance"]["name"] == "clahe" and ds.meta["size"] == 64
    assert ds._segs[0][1] is not None  # uncompressed: images read straight from the file

    rows = np.array([50, 3, 3, 95, 10])
    sub = CacheDataset(synth_cache, rows, classes=TOP5, as_float=True)
    assert len(sub) == 5 and sub.ids == [ds.ids[i] for i in rows]
    np.testing.assert_array_equal(sub.labels, labels[rows])
    x, y = sub[1]
    assert x.dtype == torch.float32 and torch.allclose(x * 255, torch.from_numpy(images[3])
                                                       .float())
    assert torch.equal(y, torch.from_numpy(labels[3][list(TOP5)]).float())
    mask = np.zeros(96, bool)
    mask[[1, 2]] = True
    assert CacheDataset(synth_cache, mask).ids == ds.ids[1:3]
    with pytest.raises(IndexError):
        sub[5]
    with pytest.raises(HpatkError, match=r"0\.\.95"):
        CacheDataset(synth_cache, [0, 96])
    with pytest.raises(HpatkError, match="synthetic"):
        CacheDataset(synth_cache, synthetic="maybe")


def test_batched_reads_equal_single_reads(synth_cache):
    ds = CacheDataset(synth_cache, classes=[0, 25])
    order = [9, 10, 11, 3, 95, 10, 0, 1, 2, -1]  # runs, a repeat, unsorted, negative
    xb, yb = ds.read_batch(order)
    assert xb.shape == (10, 4, 64, 64) and yb.shape == (10, 2)
    for k, i in enumerate(order):
        x, y = ds[i]
        assert torch.equal(xb[k], x) and torch.equal(yb[k], y)


def test_pickles_without_a_handle(synth_cache):
    ds = CacheDataset(synth_cache)
    ds[0]  # opens the file in this process
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._h5 is None and torch.equal(clone[5][0], ds[5][0])


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_dataloader_workers_return_identical_bytes(synth_cache, context):
    images = _images(synth_cache)
    ds = CacheDataset(synth_cache)
    ds[0]  # the parent holds an open handle when the workers start: they must reopen
    loader = DataLoader(ds, batch_size=7, num_workers=2, multiprocessing_context=context)
    got = [(x, y) for x, y in loader]
    np.testing.assert_array_equal(torch.cat([x for x, _ in got]).numpy(), images)
    np.testing.assert_array_equal(torch.cat([y for _, y in got]).numpy(), ds.labels)
    assert torch.equal(ds[3][0], torch.from_numpy(images[3]))  # parent handle still fine


def test_the_engines_loader_reads_whole_batches(synth_cache):
    """make_loader (what training and evaluation use) hands over read_batch's batches,
    from this process and from a spawn worker (shared memory), in sampler order."""
    from hpatk.core.batching import EpochBatchSampler, make_loader

    images = _images(synth_cache)
    ds = CacheDataset(synth_cache, classes=TOP5)
    for workers in (0, 1):
        sampler = EpochBatchSampler(len(ds), 10, shuffle=False)
        got = list(make_loader(ds, sampler, workers=workers))
        assert [len(x) for x, _ in got] == [10] * 9 + [6]
        np.testing.assert_array_equal(torch.cat([x for x, _ in got]).numpy(), images)
        np.testing.assert_array_equal(torch.cat([y for _, y in got]).numpy(),
                                      ds.labels[:, list(TOP5)])
    sampler = EpochBatchSampler(len(ds), 16, seed=0)
    order = np.concatenate([b for b in sampler])
    xs = torch.cat([x for x, _ in make_loader(ds, sampler)])
    np.testing.assert_array_equal(xs.numpy(), images[order])
    assert not np.array_equal(order, np.arange(len(order)))


# --------------------------------------------------------------------------- synthetic
def test_synthetic_round_trip_and_exclusion(cache):
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (5, 4, 64, 64), dtype=np.uint8)
    b = rng.integers(0, 256, (3, 4, 64, 64), dtype=np.uint8)
    assert add_synthetic(cache, a, 8, generator="gan/class8.pt", fold=2, seed=7) == "batch-000001"
    assert add_synthetic(cache, torch.from_numpy(b), 25, generator="g25", fold=None,
                         seed=1) == "batch-000002"

    real = CacheDataset(cache)
    assert len(real) == 96 and set(real.sources) == {"kaggle"}  # never mixed in silently
    np.testing.assert_array_equal(cache_labels(cache), CacheDataset(cache).labels)
    both = CacheDataset(cache, synthetic="with")
    assert len(both) == 104 and both.sources[-1] == "synthetic"
    assert torch.equal(both[96][0], torch.from_numpy(a[0]))
    only = CacheDataset(cache, synthetic="only", classes=TOP5)
    got = torch.stack([only[i][0] for i in range(len(only))]).numpy()
    np.testing.assert_array_equal(got, np.concatenate([a, b]))
    assert only.labels[:5, 8].all() and only.labels[:5].sum() == 5
    assert only.labels[5:, 25].all() and only.labels[5:].sum() == 3
    assert torch.equal(only[6][1], torch.tensor([0, 1, 0, 0, 0], dtype=torch.float32))
    assert only.ids[0] == "synthetic/batch-000001/0"
    first = CacheDataset(cache, synthetic="only", synthetic_indices=range(5))
    assert len(first) == 5 and [b["batch"] for b in first.batches] == ["batch-000001"]
    mixed = CacheDataset(cache, [0, 1], synthetic="with", synthetic_indices=[7, 5],
                         classes=TOP5)  # a fold's real rows plus chosen synthetic rows
    assert mixed.ids[:2] == real.ids[:2] and mixed.sources == ["kaggle"] * 2 + ["synthetic"] * 2
    assert torch.equal(mixed[2][0], torch.from_numpy(b[2])) and mixed.labels[2, 25] == 1
    picked = CacheDataset(cache, [6, 0], synthetic="only")
    assert torch.equal(picked[0][0], torch.from_numpy(b[1]))

    info = synthetic_info(cache)
    assert info["class_index"].tolist() == [8] * 5 + [25] * 3
    assert info["fold"].tolist() == [2] * 5 + [-1] * 3
    assert info["seed"].tolist() == [7] * 5 + [1] * 3
    assert info["generator"][0] == "gan/class8.pt" and info["labels"].shape == (8, 28)
    batches = read_cache_meta(cache)["synthetic"]
    assert [(x["class_index"], x["class_name"], x["fold"], x["n"]) for x in batches] == [
        (8, "Peroxisomes", 2, 5), (25, "Cytosol", None, 3)]

    r = CliRunner().invoke(cli, ["cache", "info", str(cache)])
    assert "synthetic    2 batches, 8 images" in r.output
    assert "batch-000001  class 8 Peroxisomes  n=5  generator=gan/class8.pt  trained on " \
           "fold 2  seed=7" in r.output
    assert "class 25 Cytosol  n=3  generator=" in r.output
    assert "trained on all images (no fold)  seed=1" in r.output

    assert remove_synthetic(cache, ["batch-000001"]) == 1
    assert synthetic_info(cache)["class_index"].tolist() == [25] * 3
    assert remove_synthetic(cache) == 1 and len(CacheDataset(cache, synthetic="only")) == 0


def test_add_synthetic_checks_its_input(cache):
    ok = np.zeros((2, 4, 64, 64), np.uint8)
    with pytest.raises(HpatkError, match="uint8"):
        add_synthetic(cache, ok.astype(np.float32), 0, generator="g", fold=0, seed=0)
    with pytest.raises(HpatkError, match=r"\(n, 4, 64, 64\)"):
        add_synthetic(cache, np.zeros((2, 4, 32, 32), np.uint8), 0, generator="g", fold=0,
                      seed=0)
    with pytest.raises(HpatkError, match="class 28"):
        add_synthetic(cache, ok, 28, generator="g", fold=0, seed=0)
    assert read_cache_meta(cache)["synthetic"] == []


def test_add_synthetic_while_this_process_reads(cache):
    ds = CacheDataset(cache)
    before = ds[4][0].clone()  # a read-only handle is open here
    add_synthetic(cache, np.ones((2, 4, 64, 64), np.uint8), 3, generator="g", fold=1, seed=0)
    assert torch.equal(ds[4][0], before)  # reopened transparently
    assert len(CacheDataset(cache, synthetic="only")) == 2


def test_killed_add_synthetic_leaves_the_cache_intact(cache):
    """SIGKILL after the batch is written but before it is linked: nothing visible, the
    file still opens, and the next add works."""
    add_synthetic(cache, np.full((2, 4, 64, 64), 9, np.uint8), 1, generator="g", fold=0,
                  seed=0)
    script = textwrap.dedent(f"""
        import os, signal
        import h5py, numpy as np
        from hpatk.core.cache import add_synthetic

        def die(self, *a, **k):
            os.kill(os.getpid(), signal.SIGKILL)

        h5py.Group.__setitem__ = die  # the linking step
        add_synthetic({str(cache)!r}, np.full((50, 4, 64, 64), 5, np.uint8), 2,
                      generator="g", fold=0, seed=0)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()
    meta = read_cache_meta(cache)
    assert [b["n"] for b in meta["synthetic"]] == [2]
    ds = CacheDataset(cache, synthetic="with")
    assert len(ds) == 98 and int(ds[97][0][0, 0, 0]) == 9
    assert torch.equal(ds[10][0], torch.from_numpy(_images(cache)[10]))
    add_synthetic(cache, np.full((1, 4, 64, 64), 7, np.uint8), 2, generator="g", fold=0,
                  seed=1)
    assert synthetic_info(cache)["class_index"].tolist() == [1, 1, 2]


# ---------------------------------------------------------------------- damaged files
def _one_line(exc: pytest.ExceptionInfo, path: Path) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def test_truncated_cache_is_a_clear_error(cache):
    size = cache.stat().st_size
    with open(cache, "r+b") as f:
        f.truncate(size * 2 // 3)
    for call in (read_cache_meta, CacheDataset, cache_labels):
        with pytest.raises(HpatkError) as exc:
            call(cache)
        assert "truncated" in _one_line(exc, cache) or "rebuild" in str(exc.value)
    r = CliRunner().invoke(cli, ["cache", "info", str(cache)])
    assert r.exit_code == 1 and r.output.startswith(f"Error: {cache}")
    assert len(r.output.strip().splitlines()) == 1


def test_not_a_cache_is_a_clear_error(tmp_path):
    junk = tmp_path / "junk.h5"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(HpatkError) as exc:
        CacheDataset(junk)
    _one_line(exc, junk)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["images"] = np.zeros((1, 1, 2, 2), np.uint8)
    with pytest.raises(HpatkError, match="not an hpatk cache") as exc:
        read_cache_meta(other)
    _one_line(exc, other)
    with pytest.raises(HpatkError, match="no such cache file"):
        CacheDataset(tmp_path / "absent.h5")


def test_missing_dataset_is_a_clear_error(cache):
    with h5py.File(cache, "r+") as f:
        del f["labels"]
    with pytest.raises(HpatkError, match="damaged cache") as exc:
        CacheDataset(cache)
    _one_line(exc, cache)


def test_a_training_plan_opens_the_cache_once(synth_cache, monkeypatch):
    """plan_data reads metadata, labels and Ids in one open; the fold's datasets reuse
    them (the file opens again only to read pixels)."""
    from hpatk.core.train_config import TrainConfig
    from hpatk.core.train_data import fold_datasets, plan_data

    opened = []
    real_file = h5py.File

    def counting(name, *args, **kwargs):
        opened.append(str(name))
        return real_file(name, *args, **kwargs)

    monkeypatch.setattr(h5py, "File", counting)
    plan = plan_data(TrainConfig(data=str(synth_cache), folds=3, classes="top5"))
    train, val, n_syn = fold_datasets(plan, 0)
    assert opened == [str(synth_cache)]
    assert n_syn == 0 and len(train) + len(val) == len(plan.rows)
    assert train.ids == [plan.ids[i] for i in plan.split(0)[0]]
    np.testing.assert_array_equal(val.labels, cache_labels(synth_cache)[plan.split(0)[1]])
