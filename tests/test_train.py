"""hpatk train: the run folder, learning above a trivial predictor, config replay, exact
resume, NaN stop, hostile checkpoints, the recipe's schedule."""

from __future__ import annotations

import json
import math
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import invoke
from hpatk.core.checkpoint import build_classifier, load_checkpoint
from hpatk.core.errors import HpatkError
from hpatk.core.run import METRIC_COLUMNS, read_metrics
from hpatk.core.train_config import TrainConfig, read_config

# timm's 0.37 M-parameter test network: the engine is backbone-agnostic, CPU time is scarce
TINY = "timm:test_resnet"


@pytest.fixture(scope="module")
def top5_cache(top5_dataset) -> Path:
    """160 synthetic images of the paper's five classes, cached (CLAHE) at 64 px."""
    return top5_dataset(n=160, size=64, seed=0)[1]


@pytest.fixture(scope="module")
def learned_run(top5_cache, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "learn"
    # no augmentation: 6 epochs on CPU are enough to learn the five green patterns
    invoke("train", "--data", top5_cache, "--backbone", TINY, "--aug", "none",
           "--classes", "top5", "--epochs", 6, "--batch-size", 16, "--seed", 0, "--out", out)
    return out


@pytest.mark.slow
def test_run_folder_is_complete(learned_run):
    for name in ("config.yaml", "folds.csv", "metrics.csv", "best_loss.pt", "best_macro_f1.pt",
                 "best_micro_f1.pt", "last.pt", "thresholds.json", "report.md", "curves.png",
                 "per_class_f1.png"):
        assert (learned_run / name).is_file(), name
    assert not list(learned_run.glob(".*.tmp")), "a temporary file was left behind"
    rows = read_metrics(learned_run / "metrics.csv")
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5, 6]
    header = (learned_run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert tuple(header) == METRIC_COLUMNS
    assert rows[1]["lr"] == pytest.approx(5e-4 * math.exp(-0.01))
    report = (learned_run / "report.md").read_text()
    assert "![training curves](curves.png)" in report and "Mitochondria" in report
    best = max(rows, key=lambda r: (r["val_macro_f1"], -r["epoch"]))
    assert "macro F1 (paper Eq. 8)" in report and "macro F1 (Kaggle)" in report
    assert f"| {best['val_paper_macro_f1']:.4f} |" in report


@pytest.mark.slow
def test_checkpoints_follow_the_format(learned_run):
    rows = read_metrics(learned_run / "metrics.csv")
    for name, key, pick in (("best_loss", "val_loss", min), ("best_macro_f1", "val_macro_f1", max),
                            ("best_micro_f1", "val_micro_f1", max)):
        ck = load_checkpoint(learned_run / f"{name}.pt")
        best = pick(rows, key=lambda r, k=key: r[k])
        assert ck["metrics"][key] == pytest.approx(best[key], abs=1e-6), name
        assert "optimizer" not in ck
    ck = load_checkpoint(learned_run / "best_macro_f1.pt")
    assert ck["kind"] == "classifier" and ck["classes"] == [0, 25, 21, 2, 23]
    assert ck["class_names"][0] == "Nucleoplasm" and ck["size"] == 64
    assert ck["stains"] == ["green", "red", "blue", "yellow"]
    assert ck["enhance"]["name"] == "clahe" and len(ck["normalize"]["mean"]) == 4
    assert ck["model"] == {"backbone": TINY, "num_classes": 5, "in_chans": 4, "kwargs": {}}
    thr = json.loads((learned_run / "thresholds.json").read_text())
    assert ck["thresholds"] == pytest.approx(thr["thresholds"])
    assert thr["classes"] == ck["classes"] and thr["epoch"] == ck["epoch"]
    last = load_checkpoint(learned_run / "last.pt")
    assert last["epoch"] == 6 and {"optimizer", "scheduler", "rng", "batch_size"} <= set(last)
    # the normalisation is the training fold's per-channel statistics
    from hpatk.core.cache import CacheDataset
    from hpatk.core.folds import read_folds

    folds = read_folds(learned_run / "folds.csv")
    ds = CacheDataset(read_config(learned_run / "config.yaml").data)
    train_rows = [i for i, x in enumerate(ds.ids) if folds.get(x, 0) != 0]
    x = torch.stack([ds[i][0] for i in train_rows]).double() / 255
    assert ck["normalize"]["mean"] == pytest.approx(x.mean((0, 2, 3)).tolist(), abs=1e-6)
    assert ck["normalize"]["std"] == pytest.approx(x.std((0, 2, 3), correction=0).tolist(),
                                                   abs=1e-5)


@pytest.mark.slow
def test_learns_clearly_above_trivial_predictors(learned_run):
    from hpatk.core.folds import read_folds
    from sklearn.metrics import f1_score

    rows = read_metrics(learned_run / "metrics.csv")
    best = max(r["val_macro_f1"] for r in rows)
    ck = load_checkpoint(learned_run / "best_macro_f1.pt")
    cfg = read_config(learned_run / "config.yaml")
    from hpatk.core.cache import CacheDataset

    ds = CacheDataset(cfg.data, classes=ck["classes"])
    folds = read_folds(learned_run / "folds.csv")
    val = np.array([folds.get(i, -1) == 0 for i in ds.ids])
    y = ds.targets[val].astype(int)
    all_positive = f1_score(y, np.ones_like(y), average="macro", zero_division=0)
    prior = f1_score(y, np.broadcast_to(ds.targets[~val].mean(0) > 0.5, y.shape).astype(int),
                     average="macro", zero_division=0)
    assert best > max(all_positive, prior) + 0.2, (best, all_positive, prior)


@pytest.mark.slow
def test_build_classifier_reproduces_the_logged_validation_loss(learned_run):
    ck = load_checkpoint(learned_run / "best_loss.pt")
    model = build_classifier(ck)
    assert not model.training
    again = build_classifier(learned_run / "best_loss.pt")
    for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    from hpatk.core.evaluate import predict_rows
    from hpatk.core.folds import read_folds
    from hpatk.core.registry import get_registry

    cfg = read_config(learned_run / "config.yaml")
    folds = read_folds(learned_run / "folds.csv")
    from hpatk.core.cache import cache_ids

    ids = cache_ids(cfg.data)
    rows = [i for i, x in enumerate(ids) if folds.get(x) == 0]
    p = predict_rows(ck, Path(cfg.data), np.array(rows), device="cpu")
    loss = get_registry().losses.create("focal")
    logits = torch.logit(torch.from_numpy(p.probs).double().clamp(1e-12, 1 - 1e-12))
    val_loss = float(loss(logits, torch.from_numpy(p.targets).double()))
    assert val_loss == pytest.approx(ck["metrics"]["val_loss"], rel=2e-3)


@pytest.mark.slow
def test_config_replays_the_run(learned_run, tmp_path):
    cfg = read_config(learned_run / "config.yaml")
    assert cfg.backbone == TINY and cfg.classes == "top5" and cfg.size == 64
    assert cfg.enhance == "clahe" and cfg.in_stains == ["green", "red", "blue", "yellow"]
    out = tmp_path / "replay"
    invoke("train", "--config", learned_run / "config.yaml", "--epochs", 1, "--out", out)
    replay = read_config(out / "config.yaml")
    assert replay.replace(out=cfg.out, epochs=cfg.epochs) == cfg
    a, b = read_metrics(learned_run / "metrics.csv")[:1], read_metrics(out / "metrics.csv")
    for ra, rb in zip(a, b, strict=True):
        for k in METRIC_COLUMNS[:-1]:
            assert ra[k] == pytest.approx(rb[k], rel=1e-5, abs=1e-6), k
    assert (out / "folds.csv").read_text() == (learned_run / "folds.csv").read_text()


@pytest.mark.slow
def test_existing_run_is_not_overwritten(learned_run):
    r = invoke("train", "--config", learned_run / "config.yaml", ok=False)
    assert r.exit_code == 1 and "--resume" in r.output


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["state_dict"]


@pytest.mark.slow
def test_resume_equals_straight_run(small_cache, tmp_path):
    """2 epochs, then --resume to 4 == 4 epochs straight: weights, optimizer, metrics;
    with augmentation (RNG state) and a batch size that doubles every epoch."""
    common = ["--data", small_cache, "--backbone", TINY, "--classes", "top5", "--aug",
              "classic", "--batch-size", 4, "--batch-double-every", 1, "--max-batch-size", 16,
              "--seed", 3, "--device", "cpu", "--workers", 0]
    invoke("train", *common, "--epochs", 4, "--out", tmp_path / "straight")
    invoke("train", *common, "--epochs", 2, "--out", tmp_path / "split")
    assert load_checkpoint(tmp_path / "split" / "last.pt")["batch_size"] == 8
    invoke("train", "--resume", "--epochs", 4, "--out", tmp_path / "split")
    a, b = _weights(tmp_path / "straight" / "last.pt"), _weights(tmp_path / "split" / "last.pt")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    la, lb = (load_checkpoint(tmp_path / d / "last.pt") for d in ("straight", "split"))
    assert la["batch_size"] == lb["batch_size"] == 16
    sa, sb = la["optimizer"]["state"], lb["optimizer"]["state"]
    for k in sa:
        torch.testing.assert_close(sa[k]["exp_avg_sq"], sb[k]["exp_avg_sq"], rtol=0, atol=1e-9)
    ra, rb = (read_metrics(tmp_path / d / "metrics.csv") for d in ("straight", "split"))
    assert [r["epoch"] for r in rb] == [1, 2, 3, 4]
    for x, y in zip(ra, rb, strict=True):
        for k in METRIC_COLUMNS[:-1]:
            assert x[k] == pytest.approx(y[k], rel=1e-6, abs=1e-7), k
    # what resuming may not change
    r = invoke("train", "--resume", "--backbone", "resnet18", "--epochs", 5,
               "--out", tmp_path / "split", ok=False)
    assert r.exit_code == 1 and "--backbone" in r.output and "differs" in r.output


class NanAfter(torch.nn.Module):
    """BCE for ``after`` calls, then NaN."""

    def __init__(self, after: int = 3) -> None:
        super().__init__()
        self.after, self.calls = after, 0

    def forward(self, logits, targets):
        self.calls += 1
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)
        return loss * float("nan") if self.calls > self.after else loss


