"""Issue 16: macro F1 over the classes present, ``--classes present`` and the warning for
classes with too few images, out-of-fold predictions and thresholds of an all-folds run,
and the fold ensemble exported as one ONNX model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import invoke
from hpatk.core.classes import PRESENT_MIN, parse_classes
from hpatk.core.errors import HpatkError
from hpatk.core.train_config import TrainConfig

TINY = "timm:test_resnet"


def test_present_class_spec():
    counts = np.zeros(28, int)
    counts[[0, 2, 25]] = [40, 10, 12]
    counts[[5, 7]] = [9, 1]
    assert PRESENT_MIN == 10
    assert parse_classes("present", counts) == (0, 2, 25)
    assert parse_classes("present:5", counts) == (0, 2, 5, 25)
    assert parse_classes("present:1", counts) == (0, 2, 5, 7, 25)
    assert parse_classes("all", counts) == tuple(range(28))
    TrainConfig(classes="present:3").validate()  # resolved later, against the data
    for bad in ("present:0", "present:x", "presentx", "present:"):
        with pytest.raises(HpatkError, match="present:N"):
            TrainConfig(classes=bad).validate()
    with pytest.raises(HpatkError, match="no class has 50 or more images"):
        parse_classes("present:50", counts)
    with pytest.raises(HpatkError, match="needs the data"):
        parse_classes("present")


@pytest.fixture(scope="module")
def top5_data(top5_dataset) -> tuple[Path, Path]:
    """(folder, cache): 48 synthetic images at 32 px carrying only the paper's five classes."""
    return top5_dataset(n=48, size=32, seed=2)


@pytest.fixture(scope="module")
def top5_cache(top5_data) -> Path:
    return top5_data[1]


def test_sparse_classes_warn_once_and_present_selects(top5_cache, capsys):
    from hpatk.core.cache import cache_labels
    from hpatk.core.classes import CLASS_NAMES, TOP5
    from hpatk.core.train_data import plan_data

    counts = np.asarray(cache_labels(top5_cache)).sum(axis=0)
    cfg = TrainConfig(data=str(top5_cache), folds=2, classes="all")
    plan_data(cfg)
    err = capsys.readouterr().err
    absent = [c for c in range(28) if counts[c] < PRESENT_MIN]
    assert len(absent) >= 23 and err.count("warning:") == 1
    assert f"{len(absent)} of 28 classes have fewer than {PRESENT_MIN} images" in err
    assert f"{CLASS_NAMES[absent[0]]} ({counts[absent[0]]})" in err
    assert "--classes present" in err
    plan_data(cfg)  # the same data and classes: said once
    assert "warning" not in capsys.readouterr().err
    plan = plan_data(cfg.replace(classes="present"))
    assert "warning" not in capsys.readouterr().err
    assert plan.classes == tuple(c for c in range(28) if counts[c] >= PRESENT_MIN)
    assert set(plan.classes) <= set(TOP5)


# -- out-of-fold predictions and thresholds ------------------------------------------------


def test_oof_thresholds_beat_half_on_a_constructed_case():
    """Scores that rank well but sit below 0.5 for two classes (a typical focal-loss
    model): 0.5 misses them; thresholds tuned on the whole OOF set recover them."""
    from hpatk.core.oof import OutOfFold, oof_metrics

    rng = np.random.default_rng(4)
    y = (rng.random((300, 3)) < 0.3).astype(np.uint8)
    y[0] = 1
    probs = np.where(y == 1, 0.25 + 0.2 * rng.random(y.shape), 0.3 * rng.random(y.shape))
    probs[:, 2] = np.clip(probs[:, 2] + 0.4, 0, 1)  # one class well above 0.5
    oof = OutOfFold([f"i{i}" for i in range(300)], np.arange(300) % 5,
                    probs.astype(np.float32), y, [0, 25, 21])
    m = oof_metrics(oof)
    assert m["tuned"]["macro_f1"] > m["at_half"]["macro_f1"] + 0.3
    assert m["at_half"]["classes_present"] == 3
    assert np.all(m["per_class_tuned"] >= m["per_class"] - 1e-9)
    assert np.all((m["thresholds"][:2] > 0.2) & (m["thresholds"][:2] < 0.5))


@pytest.fixture(scope="module")
def folds_run(top5_data, tmp_path_factory) -> Path:
    """Both folds of a 2-fold CV, 2 epochs, a 28-class model on 5-class data."""
    out = tmp_path_factory.mktemp("qrun") / "run"
    invoke("train", "--data", top5_data[1], "--backbone", TINY, "--classes", "all", "--folds",
           2, "--fold", "all", "--epochs", 2, "--batch-size", 8, "--aug", "none", "--device",
           "cpu", "--out", out)
    return out


