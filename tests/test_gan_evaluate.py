"""hpatk gan evaluate on a run trained with throwaway synthesizers from the registry: one
that copies its training images (memorisation flags it; it scores like real images) and one
that returns noise (far from the real images, no copies)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from helpers import invoke
from hpatk.core import Synthesizer, hookimpl

TINY = "timm:test_resnet"


class Copier(Synthesizer):
    """Returns its training images (a generator that memorised them)."""

    name = "copier"
    per_class = True

    def fit(self, images, labels, *, classes, out_dir=None, seed=0, progress=True,
            resume=False, stains=()):
        self.params.update(image_size=int(images.shape[-1]), channels=int(images.shape[1]))
        self.bank = np.asarray(images).copy()
        return {"images": len(images)}

    def sample(self, n, labels=None, *, seed=0):
        rng = np.random.default_rng(seed)
        return self.bank[rng.integers(0, len(self.bank), n)]

    def state_dict(self):
        import torch

        return {"bank": torch.from_numpy(self.bank)}

    def load_state_dict(self, state):
        self.bank = state["bank"].numpy()

    def export_module(self):
        raise NotImplementedError


class Noise(Copier):
    """Uniform noise of the training images' shape."""

    name = "noise"

    def sample(self, n, labels=None, *, seed=0):
        rng = np.random.default_rng(seed)
        return rng.integers(0, 256, (n, *self.bank.shape[1:])).astype(np.uint8)


class _Plugin:
    @hookimpl
    def hpatk_register_synthesizers(self, register):
        register("copier", Copier, description="returns its training images")
        register("noise", Noise, description="returns noise")


@pytest.fixture(scope="module")
def cache(top5_dataset) -> Path:
    return top5_dataset(n=60, size=32, seed=5)[1]


@pytest.fixture(scope="module")
def evaluated(cache, tmp_path_factory):
    """name -> evaluation.csv rows of that synthesizer's generators (classes 0 and 25,
    fitted by hpatk gan train on fold 0's training images)."""
    from hpatk.core.registry import get_registry

    tmp = tmp_path_factory.mktemp("gan-eval")
    reg = get_registry()
    reg.pm.register(_Plugin(), name="test-gan-evaluate")
    out = {}
    try:
        for name in ("copier", "noise"):
            invoke("gan", "train", "--data", cache, "--synth", name, "-c", 0, "-c", 25,
                   "--fold", 0, "--folds", 3, "--fold-classes", "top5", "--out",
                   tmp / f"gens-{name}")
            r = invoke("gan", "evaluate", tmp / f"gens-{name}", "--data", cache, "--n", 16,
                       "--epochs", 8, "--out", tmp / f"eval-{name}")
            with open(tmp / f"eval-{name}" / "evaluation.csv", newline="") as f:
                out[name] = {row["class"]: row for row in csv.DictReader(f)}
            out[name]["_output"] = r.output
            out[name]["_dir"] = tmp / f"eval-{name}"
            out[name]["_gens"] = tmp / f"gens-{name}"
    finally:
        reg.pm.unregister(name="test-gan-evaluate")
    return out


@pytest.mark.slow
def test_gan_evaluate_reports_all_four_measures(evaluated):
    c = evaluated["copier"]
    for name in ("evaluation.md", "evaluation.csv", "closest_pairs_features.png",
                 "closest_pairs_pixels.png", "nn_distances.png"):
        assert (c["_dir"] / name).is_file(), name
    assert set(c) >= {"all", "Nucleoplasm", "Cytosol"}
    md = (c["_dir"] / "evaluation.md").read_text()
    for word in ("GAN-train", "GAN-test", "FD", "KID", "precision", "recall", "copies",
                 "NOT comparable"):
        assert word in md, word
    assert "| all |" in c["_output"]


@pytest.mark.slow
def test_copier_is_flagged_and_noise_is_far(evaluated):
    c, n = evaluated["copier"]["all"], evaluated["noise"]["all"]
    assert float(c["copies_pixels"]) == 1.0 and float(c["copies_features"]) == 1.0
    assert float(c["nn_ratio_pixels"]) == 0.0
    assert float(n["copies_pixels"]) == 0.0
    assert float(n["fd"]) > float(c["fd"]) and float(n["kid"]) > float(c["kid"])
    assert float(n["precision"]) < float(c["precision"])
    # the copier's samples are training images: the real-trained CNN knows them
    assert float(c["gan_test"]) > float(n["gan_test"])
    # the generators' own record split the cache: training vs held-out images
    assert int(c["real_train"]) > 0 and int(c["real_test"]) > 0


def test_a_runs_generators_are_found_from_its_synthetic_csv(tmp_path):
    from hpatk.core.gan_evaluate import find_generators

    gens = [tmp_path / "store" / k / "generator.pt" for k in ("a", "b")]
    for g in gens:
        g.parent.mkdir(parents=True)
        g.write_bytes(b"")
    run = tmp_path / "run"
    (run / "fold_1").mkdir(parents=True)
    (run / "fold_1" / "synthetic.csv").write_text(
        "fold,class,generator\n" + "".join(f"1,{i},{g}\n" for i, g in enumerate(gens))
        + "1,9,\n")  # a class without training images has no generator
    assert find_generators(run) == gens
    assert find_generators(tmp_path / "store") == gens
    assert find_generators(gens[1]) == [gens[1]]
    gens[0].unlink()
    with pytest.raises(Exception, match="does not exist"):
        find_generators(run)


def test_gan_evaluate_bad_input_is_one_line(tmp_path, cache):
    (tmp_path / "empty").mkdir()
    r = invoke("gan", "evaluate", tmp_path / "empty", "--data", cache, "--out", tmp_path / "e",
               ok=False)
    assert r.exit_code == 1 and "no generator.pt" in r.output
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "e").exists()
