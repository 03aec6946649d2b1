"""Benchmark: ONNX Runtime (CPU provider) against PyTorch eager for exported classifiers.

Each model is exported with ``hpatk.export.export_checkpoint`` (what ``hpatk export``
ships: normalisation + model + sigmoid, legacy exporter, opset 17, parity-checked) and
timed against the same module in PyTorch, in one process, interleaved, best of
``--rounds``: torch NCHW under ``no_grad`` and torch ``channels_last`` under
``inference_mode`` (the fastest eager configuration); the better of the two is "best
torch". Both runtimes get the same thread count. The machine is shared: ratios hold
better than absolute times.

    python tests/benchmarks/bench_onnx.py          # inception_v4, resnet50; 512, 256; batch 1, 8
    python tests/benchmarks/bench_onnx.py --quick   # inception_v4, 512 px, batch 1
    python tests/benchmarks/bench_onnx.py --models resnet50 --sizes 256 --batches 1,8,16

The int8 accuracy cost needs a trained model: ``--f1-run RUN`` (a run folder of
``hpatk train``) exports RUN/best_macro_f1.pt as float and int8 (calibrated on training
-fold images only), predicts the run's validation fold with both, and reports the
macro-F1 of each at the run's thresholds, with their speeds against torch:

    python tests/benchmarks/bench_onnx.py --f1-run run1 [--f1-data DATA] [--calibration-n 64]

Prints one JSON object. ``ratio`` = ORT images/s / best-torch images/s for inception_v4
at 512 px, batch 1 (the first measured configuration when that one is not selected);
``ratio_int8`` the same for the ``--quantize int8`` export;
``parity_max_abs_error`` = the export's parity check (batch 1, 2 and 7) per model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

GOAL = 1.3
MEAN = [0.08, 0.05, 0.06, 0.09]
STD = [0.11, 0.08, 0.09, 0.12]


def realistic_checkpoint(backbone: str, size: int, path: Path) -> dict[str, Any]:
    """A classifier checkpoint whose random-init model has a trained model's statistics
    (BatchNorm running stats from data, logits of std ~2): random-init deep nets are
    constant in eval mode, and the parity check refuses those."""
    import torch
    from hpatk.core import __version__, get_registry
    from hpatk.core.checkpoint import save_checkpoint
    from hpatk.core.classes import CLASS_NAMES, STAINS
    from hpatk.export.onnx import image_inputs

    torch.manual_seed(0)
    model = get_registry().backbones.create(backbone, num_classes=28, in_chans=4)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.momentum = None  # cumulative average over the calibration batches
    def batch(seed: int) -> torch.Tensor:  # the export's own varied inputs, normalised
        x = torch.from_numpy(image_inputs(4, seed, MEAN, STD, size))
        return (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]

    model.train()
    with torch.no_grad():  # at the real size: BatchNorm statistics depend on it
        for seed in range(3):
            model(batch(100 + seed))
        model.eval()
        head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
        head.weight.mul_(2.0 / float(model(batch(200)).std().clamp_min(1e-6)))
    for bn in bns:
        bn.momentum = 0.1
    ckpt = {
        "kind": "classifier", "format": 1, "hpatk_version": __version__,
        "model": {"backbone": backbone, "num_classes": 28, "in_chans": 4, "kwargs": {}},
        "state_dict": model.state_dict(), "classes": list(range(28)),
        "class_names": list(CLASS_NAMES), "stains": list(STAINS), "size": size,
        "enhance": {"name": "clahe", "clip_limit": 2.0, "grid_size": [8, 8]},
        "normalize": {"mean": MEAN, "std": STD}, "thresholds": [0.5] * 28,
    }
    save_checkpoint(ckpt, path)
    return ckpt


def torch_variants(ckpt: dict[str, Any]) -> dict[str, Any]:
    """name -> callable(x numpy) for the two eager configurations of the exported graph."""
    import torch
    from hpatk.core.checkpoint import build_classifier
    from hpatk.export.onnx import classifier_graph

    nchw = classifier_graph(build_classifier(ckpt), MEAN, STD, probabilities=True).eval()
    cl = classifier_graph(build_classifier(ckpt), MEAN, STD, probabilities=True).eval()
    cl = cl.to(memory_format=torch.channels_last)

    def run_nchw(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return nchw(torch.from_numpy(x)).numpy()

    def run_cl(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            t = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
            return cl(t).numpy()

    return {"torch_nchw": run_nchw, "torch_channels_last": run_cl}


def best_times(fns: dict[str, Any], x: np.ndarray, rounds: int) -> dict[str, float]:
    """Best seconds per call of each function, interleaved over ``rounds`` (+1 warm-up)."""
    best = {name: float("inf") for name in fns}
    for r in range(rounds + 1):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn(x)
            dt = time.perf_counter() - t0
            if r:  # round 0 warms caches, allocators and ORT's kernels
                best[name] = min(best[name], dt)
    return best


def int8_f1(run: Path, data: Path | None, calibration_n: int, rounds: int,
            threads: int, work: Path) -> dict[str, Any]:
    """Macro-F1 on the run's validation fold: float ONNX vs int8 ONNX (vs torch speed)."""
    import yaml
    from hpatk.core.checkpoint import load_checkpoint
    from hpatk.core.data import read_kaggle
    from hpatk.core.folds import read_folds
    from hpatk.core.metrics import apply_thresholds, macro_f1
    from hpatk.export import OnnxClassifier, export_checkpoint
    from hpatk.export.predict import predict_folder

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    data = Path(data or cfg["data"])
    fold = int(cfg.get("fold") or 0)
    folds = read_folds(run / "folds.csv")
    refs = read_kaggle(data, split="train")
    val = [r for r in refs if folds.get(r.id) == fold]
    train = [r for r in refs if folds.get(r.id) not in (None, fold)]
    # calibration sees training-fold images only: a folder of links to them
    calib = work / "calibration"
    (calib / "train").mkdir(parents=True, exist_ok=True)
    with open(calib / "train.csv", "w") as f:
        f.write("Id,Target\n")
        for r in train:
            f.write(f"{r.id},{' '.join(map(str, r.labels))}\n")
            for p in r.paths():
                link = calib / "train" / p.name
                if not link.exists():
                    link.symlink_to(p.resolve())
    ck = run / "best_macro_f1.pt"
    ckpt = load_checkpoint(ck)
    f32 = export_checkpoint(ck, work / "f1_float.onnx")
    q = export_checkpoint(ck, work / "f1_int8.onnx", quantize="int8", calibration=calib,
                          calibration_n=min(calibration_n, len(train)))
    classes = list(ckpt["classes"])
    y = np.zeros((len(val), len(classes)), np.uint8)
    for i, r in enumerate(val):
        for c in r.labels:
            if c in classes:
                y[i, classes.index(c)] = 1
    out: dict[str, Any] = {"run": str(run), "fold": fold, "validation_images": len(val),
                           "classes": ",".join(map(str, classes)),
                           "calibration_images": q.quantization[
                               "calibration_images"]}
    models = {}
    for name, res in (("float", f32), ("int8", q)):
        clf = OnnxClassifier(res.path, provider="cpu", threads=threads)
        models[name] = clf
        pred = predict_folder(clf, val, batch_size=16)
        th = clf.thresholds
        out[f"macro_f1_{name}"] = round(macro_f1(y, apply_thresholds(pred.probs, th)), 4)
        out[f"probs_{name}"] = pred.probs
    out["macro_f1_cost"] = round(out["macro_f1_float"] - out["macro_f1_int8"], 4)
    agree = (apply_thresholds(out.pop("probs_float"), models["float"].thresholds)
             == apply_thresholds(out.pop("probs_int8"), models["int8"].thresholds))
    out["decision_agreement"] = round(float(agree.mean()), 4)
    fns = torch_variants(ckpt)
    fns["ort"] = lambda x: models["float"].run(x)
    fns["ort_int8"] = lambda x: models["int8"].run(x)
    size = int(ckpt["size"])
    x = np.random.default_rng(0).random((1, len(ckpt["stains"]), size, size), np.float32)
    ms = {k: round(1000 * v, 2) for k, v in best_times(fns, x, rounds).items()}
    best = min(ms["torch_nchw"], ms["torch_channels_last"])
    out.update({"size": size, "ms_per_image_batch1": ms,
                "int8_ratio_vs_best_torch": round(best / ms["ort_int8"], 3),
                "float_ratio_vs_best_torch": round(best / ms["ort"], 3)})
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="inceptionv4,resnet50",
                    help="hpatk backbone names, comma-separated")
    ap.add_argument("--sizes", default="512,256")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for both runtimes [default: all cores]")
    ap.add_argument("--quick", action="store_true", help="inception_v4, 512 px, batch 1")
    ap.add_argument("--keep", type=Path, default=None, help="keep the .onnx files here")
    ap.add_argument("--int8", action=argparse.BooleanOptionalAction, default=True,
                    help="also time the --quantize int8 export (calibrated on 8 synthetic "
                         "images)")
    ap.add_argument("--f1-run", type=Path, default=None,
                    help="measure int8's macro-F1 cost on this hpatk train run instead")
    ap.add_argument("--f1-data", type=Path, default=None,
                    help="the run's dataset folder [default: its config's data]")
    ap.add_argument("--calibration-n", type=int, default=64)
    args = ap.parse_args(argv)
    if args.quick:
        args.models, args.sizes, args.batches = "inceptionv4", "512", "1"

    import onnxruntime as ort
    import torch
    from hpatk.export import OnnxClassifier, export_checkpoint

    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    rows, parity = [], {}
    work = Path(args.keep or tempfile.mkdtemp(prefix="bench_onnx."))
    work.mkdir(parents=True, exist_ok=True)
    if args.f1_run:
        out = int8_f1(args.f1_run, args.f1_data, args.calibration_n, args.rounds, threads,
                      work)
        print(json.dumps({"benchmark": "int8 vs float ONNX: macro-F1 on the validation "
                          "fold, speed vs best torch", **out, "threads": threads},
                         indent=1))
        return out
    for backbone in args.models.split(","):
        for size in [int(s) for s in args.sizes.split(",")]:
            ck = work / f"{backbone}_{size}.pt"
            ckpt = realistic_checkpoint(backbone, size, ck)
            t0 = time.perf_counter()
            res = export_checkpoint(ck, work / f"{backbone}_{size}.onnx")
            export_s = time.perf_counter() - t0
            parity[f"{backbone}@{size}"] = res.max_abs_error
            clf = OnnxClassifier(res.path, provider="cpu", threads=threads)
            fns = torch_variants(ckpt)
            fns["ort"] = lambda x, clf=clf: clf.run(x)
            if args.int8:
                from hpatk.core.synth import make_synthetic

                calib = work / f"calib{size}"
                if not calib.exists():
                    make_synthetic(calib, n=8, size=size, seed=0, workers=1, n_test=1)
                q = export_checkpoint(ck, work / f"{backbone}_{size}_int8.onnx",
                                      quantize="int8", calibration=calib, calibration_n=8,
                                      verify=False)
                q8 = OnnxClassifier(q.path, provider="cpu", threads=threads)
                fns["ort_int8"] = lambda x, q8=q8: q8.run(x)
            for batch in [int(b) for b in args.batches.split(",")]:
                x = np.random.default_rng(batch).random((batch, 4, size, size), np.float32)
                best = best_times(fns, x, args.rounds)
                ms = {k: 1000 * v / batch for k, v in best.items()}
                torch_best = min(ms["torch_nchw"], ms["torch_channels_last"])
                rows.append({
                    "model": backbone, "size": size, "batch": batch,
                    "ms_per_image": {k: round(v, 2) for k, v in ms.items()},
                    "ratio_vs_best_torch": round(torch_best / ms["ort"], 3),
                    "ratio_vs_torch_nchw": round(ms["torch_nchw"] / ms["ort"], 3),
                    "export_s": round(export_s, 1),
                })
                if "ort_int8" in ms:
                    rows[-1]["int8_ratio_vs_best_torch"] = round(torch_best / ms["ort_int8"], 3)
                    rows[-1]["int8_ratio_vs_ort"] = round(ms["ort"] / ms["ort_int8"], 3)
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            ck.unlink()
    headline = next((r for r in rows if (r["model"], r["size"], r["batch"])
                     == ("inceptionv4", 512, 1)), rows[0])
    out = {
        "benchmark": "onnxruntime CPU vs best torch eager (classifier export)",
        "ratio": headline["ratio_vs_best_torch"],
        "ratio_config": f"{headline['model']} {headline['size']} px batch {headline['batch']}",
        "goal": GOAL, "goal_met": headline["ratio_vs_best_torch"] >= GOAL,
        "ratio_int8": headline.get("int8_ratio_vs_best_torch"),
        "parity_max_abs_error": parity, "results": rows, "threads": threads,
        "rounds": args.rounds, "torch": torch.__version__, "onnxruntime": ort.__version__,
        "cpu": platform.processor() or platform.machine(),
    }
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