class NanLossPlugin:
    from hpatk.core import hookimpl

    @hookimpl
    def hpatk_register_losses(self, register):
        register("nan_after", NanAfter)


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(small_cache, tmp_path,
                                                            throwaway_plugin):
    throwaway_plugin(NanLossPlugin(), "nan-loss-test")
    out = tmp_path / "nan"
    # 32 training images at batch 16: 2 training + 1 validation call per epoch, so the
    # 7th call (epoch 3's first step) is the first NaN
    r = invoke("train", "--data", small_cache, "--backbone", TINY, "--classes", "top5",
               "--loss", "nan_after", "--loss-param", "after=6", "--batch-size", 16,
               "--epochs", 4, "--aug", "none", "--out", out, ok=False)
    assert r.exit_code == 1
    assert "epoch 3/4" in r.output and "nan" in r.output.lower()
    assert "last good checkpoint" in r.output and "Traceback" not in r.output
    last = load_checkpoint(out / "last.pt")
    assert last["epoch"] == 2
    weights = [v for v in last["state_dict"].values() if v.is_floating_point()]
    assert all(torch.isfinite(v).all() for v in weights)
    assert [row["epoch"] for row in read_metrics(out / "metrics.csv")] == [1, 2]


class Hostile:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (subprocess.call, (["touch", str(self.marker)],))


