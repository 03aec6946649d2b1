"""int8 static quantization of an exported classifier with ONNX Runtime.

QDQ format, per-channel int8 weights, uint8 activations calibrated (MinMax) on real
preprocessed training images: ONNX Runtime's CPU kernels fuse the QDQ pairs into
integer convolutions (VNNI where the CPU has it). The input normalisation, the first
convolution (it sees the raw normalised pixels: quantizing it flipped decisions in our
measurements), the classifier head (Gemm) and the sigmoid stay in float, so
probabilities keep their resolution near the thresholds.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from hpatk.core.errors import HpatkError, typed_line

QUANTIZE = ("int8",)
# Ops whose int8 kernels ORT fuses; Gemm/MatMul (the head) and Sigmoid stay float.
INT8_OPS = ["Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "Add", "Concat", "Relu"]


def calibration_images(data: str | os.PathLike[str], meta: dict[str, Any], n: int = 64,
                       seed: int = 0) -> np.ndarray:
    """``n`` preprocessed training images, float32 (n, C, S, S) in [0, 1], drawn at random.

    Args:
        data: a dataset folder (Kaggle layout, or a folder of stain PNGs) or an hpatk cache
            (.h5) built with the model's enhancement and size.
        meta: the model's hpatk metadata (stains, enhance, input_size).
    """
    data = Path(data)
    size, stains = int(meta["input_size"]), list(meta["stains"])
    rng = np.random.default_rng(seed)
    if data.is_file():
        from hpatk.core.cache import CacheDataset, read_cache_meta

        cm = read_cache_meta(data)
        if int(cm["size"]) != size or list(cm["stains"]) != stains:
            raise HpatkError(f"--calibration cache '{data}' holds {cm['size']} px "
                             f"{','.join(cm['stains'])}; the model takes {size} px "
                             f"{','.join(stains)} (pass the dataset folder instead)")
        if json.dumps(cm.get("enhance"), sort_keys=True) != json.dumps(meta["enhance"],
                                                                       sort_keys=True):
            raise HpatkError(f"--calibration cache '{data}' was enhanced with "
                             f"{cm.get('enhance')}; the model expects {meta['enhance']} "
                             f"(pass the dataset folder instead)")
        ds = CacheDataset(data)
        rows = np.sort(rng.permutation(len(ds))[:n])
        images = np.stack([ds[int(i)][0].numpy() for i in rows])
    elif data.is_dir():
        from hpatk.core.data import load_stains
        from hpatk.core.preprocess import make_enhancer, preprocess
        from hpatk.export.predict import select_samples

        samples = select_samples(data, split="train", stains=stains)
        pick = [samples[int(i)] for i in np.sort(rng.permutation(len(samples))[:n])]
        enhancer = make_enhancer(meta["enhance"])
        images = np.stack([preprocess(load_stains(s, stains=stains), enhancer, size)
                           for s in pick])
    else:
        raise HpatkError(f"--calibration '{data}' does not exist")
    return images.astype(np.float32) / np.float32(255.0)


def quantize_int8(src: Path, dst: Path, images: np.ndarray, input_name: str) -> dict[str, Any]:
    """Quantize the float model ``src`` into ``dst`` (QDQ int8), calibrated on ``images``.

    Returns:
        ``{"method", "calibration_images", "seconds"}``.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        """One image per step; ``set_range`` lets ORT calibrate in strides."""

        def __init__(self) -> None:
            self.set_range(0, len(images))

        def __len__(self) -> int:
            return len(images)

        def set_range(self, start_index: int, end_index: int) -> None:
            self.it = iter(images[i:i + 1] for i in range(start_index, end_index))

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self.it, None)
            return None if x is None else {input_name: x}

    # MinMax keeps every intermediate output until it reduces them: calibrate in strides
    # of <= 8 images (ORT merges the ranges) so memory stays bounded at 512 px.
    stride = max(d for d in range(1, min(8, len(images)) + 1) if len(images) % d == 0)
    start = time.monotonic()
    pre = dst.with_name(dst.name + ".pre.onnx")
    try:
        # ORT's recommended preparation: graph optimisations and shapes before QDQ.
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        first_conv = next((n.name for n in onnx.load(str(pre), load_external_data=False)
                           .graph.node if n.op_type == "Conv"), None)
        quantize_static(str(pre), str(dst), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, reduce_range=False,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=INT8_OPS, calibrate_method=CalibrationMethod.MinMax,
                        nodes_to_exclude=[first_conv] if first_conv else None,
                        extra_options={"CalibStridedMinMax": stride})
    except HpatkError:
        raise
    except Exception as exc:
        raise HpatkError(f"int8 quantization failed: {typed_line(exc)}") from exc
    finally:
        pre.unlink(missing_ok=True)
    return {"method": "static QDQ, per-channel int8 weights, uint8 activations (MinMax), "
                      "first conv and head in float", "ops": INT8_OPS,
            "calibration_images": int(len(images)),
            "seconds": round(time.monotonic() - start, 1)}


def compare_models(float_path: Path, int8_path: Path, images: np.ndarray, input_name: str,
                   output: str, thresholds: list[float] | None) -> dict[str, float]:
    """How far the int8 model is from the float one on ``images``.

    Returns:
        ``{"max_abs_prob_diff", "mean_abs_prob_diff", "label_agreement"}`` (the fraction
        of (image, class) decisions that agree at the model's thresholds).
    """
    from hpatk.core.metrics import apply_thresholds
    from hpatk.export.runtime import create_session

    outs = []
    for path in (float_path, int8_path):
        session, _ = create_session(path, provider="cpu")
        y = np.concatenate([session.run(None, {input_name: images[i:i + 8]})[0]
                            for i in range(0, len(images), 8)])
        outs.append(1 / (1 + np.exp(-y)) if output == "logits" else y)
    a, b = outs
    if not np.isfinite(b).all():
        raise HpatkError("the int8 model outputs NaN or inf; nothing written")
    th = np.asarray(thresholds if thresholds is not None else [0.5] * a.shape[1])
    agree = apply_thresholds(a, th) == apply_thresholds(b, th)
    return {"max_abs_prob_diff": float(np.abs(a - b).max()),
            "mean_abs_prob_diff": float(np.abs(a - b).mean()),
            "label_agreement": float(agree.mean())}