@pytest.mark.slow
def test_oof_covers_every_image_once_from_its_fold_model(folds_run, top5_cache):
    from hpatk.core.cache import cache_ids
    from hpatk.core.evaluate import predict_probs
    from hpatk.core.folds import read_folds
    from hpatk.core.metrics import tune_thresholds
    from hpatk.core.oof import read_oof
    from hpatk.core.run import read_thresholds

    oof = read_oof(folds_run / "oof.csv")
    folds = read_folds(folds_run / "folds.csv")
    assert len(oof.ids) == len(set(oof.ids)) == len(folds) == 48
    assert sorted(oof.ids) == sorted(folds)
    assert [folds[i] for i in oof.ids] == oof.folds.tolist()
    assert oof.classes == list(range(28)) and oof.probs.shape == (48, 28)
    pos = {i: r for r, i in enumerate(str(i) for i in cache_ids(top5_cache))}
    for k in (0, 1):
        mine = [j for j, f in enumerate(oof.folds) if f == k]
        rows = [pos[oof.ids[j]] for j in mine]
        _, own = predict_probs(folds_run / f"fold_{k}" / "best_macro_f1.pt", top5_cache, rows)
        _, other = predict_probs(folds_run / f"fold_{1 - k}" / "best_macro_f1.pt", top5_cache,
                                 rows)
        np.testing.assert_allclose(oof.probs[mine], own, rtol=1e-4, atol=1e-6)
        assert not np.allclose(oof.probs[mine], other, rtol=1e-4, atol=1e-6)
    th = read_thresholds(folds_run / "thresholds.json")
    assert th["source"] == "out-of-fold" and th["images"] == 48
    np.testing.assert_allclose(th["thresholds"], tune_thresholds(oof.targets, oof.probs),
                               atol=1e-6)
    assert th["classes_present"] == 5
    summary = (folds_run / "summary.md").read_text()
    assert "## Out-of-fold" in summary and "over 5 of 28 classes present" in summary
    report = (folds_run / "report.md").read_text()
    assert "out-of-fold" in report and "over 5 of 28 present" in report
    fold_report = (folds_run / "fold_0" / "report.md").read_text()
    assert "of 28 present" in fold_report and "0 (absent)" in fold_report


def _ensemble_reference(run: Path, x: np.ndarray) -> np.ndarray:
    """Mean over both fold models and the four flips, in PyTorch, from the checkpoints."""
    import torch
    from hpatk.core.checkpoint import build_classifier, load_checkpoint

    total = []
    for k in (0, 1):
        ck = load_checkpoint(run / f"fold_{k}" / "best_macro_f1.pt")
        model = build_classifier(ck).eval()
        mean = torch.tensor(ck["normalize"]["mean"])[:, None, None]
        std = torch.tensor(ck["normalize"]["std"])[:, None, None]
        with torch.inference_mode():
            for dims in ([], [3], [2], [2, 3]):
                xt = torch.from_numpy(x)
                xt = torch.flip(xt, dims) if dims else xt
                total.append(torch.sigmoid(model((xt - mean) / std)).numpy())
    return np.mean(total, axis=0)


@pytest.mark.slow
def test_ensemble_onnx_equals_mean_of_fold_models(folds_run, top5_data, tmp_path):
    import onnxruntime as ort
    from hpatk.core.run import read_thresholds
    from hpatk.export import OnnxClassifier, export_run, read_metadata

    res = export_run(folds_run, tmp_path / "e.onnx", tta="flips")
    assert set(res.parity) == {1, 2, 7}
    meta = read_metadata(tmp_path / "e.onnx", kind="classifier")
    assert meta["tta"] == "flips" and meta["ensemble"]["folds"] == [0, 1]
    assert meta["ensemble"]["members"] == 2 and meta["ensemble"]["thresholds"] == "out-of-fold"
    assert meta["thresholds"] == pytest.approx(
        read_thresholds(folds_run / "thresholds.json")["thresholds"])
    rng = np.random.default_rng(0)
    x = rng.random((7, 4, 32, 32)).astype(np.float32) * 0.6
    ref = _ensemble_reference(folds_run, x)
    session = ort.InferenceSession(str(tmp_path / "e.onnx"), providers=["CPUExecutionProvider"])
    for b in (1, 2, 7):
        got = session.run(None, {"images": x[:b]})[0]
        np.testing.assert_allclose(got, ref[:b], rtol=1e-3, atol=1e-5)
    assert ref.std() > 1e-4  # the comparison is not between constants
    # like any model: OnnxClassifier, hpatk predict and hpatk evaluate take it
    clf = OnnxClassifier(tmp_path / "e.onnx", provider="cpu")
    np.testing.assert_allclose(clf.predict_probs(x), ref, rtol=1e-3, atol=1e-5)
    # --tta flips on a model with the flips in its graph runs it once, not four times
    runs, run = [], clf.run
    clf.run = lambda batch: runs.append(len(batch)) or run(batch)
    np.testing.assert_allclose(clf.probs_of(x, tta="flips"), ref, rtol=1e-3, atol=1e-5)
    assert runs == [7]
    folder = top5_data[0]
    invoke("predict", tmp_path / "e.onnx", folder, "--split", "train", "--provider", "cpu",
           "--out", tmp_path / "sub.csv", "--probs", tmp_path / "p.csv")
    r = invoke("evaluate", tmp_path / "e.onnx", "--data", folder)
    import csv

    from hpatk.core.data import read_kaggle
    from sklearn.metrics import f1_score

    with open(tmp_path / "p.csv", newline="") as f:
        rows = {row["Id"]: [float(row[str(c)]) for c in range(28)] for row in csv.DictReader(f)}
    labels = {s.id: s.labels for s in read_kaggle(folder, split="train")}
    ids = sorted(rows)
    probs = np.array([rows[i] for i in ids])
    y = np.zeros_like(probs, dtype=int)
    for j, i in enumerate(ids):
        y[j, list(labels[i])] = 1
    present = np.flatnonzero(y.any(0))
    assert len(present) == 5
    want = f1_score(y, (probs >= 0.5).astype(int), average="macro", labels=present,
                    zero_division=0)
    line = [ln for ln in r.output.splitlines() if ln.startswith("threshold 0.5")][0]
    assert float(line.split()[2]) == pytest.approx(want, abs=1e-4)
    assert "over the 5 of 28 classes present" in r.output and "ensemble of 2" in r.output