@pytest.mark.slow
def test_hostile_checkpoint_is_refused_and_never_runs(learned_run, tmp_path):
    marker = tmp_path / "pwned"
    ck = load_checkpoint(learned_run / "best_macro_f1.pt")
    ck["payload"] = Hostile(marker)
    evil = tmp_path / "evil.pt"
    torch.save(ck, evil)
    with pytest.raises(HpatkError, match="refused"):
        load_checkpoint(evil)
    with pytest.raises(HpatkError, match="refused"):
        build_classifier(evil)
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.yaml", "folds.csv"):
        (run / name).write_bytes((learned_run / name).read_bytes())
    (run / "best_macro_f1.pt").write_bytes(evil.read_bytes())
    r = invoke("evaluate", run, ok=False)
    assert r.exit_code == 1 and "refused" in r.output and "Traceback" not in r.output
    assert not marker.exists()
    # the payload is real: the checkpoint's pickle imports and calls subprocess.call (an
    # unpickler that runs code would run it), read from its opcodes, never unpickled
    import pickletools
    import zipfile

    with zipfile.ZipFile(evil) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(data)]
    called = [arg.split()[-1] for name, arg in ops if name == "GLOBAL"]
    assert "call" in called and ("REDUCE", None) in ops  # subprocess.call(["touch", ...])
    assert not marker.exists()


