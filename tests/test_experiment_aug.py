"""hpatk experiment gan-vs-classic: both arms on the same folds, both splits, mean +- sd,
paired differences with a paired-t interval; --real-per-class subsampling."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from helpers import invoke
from hpatk.core.train_data import subsample_per_class

TINY = "timm:test_resnet"


@pytest.fixture(scope="module")
def cache(top5_dataset) -> Path:
    return top5_dataset(n=48, size=32, seed=4)[1]


GAN = {"image_size": 16, "width": 4, "steps": 10, "sample_every": 10}
ARGS = ["--aug", "gan", *[x for k, v in GAN.items() for x in ("--aug-param", f"{k}={v}")],
        "--synthetic-per-class", 4, "--backbone", TINY, "--folds", 3, "--fold-subset", "0,1",
        "--epochs", 1, "--batch-size", 8, "--real-per-class", 8, "--device", "cpu"]


@pytest.fixture(scope="module")
def experiment(cache, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("t23") / "t23"
    r = invoke("experiment", "gan-vs-classic", "--data", cache, *ARGS, "--out", out)
    return out, r.output


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_table_has_both_arms_and_both_splits(experiment):
    out, output = experiment
    for name in ("table.md", "table.csv", "differences.csv", "table.png", "results.csv",
                 "folds.csv"):
        assert (out / name).is_file(), name
    md = (out / "table.md").read_text()
    assert "| classic |" in md and "| classic + gan |" in md and md in output + "\n"
    for label in ("macro F1 (Kaggle) train", "macro F1 (Kaggle) val", "macro F1 (Eq. 8) val",
                  "micro F1 train", "accuracy val"):
        assert label in md
    rows = _csv(out / "results.csv")
    assert {(r["aug"], r["fold"], r["split"]) for r in rows} == {
        (a, f, s) for a in ("classic", "gan") for f in ("0", "1") for s in ("train", "val")}


@pytest.mark.slow
def test_scores_are_the_runs_own(experiment):
    """val = hpatk evaluate of the fold's best_macro_f1.pt; train = the subsampled rows."""
    from hpatk.core.evaluate import evaluate_run

    out, _ = experiment
    rows = _csv(out / "results.csv")
    for aug in ("classic", "gan"):
        ev = evaluate_run(out / "runs" / aug / "fold_1", device="cpu")
        r = next(r for r in rows if (r["aug"], r["fold"], r["split"]) == (aug, "1", "val"))
        assert float(r["macro_f1"]) == pytest.approx(ev.at_half["macro_f1"], abs=1e-5)
        assert float(r["paper_macro_f1"]) == pytest.approx(ev.at_half["paper_macro_f1"],
                                                           abs=1e-5)
        assert float(r["accuracy"]) == pytest.approx(ev.at_half["accuracy"], abs=1e-5)
        assert int(r["images"]) == ev.n
    train = [r for r in rows if r["split"] == "train" and r["fold"] == "0"]
    assert len({r["images"] for r in train}) == 1  # both arms: the same real images
    assert int(train[0]["images"]) < 32  # --real-per-class 8 subsampled the ~32 training rows


@pytest.mark.slow
def test_mean_sd_and_paired_t_interval(experiment):
    from scipy import stats

    out, _ = experiment
    rows = _csv(out / "results.csv")
    val = lambda aug: np.array([float(r["macro_f1"]) for r in rows  # noqa: E731
                                if r["aug"] == aug and r["split"] == "val"])
    a, b = val("classic"), val("gan")
    table = {r["aug"]: r for r in _csv(out / "table.csv")}
    assert float(table["classic"]["val_macro_f1_mean"]) == pytest.approx(a.mean(), abs=1e-6)
    assert float(table["classic"]["val_macro_f1_sd"]) == pytest.approx(a.std(ddof=1), abs=1e-6)
    d = next(r for r in _csv(out / "differences.csv")
             if (r["aug"], r["split"], r["metric"]) == ("gan", "val", "macro_f1"))
    assert [float(x) for x in d["fold_differences"].split()] == pytest.approx(b - a, abs=1e-6)
    assert float(d["mean"]) == pytest.approx((b - a).mean(), abs=1e-6)
    if np.std(b - a) > 0:
        ci = stats.ttest_rel(b, a).confidence_interval(0.95)
        assert (float(d["ci95_low"]), float(d["ci95_high"])) == pytest.approx(
            (ci.low, ci.high), abs=1e-5)


@pytest.mark.slow
def test_both_arms_share_folds_and_seed(experiment):
    from hpatk.core.train_config import read_config

    out, _ = experiment
    shared = (out / "folds.csv").read_text()
    cfgs = [read_config(out / "runs" / a / "fold_0" / "config.yaml") for a in ("classic", "gan")]
    assert cfgs[1].aug == "gan" and cfgs[1].aug_params == GAN and cfgs[0].aug == "classic"
    assert cfgs[0].replace(aug="gan", aug_params=GAN, out="x") == cfgs[1].replace(out="x")
    # the synthesizer arm really added synthetic images, fitted on fold 0's training images
    assert (out / "runs" / "gan" / "fold_0" / "synthetic.csv").is_file()
    assert cfgs[0].real_per_class == 8 and cfgs[0].backbone == TINY and cfgs[0].head == "paper"
    for a in ("classic", "gan"):
        assert (out / "runs" / a / "fold_0" / "folds.csv").read_text() == shared


@pytest.mark.slow
def test_rerun_reuses_finished_runs(experiment, cache):
    out, _ = experiment
    ckpt = out / "runs" / "gan" / "fold_0" / "last.pt"
    before = ckpt.stat().st_mtime_ns
    invoke("experiment", "gan-vs-classic", "--data", cache, *ARGS, "--out", out)
    assert ckpt.stat().st_mtime_ns == before


def test_unknown_aug_fails_before_training(cache, tmp_path):
    r = invoke("experiment", "gan-vs-classic", "--data", cache, "--aug", "gann",
               "--out", tmp_path / "x", ok=False)
    assert r.exit_code == 1 and "gann" in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "x" / "runs").exists()


def test_subsample_per_class():
    rng = np.random.default_rng(0)
    y = (rng.random((300, 4)) < [0.6, 0.3, 0.1, 0.02]).astype(np.uint8)
    keep = subsample_per_class(y, 10, seed=1)
    counts = y[keep].sum(0)
    assert (counts >= np.minimum(10, y.sum(0))).all()
    assert y[:, 3].sum() < 10 and counts[3] == y[:, 3].sum()  # a rare class keeps all it has
    assert len(keep) <= 4 * 10 and (np.diff(keep) > 0).all()
    assert (subsample_per_class(y, 10, seed=1) == keep).all()
    assert not (subsample_per_class(y, 10, seed=2) == keep).all()


def test_arm_labels_follow_the_runs_batch_augmentation():
    """A synthesizer arm reads 'classic + gan' with --batch-aug classic and 'gan' alone
    with --batch-aug none (the label had its own 'classic' default)."""
    from hpatk.core.experiment_aug import arm_label

    assert arm_label("gan", "classic") == "classic + gan"
    assert arm_label("gan", "none") == "gan"
    assert arm_label("none", "classic") == "none (no augmentation)"
    assert arm_label("classic", "none") == "classic"
