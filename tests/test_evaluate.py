"""hpatk evaluate and predict_probs: recomputed metrics equal the logged ones and
scikit-learn's; out-of-fold evaluation of an all-folds run; per-image predictions."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from helpers import invoke
from hpatk.core.evaluate import evaluate_run, predict_probs
from hpatk.core.folds import read_folds
from hpatk.core.run import read_metrics
from sklearn.metrics import f1_score, precision_score, recall_score

TINY = "timm:test_resnet"
pytestmark = pytest.mark.slow  # every test reads the trained 2-fold run (~90 s to train)


@pytest.fixture(scope="module")
def data(top5_dataset) -> tuple[Path, Path]:
    """(dataset folder, its cache): 48 synthetic top-5 images at 32 px."""
    return top5_dataset(n=48, size=32, seed=2)


@pytest.fixture(scope="module")
def run(data, tmp_path_factory) -> Path:
    """Both folds of a 2-fold CV, 2 epochs each."""
    out = tmp_path_factory.mktemp("evalrun") / "run"
    invoke("train", "--data", data[1], "--backbone", TINY, "--classes", "top5", "--folds", 2,
           "--fold", "all", "--epochs", 2, "--batch-size", 8, "--aug", "none", "--out", out)
    return out


def test_all_folds_run_layout(run):
    for k in (0, 1):
        for name in ("config.yaml", "metrics.csv", "best_macro_f1.pt", "last.pt",
                     "thresholds.json", "report.md"):
            assert (run / f"fold_{k}" / name).is_file(), (k, name)
    summary = (run / "summary.csv").read_text().splitlines()
    assert summary[0].startswith("fold,epoch,val_macro_f1") and len(summary) == 3
    assert "mean +- sd" in (run / "summary.md").read_text()


@pytest.mark.parametrize("fold", [0, 1])
def test_fold_metrics_equal_the_logged_ones(run, fold):
    ev = evaluate_run(run, fold=fold, device="cpu")
    rows = read_metrics(run / f"fold_{fold}" / "metrics.csv")
    best = max(rows, key=lambda r: (r["val_macro_f1"], -r["epoch"]))
    assert ev.at_half["macro_f1"] == pytest.approx(best["val_macro_f1"], abs=1e-6)
    assert ev.at_half["micro_f1"] == pytest.approx(best["val_micro_f1"], abs=1e-6)
    assert ev.at_half["accuracy"] == pytest.approx(best["val_accuracy"], abs=1e-6)
    assert ev.at_half["paper_macro_f1"] == pytest.approx(best["val_paper_macro_f1"], abs=1e-6)
    folds = read_folds(run / "folds.csv")
    assert ev.n == sum(1 for f in folds.values() if f == fold)


def test_out_of_fold_predictions_file(run, data, tmp_path):
    out = tmp_path / "preds.csv"
    r = invoke("evaluate", run, "--out", out)
    assert "out-of-fold" in r.output and "macro F1" in r.output and "Nucleoplasm" in r.output
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    folds = read_folds(run / "folds.csv")
    assert sorted(r["Id"] for r in rows) == sorted(folds)
    assert list(rows[0]) == ["Id", "Target", "Predicted", "p_0", "p_25", "p_21", "p_2", "p_23"]
    classes = [0, 25, 21, 2, 23]
    probs = np.array([[float(r[f"p_{c}"]) for c in classes] for r in rows])
    y = np.array([[str(c) in r["Target"].split() for c in classes] for r in rows], dtype=int)
    pred = np.array([[str(c) in r["Predicted"].split() for c in classes] for r in rows], int)
    assert pred.sum(1).min() >= 1  # thresholds applied with at least one label per image
    # the printed numbers are scikit-learn's on this file
    at_half = f1_score(y, (probs >= 0.5).astype(int), average="macro", zero_division=0)
    tuned = f1_score(y, pred, average="macro", zero_division=0)
    line = lambda label: [ln for ln in r.output.splitlines() if ln.startswith(label)][0]  # noqa: E731
    assert float(line("threshold 0.5").split()[2]) == pytest.approx(at_half, abs=1e-4)
    assert float(line("tuned thresholds").split()[2]) == pytest.approx(tuned, abs=1e-4)
    # the paper's Eq. 8 beside it: F1 of scikit-learn's macro precision and recall
    p = precision_score(y, pred, average="macro", zero_division=0)
    rc = recall_score(y, pred, average="macro", zero_division=0)
    assert float(line("tuned thresholds").split()[3]) == pytest.approx(
        2 * p * rc / (p + rc), abs=1e-4)
    assert "macro F1 (Kaggle)" in r.output and "macro F1 (Eq. 8)" in r.output
    # the same probabilities through predict_probs, fold by fold
    from hpatk.core.cache import cache_ids

    ids = cache_ids(data[1])
    for k in (0, 1):
        rows_k = [i for i, x in enumerate(ids) if folds[x] == k]
        got_ids, p = predict_probs(run / f"fold_{k}" / "best_macro_f1.pt", data[1], rows_k)
        assert got_ids == [ids[i] for i in rows_k]
        want = {r["Id"]: [float(r[f"p_{c}"]) for c in classes] for r in rows}
        np.testing.assert_allclose(p, [want[i] for i in got_ids], atol=2e-6)


def test_predict_probs_on_a_dataset_folder_equals_the_cache(run, data):
    ckpt = run / "fold_0" / "best_loss.pt"
    ids_a, pa = predict_probs(ckpt, data[1])
    ids_b, pb = predict_probs(ckpt, data[0])  # cached with the checkpoint's settings
    assert ids_a == ids_b and pa.shape == (48, 5) and pa.dtype == np.float32
    np.testing.assert_array_equal(pa, pb)


def test_whole_dataset_averages_the_fold_models(run, data):
    ev = evaluate_run(run, data=str(data[1]), checkpoint="last", device="cpu")
    _, p0 = predict_probs(run / "fold_0" / "last.pt", data[1])
    _, p1 = predict_probs(run / "fold_1" / "last.pt", data[1])
    from hpatk.core.cache import CacheDataset

    y = CacheDataset(data[1], classes=[0, 25, 21, 2, 23]).targets.astype(int)
    mean = (p0 + p1) / 2
    assert ev.n == 48 and "2 models" in ev.what
    assert ev.at_half["macro_f1"] == pytest.approx(
        f1_score(y, (mean >= 0.5).astype(int), average="macro", zero_division=0), abs=1e-6)
    assert ev.tuned is None  # last.pt carries no tuned thresholds


@pytest.mark.parametrize("args, message", [
    (["--fold", "2"], "--fold 2"),
    (["--checkpoint", "best"], "Invalid value"),
])
def test_bad_evaluate_options(run, args, message):
    r = invoke("evaluate", run, *args, ok=False)
    assert r.exit_code in (1, 2) and message in r.output and "Traceback" not in r.output


def test_evaluate_refuses_a_cache_of_another_size(run, data, tmp_path):
    from hpatk.core.cache import build_cache

    other = build_cache(data[0], tmp_path / "c48.h5", enhance="clahe", size=48, workers=1)
    r = invoke("evaluate", run, "--data", other, ok=False)
    assert r.exit_code == 1 and "48 px" in r.output and "32 px" in r.output


def test_evaluate_tta_flips_averages_the_four_flips(run, data, tmp_path):
    import torch
    from hpatk.core.cache import CacheDataset
    from hpatk.core.checkpoint import build_classifier, load_checkpoint

    plain, flips = tmp_path / "plain.csv", tmp_path / "flips.csv"
    invoke("evaluate", run, "--fold", 0, "--out", plain)
    r = invoke("evaluate", run, "--fold", 0, "--out", flips, "--tta", "flips")
    assert "tta flips" in r.output
    classes = [0, 25, 21, 2, 23]

    def probs(path):
        with open(path, newline="") as f:
            return {r["Id"]: [float(r[f"p_{c}"]) for c in classes] for r in csv.DictReader(f)}

    got, base = probs(flips), probs(plain)
    assert sorted(got) == sorted(base)
    assert not np.allclose(list(got.values()), list(base.values()), atol=1e-6)
    # the reference: the checkpoint in PyTorch on the four flips of each cached image
    ckpt = load_checkpoint(run / "fold_0" / "best_macro_f1.pt")
    model = build_classifier(ckpt).eval()
    ds = CacheDataset(data[1])
    rows = [i for i, x in enumerate(ds.ids) if x in got]
    x = torch.stack([torch.as_tensor(ds[i][0]) for i in rows]).float() / 255
    mean = torch.tensor(ckpt["normalize"]["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(ckpt["normalize"]["std"]).view(1, -1, 1, 1)
    with torch.no_grad():
        views = [x, x.flip(-1), x.flip(-2), x.flip(-1).flip(-2)]
        want = torch.stack([torch.sigmoid(model((v - mean) / std)) for v in views]).mean(0)
    np.testing.assert_allclose([got[ds.ids[i]] for i in rows], want.numpy(), atol=2e-5)
    r = invoke("evaluate", run, "--tta", "rotate", ok=False)
    assert r.exit_code == 2 and "--tta" in r.output