def test_a_checkpoint_that_is_not_a_classifier(tmp_path):
    path = tmp_path / "g.pt"
    torch.save({"kind": "generator", "format": 1}, path)
    with pytest.raises(HpatkError, match="not a classifier"):
        build_classifier(path)
    (tmp_path / "junk.pt").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(HpatkError):
        load_checkpoint(tmp_path / "junk.pt")


# -- the recipe and the options -----------------------------------------------------------
def test_paper_schedule():
    cfg = TrainConfig()
    assert (cfg.lr, cfg.epochs, cfg.folds, cfg.loss) == (5e-4, 35, 5, "focal")
    assert [cfg.batch_size_at(e) for e in (0, 14, 15, 29, 30, 34)] == [32, 32, 64, 64, 128, 128]
    assert cfg.lr_factor(10) == pytest.approx(math.exp(-0.1))
    assert TrainConfig(batch_double_every=0).batch_size_at(40) == 32


def test_changing_the_loss_drops_the_old_loss_parameters():
    cfg = TrainConfig()
    assert cfg.loss_params == {"gamma": 2.0}
    assert cfg.override(loss="bce").loss_params == {}
    assert cfg.override(loss="bce", loss_params={"pos_weight": [2.0]}).loss_params == {
        "pos_weight": [2.0]}
    assert cfg.override(loss="focal", epochs=3).loss_params == {"gamma": 2.0}


def test_sampler_is_deterministic_per_epoch_and_covers_everything():
    from hpatk.core.batching import EpochBatchSampler

    s = EpochBatchSampler(10, 4, seed=1)
    first = list(s)
    assert sorted(i for b in first for i in b) == list(range(10)) and len(s) == 3
    s.set_epoch(1)
    assert list(s) != first
    s.set_epoch(0)
    assert list(s) == first
    s = EpochBatchSampler(9, 4, seed=0)  # a trailing batch of one joins the one before
    assert len(list(s)) == len(s) == 2


@pytest.mark.parametrize("args, message", [
    (["--fold", "7"], "fold must be in 0..4"),
    (["--classes", "top6"], "--classes"),
    (["--backbone", "resnet5"], "did you mean"),
    (["--size", "48"], "--size 48"),
    (["--in-stains", "green,purple"], "purple"),
])
def test_bad_options_are_one_line_errors(small_cache, tmp_path, args, message):
    r = invoke("train", "--data", small_cache, "--epochs", 1, "--out", tmp_path / "r", *args,
               ok=False)
    assert r.exit_code == 1 and message in r.output and "Traceback" not in r.output


def test_aug_gan_from_the_cache_without_usable_samples_says_what_to_do(small_cache, tmp_path):
    r = invoke("train", "--data", small_cache, "--backbone", TINY, "--classes", "top5",
               "--aug", "gan", "--synthetic-source", "cache", "--epochs", 1,
               "--out", tmp_path / "g", ok=False)
    assert r.exit_code == 1 and "no fold-safe synthetic samples" in r.output
    assert "--synthetic-source fit" in r.output
