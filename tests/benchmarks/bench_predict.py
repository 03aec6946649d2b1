"""End-to-end throughput of ``hpatk predict`` against the model alone in ONNX Runtime, for
float and int8 exports, in one run on the same images.

``hpatk predict`` decodes each image's four stain PNGs, enhances them with the model's
recorded enhancement (CLAHE here) and resizes them in ``--workers`` threads, one batch
ahead of the ONNX Runtime calls (:func:`hpatk.export.predict.predict_folder`, what the
command runs). "Model only" feeds the same images, already preprocessed, straight to the
same session in batches of the same size. The pipeline is not the bottleneck when the
ratio predict / model-only is close to 1 (goal >= 0.8). Also reported: the decode +
enhance + resize rate alone (the same threads, no model), which bounds the ratio.

    python tests/benchmarks/bench_predict.py                    # resnet18 at 512 px, 64 images
    python tests/benchmarks/bench_predict.py --images 32 --backbone resnet50 --rounds 2

Prints one JSON object; ``ratio`` is the float model's, ``ratio_int8`` the int8 one's.
Interleaved, best of ``--rounds``; the machine may be shared, so ratios hold better than
absolute rates.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

GOAL = 0.8


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=512, help="PNG side (px)")
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--model-size", type=int, default=512, help="the model's input (px)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2, help="decode threads of predict")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--int8", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--keep", type=Path, default=None, help="keep the models and images here")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_onnx import realistic_checkpoint
    from hpatk.core.data import read_kaggle
    from hpatk.core.synth import make_synthetic
    from hpatk.core.threads import thread_count
    from hpatk.export import OnnxClassifier, export_checkpoint
    from hpatk.export.predict import load_image, predict_folder, select_samples

    work = Path(args.keep or tempfile.mkdtemp(prefix="bench_predict."))
    work.mkdir(parents=True, exist_ok=True)
    folder = work / "data"
    if not folder.exists():
        make_synthetic(folder, n=16, size=args.image_size, seed=0, n_test=args.images,
                       workers=1)
    ck = work / "model.pt"
    realistic_checkpoint(args.backbone, args.model_size, ck)
    models = {"float": export_checkpoint(ck, work / "float.onnx").path}
    if args.int8:
        models["int8"] = export_checkpoint(ck, work / "int8.onnx", quantize="int8",
                                           calibration=folder, calibration_n=16,
                                           verify=False).path
    samples = select_samples(folder)
    assert len(samples) == args.images and len(read_kaggle(folder, split="train")) == 16
    results: dict[str, Any] = {}
    for name, path in models.items():
        clf = OnnxClassifier(path, provider="cpu")
        with ThreadPoolExecutor(args.workers) as pool:
            images = np.stack(list(pool.map(lambda s, clf=clf: load_image(clf, s), samples)))
        x = clf.to_float(images)
        clf.run(x[:args.batch])  # warm-up

        def model_only(clf: OnnxClassifier = clf, x: np.ndarray = x) -> None:
            for s in range(0, len(x), args.batch):
                clf.probs_of(x[s:s + args.batch])

        def end_to_end(clf: OnnxClassifier = clf) -> None:
            predict_folder(clf, samples, batch_size=args.batch, workers=args.workers)

        def pipeline_only(clf: OnnxClassifier = clf) -> None:
            with ThreadPoolExecutor(args.workers) as pool:
                list(pool.map(lambda s: load_image(clf, s), samples))

        best = {k: float("inf") for k in ("model_only", "predict", "pipeline_only")}
        for _ in range(args.rounds):
            for key, fn in (("model_only", model_only), ("predict", end_to_end),
                            ("pipeline_only", pipeline_only)):
                t0 = time.perf_counter()
                fn()
                best[key] = min(best[key], time.perf_counter() - t0)
        rate = {k: round(len(samples) / v, 2) for k, v in best.items()}
        results[name] = {"predict_images_per_s": rate["predict"],
                         "model_only_images_per_s": rate["model_only"],
                         "decode_enhance_resize_only_images_per_s": rate["pipeline_only"],
                         "ratio": round(rate["predict"] / rate["model_only"], 3)}
        print(json.dumps({name: results[name]}), file=sys.stderr, flush=True)
    out = {
        "benchmark": "hpatk predict end to end vs the model alone in ONNX Runtime",
        "ratio": results["float"]["ratio"],
        "ratio_int8": results.get("int8", {}).get("ratio"),
        "goal": GOAL, "goal_met": all(r["ratio"] >= GOAL for r in results.values()),
        "results": results, "model": f"{args.backbone} at {args.model_size} px",
        "images": len(samples), "image_size": args.image_size, "enhance": "clahe",
        "batch": args.batch, "workers": args.workers, "rounds": args.rounds,
        "ort_threads": thread_count(), "cpus": len(os.sched_getaffinity(0)),
    }
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
