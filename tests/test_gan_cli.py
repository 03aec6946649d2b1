"""``hpatk gan train`` / ``hpatk gan sample`` end to end on the synthetic cache: the run
folder, fold-aware training through core's fold assignment, samples stored apart from the
real images with their provenance (the training-image Ids), PNG output, and one clear
line for each bad input."""

from __future__ import annotations

import csv
import functools
import shutil

import numpy as np
import pytest
import torch
from helpers import invoke, one_line_error
from hpatk.core.cache import CacheDataset, cache_ids, cache_labels, read_cache_meta
from hpatk.core.checkpoint import load_checkpoint, save_checkpoint
from hpatk.core.generator import load_generator, resize_uint8

TINY = ["--size", "32", "--param", "width=2", "--steps", "4", "--batch-size", "8",
        "--param", "sample_every=2", "--device", "cpu"]
MINI = ["--size", "16", "--param", "width=1", "--steps", "1", "--batch-size", "4",
        "--param", "sample_every=0", "--device", "cpu"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# exceptions propagate: a traceback fails the test where it happened
_invoke = functools.partial(invoke, ok=False, catch_exceptions=False)


@pytest.fixture(scope="module")
def trained(synth_cache, tmp_path_factory):
    """Class 0 and 25 GANs on the synthetic cache (32 px from the 64 px cache)."""
    out = tmp_path_factory.mktemp("gans")
    r = _invoke("gan", "train", "--data", synth_cache, "--class", "0", "--class",
                "Cytosol", "--out", out, *TINY)
    assert r.exit_code == 0, r.output
    return out


def test_gan_is_a_builtin_command():
    r = _invoke("gan", "--help")
    assert r.exit_code == 0 and "train" in r.output and "sample" in r.output
    for sub in ("train", "sample"):
        r = _invoke("gan", sub, "--help")
        assert r.exit_code == 0 and "Example:" in r.output


@pytest.mark.slow
def test_train_writes_a_folder_per_class(trained, synth_cache):
    assert sorted(p.name for p in trained.iterdir()) == ["class_00", "class_25"]
    d = trained / "class_25"
    for name in ("generator.pt", "last.pt", "losses.csv", "losses.png", "samples_real.png",
                 "samples_step_0.png", "samples_step_2.png", "samples_step_4.png"):
        assert (d / name).is_file(), name
    ckpt = load_checkpoint(d / "generator.pt")
    labels = cache_labels(synth_cache)
    assert ckpt["classes"] == [25] and ckpt["class_names"] == ["Cytosol"]
    ids = cache_ids(synth_cache)
    assert ckpt["train_ids"] == sorted(ids[i] for i in np.flatnonzero(labels[:, 25]))
    assert ckpt["synthesizer"] == "dcgan" and ckpt["per_class"] is True
    assert {k: ckpt["params"][k] for k in ("latent_dim", "channels", "image_size", "width")} \
        == {"latent_dim": 100, "channels": 4, "image_size": 32, "width": 2}
    meta = read_cache_meta(synth_cache)
    assert ckpt["stains"] == meta["stains"] and ckpt["enhance"] == meta["enhance"]
    assert ckpt["cache_fingerprint"] == meta["fingerprint"] and ckpt["fold"] is None
    with open(d / "losses.csv") as f:
        assert len(list(csv.DictReader(f))) == 4


@pytest.mark.slow
def test_top_picks_the_most_populous_classes(synth_cache, tmp_path):
    counts = cache_labels(synth_cache).sum(axis=0)
    want = sorted(np.argsort(-counts, kind="stable")[:2].tolist())
    r = _invoke("gan", "train", "--data", synth_cache, "--top", "2", "--out", tmp_path, *MINI)
    assert r.exit_code == 0, r.output
    assert sorted(int(p.name[6:]) for p in tmp_path.iterdir()) == want


def test_fold_training_uses_exactly_the_training_engines_rows(synth_cache, tmp_path):
    """--fold K trains on the rows 'hpatk train --fold K' trains on (no leakage)."""
    from hpatk.core.train_config import TrainConfig
    from hpatk.core.train_data import plan_data

    plan = plan_data(TrainConfig(data=str(synth_cache), folds=3, seed=2, classes="top5"))
    train_rows, val_rows = plan.split(1)
    labels = cache_labels(synth_cache)
    rows = np.sort(train_rows[labels[train_rows, 0] > 0])
    r = _invoke("gan", "train", "--data", synth_cache, "--class", "0", "--out", tmp_path,
                "--fold", "1", "--folds", "3", "--seed", "2", "--fold-classes", "top5", *MINI)
    assert r.exit_code == 0, r.output
    ckpt = load_checkpoint(tmp_path / "class_00" / "generator.pt")
    assert ckpt["fold"] == 1
    assert ckpt["train_ids"] == sorted(plan.ids[i] for i in rows)
    assert not set(ckpt["train_ids"]) & {plan.ids[i] for i in val_rows}
    # the key hpatk train --aug dcgan computes for the same fit (core.synthetic), so the
    # samples gan sample --into adds are found and reused by it
    from hpatk.core.cache import ids_digest, read_cache_meta
    from hpatk.core.generator import build_synthesizer
    from hpatk.core.synthetic import generator_key

    asked = {"width": 1, "sample_every": 0, "image_size": 16, "steps": 1, "batch_size": 4,
             "device": "cpu"}
    assert ckpt["key"] == generator_key(
        cache_fingerprint=str(read_cache_meta(synth_cache).get("fingerprint", "")),
        ids_sha256=ids_digest(ckpt["train_ids"]), classes=[0], synthesizer="dcgan",
        params=build_synthesizer("dcgan", asked).params, seed=2)


def test_fold_classes_take_present_as_hpatk_train_does(synth_cache, tmp_path):
    """--fold-classes present: the classes with enough images, from the cache's counts."""
    r = _invoke("gan", "train", "--data", synth_cache, "--class", "0", "--out", tmp_path,
                "--fold", "0", "--folds", "3", "--fold-classes", "present:1", *MINI)
    assert r.exit_code == 0, r.output
    assert load_checkpoint(tmp_path / "class_00" / "generator.pt")["fold"] == 0


@pytest.mark.slow
def test_sample_into_cache_keeps_synthetic_apart(trained, synth_cache, tmp_path):
    cache = tmp_path / "cache.h5"
    shutil.copy(synth_cache, cache)
    gen = trained / "class_25" / "generator.pt"
    r = _invoke("gan", "sample", gen, "--n", "10", "--into", cache, "--seed", "3")
    assert r.exit_code == 1
    assert "32 px" in one_line_error(r) and "--resize" in one_line_error(r)
    r = _invoke("gan", "sample", gen, "--n", "10", "--into", cache, "--seed", "3", "--resize",
                "--device", "cpu")
    assert r.exit_code == 0, r.output

    n_real = len(cache_labels(synth_cache))
    assert len(CacheDataset(cache)) == n_real  # real rows only by default
    syn = CacheDataset(cache, synthetic="only")
    assert len(syn) == 10
    assert len(CacheDataset(cache, synthetic="with")) == n_real + 10
    (batch,) = read_cache_meta(cache)["synthetic"]
    assert batch["class_index"] == 25 and batch["fold"] is None and batch["seed"] == 3
    from hpatk.core.io import file_sha256

    assert batch["generator"].endswith(f"@sha256:{file_sha256(gen)}")
    images, targets = syn.read_batch(np.arange(10))
    assert torch.all(targets.argmax(1) == 25) and torch.all(targets.sum(1) == 1)
    # The stored images are the generator's samples for that seed, resized to 64 px.
    expected = resize_uint8(load_generator(gen).synth.sample(10, seed=3), 64)
    assert np.array_equal(images.numpy(), expected)
    # provenance by content: the Ids of the images the generator learnt from
    from hpatk.core.cache import synthetic_train_ids

    assert synthetic_train_ids(cache, batch["batch"]) == load_checkpoint(gen)["train_ids"]


@pytest.mark.slow
def test_sample_out_writes_kaggle_layout(trained, tmp_path):
    import cv2

    gen = trained / "class_00" / "generator.pt"
    out = tmp_path / "samples"
    r = _invoke("gan", "sample", gen, "--n", "3", "--out", out, "--seed", "1")
    assert r.exit_code == 0, r.output
    with open(out / "train.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["Target"] for row in rows] == ["0"] * 3
    expected = load_generator(gen).synth.sample(3, seed=1)
    for k, row in enumerate(rows):
        for c, stain in enumerate(("green", "red", "blue", "yellow")):
            png = cv2.imread(str(out / "train" / f"{row['Id']}_{stain}.png"), cv2.IMREAD_UNCHANGED)
            assert png.shape == (32, 32) and np.array_equal(png, expected[k, c])
    assert (out / "samples.png").is_file()
    r = _invoke("gan", "sample", gen, "--n", "3", "--out", out)
    assert r.exit_code == 1 and "already holds" in one_line_error(r)


@pytest.mark.slow
def test_bad_inputs_give_one_clear_line(trained, synth_cache, tmp_path):
    from hpatk.core.folds import make_folds
    from hpatk.core.generator import save_generator

    base = ["gan", "train", "--data", synth_cache, "--out", tmp_path / "x", *TINY]
    r = _invoke(*base, "--class", "Nucleoplasma")
    assert r.exit_code == 1 and "did you mean 'Nucleoplasm'" in one_line_error(r)
    r = _invoke(*base, "--class", "28")
    assert r.exit_code == 1 and "0..27" in one_line_error(r)
    r = _invoke(*base, "--class", "0", "--top", "2")
    assert r.exit_code == 2 and "not both" in r.output
    r = _invoke(*base, "--class", "0", "--size", "48")
    assert r.exit_code == 1 and "image_size" in one_line_error(r)
    r = _invoke(*base, "--class", "0", "--synth", "dcgann")
    assert r.exit_code == 1 and "did you mean 'dcgan'" in one_line_error(r)
    r = _invoke(*base, "--class", "0", "--param", "wdth=2")
    assert r.exit_code == 1 and "unknown parameter 'wdth'" in one_line_error(r)
    # A class whose only images fall in the validation fold has nothing to train on.
    labels = cache_labels(synth_cache)
    rare = int(np.argmin(np.where(labels.sum(0) > 0, labels.sum(0), 99)))
    fold = int(make_folds(labels, k=2, seed=0)[np.flatnonzero(labels[:, rare])[0]])
    assert labels[:, rare].sum() == 1
    r = _invoke(*base, "--class", rare, "--fold", fold, "--folds", "2")
    assert r.exit_code == 1
    assert f"class {rare}" in one_line_error(r) and f"fold {fold}" in one_line_error(r)
    assert not (tmp_path / "x").exists()  # nothing written for refused runs

    # A generator of three stains does not go into a four-stain cache.
    from hpatk.core import get_registry

    rgb = get_registry().synthesizers.create("gan", image_size=64, channels=3, width=1)
    rgb.load_state_dict({"generator": rgb._model().generator.state_dict()})
    save_generator(tmp_path / "rgb.pt", rgb, name="dcgan", classes=[0], train_ids=["x"],
                   train_labels=np.ones((1, 1), np.uint8), stains=["green", "red", "blue"],
                   enhance=read_cache_meta(synth_cache)["enhance"], fold=None, key="k",
                   cache_fingerprint="f", seed=0)
    cache = tmp_path / "cache.h5"
    shutil.copy(synth_cache, cache)
    r = _invoke("gan", "sample", tmp_path / "rgb.pt", "--n", "2", "--into", cache)
    assert r.exit_code == 1 and "stains green,red,blue" in one_line_error(r)
    assert read_cache_meta(cache)["synthetic"] == []
    # Not a generator / not a checkpoint.
    save_checkpoint({"kind": "classifier", "model": {}}, tmp_path / "clf.pt")
    r = _invoke("gan", "sample", tmp_path / "clf.pt", "--n", "2", "--into", cache)
    assert r.exit_code == 1 and "not a generator checkpoint" in one_line_error(r)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    r = _invoke("gan", "sample", tmp_path / "junk.pt", "--n", "2", "--into", cache)
    assert r.exit_code == 1 and "junk.pt" in one_line_error(r)
    r = _invoke("gan", "sample", trained / "class_00" / "generator.pt", "--n", "2")
    assert r.exit_code == 2 and "exactly one" in r.output


@pytest.mark.slow
def test_an_existing_run_is_resumed_or_restarted_never_silently_mixed(synth_cache, tmp_path):
    args = ["gan", "train", "--data", synth_cache, "--class", "0", "--out", tmp_path,
            "--size", "16", "--param", "width=1", "--batch-size", "4",
            "--param", "sample_every=2", "--device", "cpu"]
    assert _invoke(*args, "--steps", "4").exit_code == 0
    r = _invoke(*args, "--steps", "2")
    assert r.exit_code == 1 and "--resume" in one_line_error(r)
    r = _invoke(*args, "--steps", "6", "--resume")
    assert r.exit_code == 0, r.output
    run = tmp_path / "class_00"
    assert load_checkpoint(run / "generator.pt")["summary"]["steps"] == 6
    with open(run / "losses.csv") as f:
        assert [int(row["step"]) for row in csv.DictReader(f)] == list(range(1, 7))
    assert _invoke(*args, "--steps", "2", "--force").exit_code == 0
    assert sorted(p.name for p in run.glob("samples_step_*")) == [
        "samples_step_0.png", "samples_step_2.png"]
