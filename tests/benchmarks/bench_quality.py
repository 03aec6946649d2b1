"""Quality: a bare PyTorch loop vs hpatk's default recipe vs hpatk best practice, in one run.

On a synthetic low-contrast 4-stain dataset of the paper's five classes (``hpatk data
synth --classes top5``: training images, and a separate labelled test split):

- **bare**: a timm model, BCE, Adam, threshold 0.5, on the raw resized images of fold 0's
  training images (what a user writes in an afternoon);
- **default**: ``hpatk train`` on fold 0 with the default recipe (CLAHE, classic
  augmentation, focal loss, lr decay, thresholds tuned on the validation fold), exported
  to ONNX and predicted through ONNX Runtime (the ``hpatk predict`` path);
- **best**: ``hpatk train --fold all`` (every fold), thresholds tuned on the out-of-fold
  predictions, ``hpatk export RUN --tta flips`` (ONE ONNX model averaging the folds over
  the four flips), predicted through ONNX Runtime.

Every model uses ``--classes present`` (the classes with >= 10 training images) and the
same backbone, size and epochs. Test macro F1 is over the classes present in the test
set. Prints JSON: each arm's test macro F1, per-class F1 and wall time (training +
export + prediction), ``ratio`` = best / bare macro F1 (goal >= 1.10) and
``compute_ratio`` = best / bare wall time (goal <= 5).

    python tests/benchmarks/bench_quality.py                    # the issue's size
    python tests/benchmarks/bench_quality.py --n 160 --size 48 --epochs 4 --folds 3 \\
        --backbone resnet18                                     # a busy 2-core machine
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def _f1s(y: np.ndarray, pred: np.ndarray, names: list[str]) -> dict:
    from hpatk.core.metrics import per_class_f1, predicted_metrics

    m = predicted_metrics(y, pred)
    return {"macro_f1": round(m["macro_f1"], 4), "classes_present": m["classes_present"],
            "micro_f1": round(m["micro_f1"], 4),
            "per_class_f1": {n: round(float(f), 4)
                             for n, f in zip(names, per_class_f1(y, pred), strict=True)}}


def _test_set(data: Path, classes: list[int]) -> tuple[list, np.ndarray]:
    """The labelled test split: samples and (N, K) targets for ``classes``."""
    import csv

    from hpatk.core.data import read_kaggle

    samples = list(read_kaggle(data, split="test"))
    with open(data / "test_labels.csv", newline="") as f:
        labels = {r["Id"]: [int(c) for c in r["Target"].split()] for r in csv.DictReader(f)}
    col = {c: j for j, c in enumerate(classes)}
    keep = [s for s in samples if any(c in col for c in labels[s.id])]
    y = np.zeros((len(keep), len(classes)), np.uint8)
    for i, s in enumerate(keep):
        y[i, [col[c] for c in labels[s.id] if c in col]] = 1
    return keep, y


def _raw(samples: list, size: int) -> np.ndarray:
    """Raw stains resized to ``size`` (no enhancement), uint8 (N, 4, S, S)."""
    from hpatk.core.data import load_stains
    from hpatk.core.preprocess import preprocess

    return np.stack([preprocess(load_stains(s), None, size) for s in samples])


def bare_loop(data: Path, train_ids: set[str], classes: list[int], test: list,
              size: int, backbone: str, epochs: int, batch: int, seed: int) -> np.ndarray:
    """A plain timm + BCE + Adam loop; returns 0/1 test predictions at threshold 0.5."""
    import timm
    import torch
    from hpatk.core.data import read_kaggle

    torch.manual_seed(seed)
    train = [s for s in read_kaggle(data, split="train") if s.id in train_ids]
    x = torch.from_numpy(_raw(train, size)).float() / 255
    y = torch.zeros(len(train), len(classes))
    col = {c: j for j, c in enumerate(classes)}
    for i, s in enumerate(train):
        for c in s.labels:
            if c in col:
                y[i, col[c]] = 1
    mean, std = x.mean((0, 2, 3), keepdim=True), x.std((0, 2, 3), keepdim=True)
    model = timm.create_model(backbone, pretrained=False, num_classes=len(classes), in_chans=4)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x)).split(batch):
            opt.zero_grad()
            loss_fn(model((x[idx] - mean) / std), y[idx]).backward()
            opt.step()
    model.eval()
    xt = torch.from_numpy(_raw(test, size)).float() / 255
    with torch.inference_mode():
        probs = torch.cat([torch.sigmoid(model((b - mean) / std)) for b in xt.split(64)])
    return (probs.numpy() >= 0.5).astype(np.uint8)


def onnx_predict(model: Path, test: list) -> np.ndarray:
    """0/1 predictions of an exported model on the test samples (the hpatk predict path)."""
    from hpatk.core.metrics import apply_thresholds
    from hpatk.export.predict import predict_folder
    from hpatk.export.runtime import OnnxClassifier

    clf = OnnxClassifier(model, provider="cpu")
    res = predict_folder(clf, test, batch_size=32)
    return np.asarray(apply_thresholds(res.probs, clf.thresholds, at_least_one=True), np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=320, help="training images")
    ap.add_argument("--n-test", type=int, default=100, help="test images")
    ap.add_argument("--size", type=int, default=128, help="input size (px)")
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from hpatk.core.classes import CLASS_NAMES
    from hpatk.core.engine import train
    from hpatk.core.folds import read_folds
    from hpatk.core.synth import make_synthetic
    from hpatk.core.train_config import TrainConfig
    from hpatk.export import export_checkpoint, export_run

    work = Path(args.work or tempfile.mkdtemp(prefix="hpatk-bench-quality-"))
    data = make_synthetic(work / "data", n=args.n, size=max(args.size, 64), seed=args.seed,
                          classes="top5", n_test=args.n_test, overwrite=True)
    common = dict(data=str(data), size=args.size, backbone=args.backbone, epochs=args.epochs,
                  folds=args.folds, classes="present", batch_size=args.batch,
                  max_batch_size=max(args.batch, 128), device="cpu", seed=args.seed,
                  cache_dir=str(work))
    result: dict = {"config": vars(args) | {"work": str(work)}}

    t0 = time.monotonic()
    train(TrainConfig(out=str(work / "default"), fold=0, **common))
    export_checkpoint(work / "default" / "best_macro_f1.pt", work / "default.onnx")
    from hpatk.core.checkpoint import load_checkpoint

    classes = [int(c) for c in load_checkpoint(work / "default" / "best_macro_f1.pt")["classes"]]
    names = [CLASS_NAMES[c] for c in classes]
    test, y = _test_set(data, classes)
    pred = onnx_predict(work / "default.onnx", test)
    result["default"] = {**_f1s(y, pred, names), "wall_s": round(time.monotonic() - t0, 1)}

    folds = read_folds(work / "default" / "folds.csv")
    train_ids = {i for i, f in folds.items() if f != 0}
    t0 = time.monotonic()
    pred = bare_loop(data, train_ids, classes, test, args.size, args.backbone, args.epochs,
                     args.batch, args.seed)
    result["bare"] = {**_f1s(y, pred, names), "wall_s": round(time.monotonic() - t0, 1),
                      "train_images": len(train_ids)}

    t0 = time.monotonic()
    train(TrainConfig(out=str(work / "best"), fold="all", **common))
    export_run(work / "best", work / "best.onnx", tta="flips")
    pred = onnx_predict(work / "best.onnx", test)
    th = json.loads((work / "best" / "thresholds.json").read_text())
    result["best"] = {**_f1s(y, pred, names), "wall_s": round(time.monotonic() - t0, 1),
                      "oof_macro_f1_at_0_5": th["macro_f1_at_0_5"],
                      "oof_macro_f1_tuned": th["macro_f1_tuned"]}
    bare = result["bare"]
    result["test_images"] = len(test)
    result["ratio"] = round(result["best"]["macro_f1"] / max(bare["macro_f1"], 1e-9), 3)
    result["ratio_default"] = round(result["default"]["macro_f1"] / max(bare["macro_f1"], 1e-9),
                                    3)
    result["compute_ratio"] = round(result["best"]["wall_s"] / max(bare["wall_s"], 1e-9), 2)
    result["cpu_count"] = os.cpu_count()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
