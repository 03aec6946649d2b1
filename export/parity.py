"""Parity of an ONNX export with PyTorch: reference outputs on varied inputs at batch 1, 2
and 7, the comparison with ONNX Runtime (rtol 1e-3 / atol 1e-5, with a float64 arbiter
for ill-conditioned networks), and the check that the reference outputs can prove
anything (not constant, saturated or NaN). :func:`hpatk.export.onnx.export_loaded` runs
it before a file is moved into place."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from hpatk.core.errors import HpatkError

if TYPE_CHECKING:
    from hpatk.export.onnx import ExportSpec

PARITY_BATCHES = (1, 2, 7)
RTOL, ATOL = 1e-3, 1e-5


def reference_outputs(spec: ExportSpec) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """PyTorch outputs on the parity inputs at batch 1, 2 and 7 (each run separately).

    Raises:
        HpatkError: outputs that cannot prove parity (constant, saturated, NaN).
    """
    import torch

    x = spec.make_inputs(max(PARITY_BATCHES), 1)
    refs = {}
    with torch.inference_mode():
        for b in PARITY_BATCHES:
            refs[b] = spec.module(torch.from_numpy(x[:b])).float().numpy()
    reason = (spec.degenerate or degenerate_outputs)(refs[max(PARITY_BATCHES)])
    if reason:
        raise HpatkError(f"parity check impossible: on varied inputs the model's {reason} "
                         f"(untrained? export with --no-verify to skip the check)")
    return x, refs


def verify_parity(spec: ExportSpec, path: Path, x: np.ndarray,
                  refs: dict[int, np.ndarray]) -> dict[int, dict[str, float]]:
    """Compare ONNX Runtime (CPU) on ``path`` with the PyTorch outputs ``refs``.

    The criterion is rtol 1e-3 / atol 1e-5. Deep random-like networks can be so
    ill-conditioned that PyTorch's own float32 result is that far from the exact one;
    then, and only then, the ONNX output passes if it is at most twice as far from a
    float64 PyTorch reference as PyTorch float32 is (float32 rounding, not an export
    error, which would be orders of magnitude larger); the report says so.

    Returns:
        ``{batch: {"max_abs": float, "max_rel": float}}`` (+ ``"float64_onnx"`` and
        ``"float64_torch"``, the max errors against float64, when that was needed).

    Raises:
        HpatkError: a wrong output shape, or a difference beyond both criteria.
    """
    from hpatk.export.runtime import create_session

    session, _ = create_session(path, provider="cpu")
    report = {}
    for b, ref in refs.items():
        got = session.run([spec.output_name], {spec.input_name: x[:b]})[0]
        if got.shape != ref.shape:
            raise HpatkError(f"parity check failed at batch {b}: ONNX output shape "
                             f"{tuple(got.shape)} != PyTorch {tuple(ref.shape)}")
        diff = np.abs(got.astype(np.float64) - ref)
        report[b] = {"max_abs": float(diff.max()),
                     "max_rel": float((diff / np.maximum(np.abs(ref), 1e-12)).max())}
        if np.allclose(got, ref, rtol=RTOL, atol=ATOL):
            continue
        exact = _float64_outputs(spec, x[:b])
        onnx_err = float(np.abs(got - exact).max())
        torch_err = float(np.abs(ref - exact).max())
        report[b].update(float64_onnx=onnx_err, float64_torch=torch_err)
        if onnx_err > 2 * torch_err + ATOL:
            worst = np.unravel_index(int(np.argmax(diff - RTOL * np.abs(ref))), diff.shape)
            raise HpatkError(
                f"parity check failed at batch {b}: ONNX {got[worst]:.6g} vs PyTorch "
                f"{ref[worst]:.6g} at {tuple(int(i) for i in worst)} (rtol {RTOL}, atol "
                f"{ATOL}; against float64 ONNX is off by {onnx_err:.3g}, PyTorch float32 "
                f"by {torch_err:.3g})")
    return report


def _float64_outputs(spec: ExportSpec, x: np.ndarray) -> np.ndarray:
    """The module's outputs computed in float64: the reference both float32 runs miss."""
    import copy

    import torch

    module = copy.deepcopy(spec.module).double()
    with torch.inference_mode():
        return module(torch.from_numpy(x).double()).numpy()


def degenerate_outputs(y: np.ndarray, saturating: bool = False) -> str | None:
    """Why reference outputs cannot prove parity, or None: NaN or inf, no change with the
    input, or (``saturating``, for probabilities) every value at 0 or 1.

    Args:
        y: outputs (B, ...) on varied inputs.
        saturating: the outputs are probabilities, which saturate.
    """
    if not np.isfinite(y).all():
        return "outputs contain NaN or inf"
    flat = y.reshape(y.shape[0], -1).astype(np.float64)
    if np.ptp(flat, axis=0).max() <= 1e-4 * max(1.0, float(np.abs(flat).max())):
        return "outputs do not change with the input"
    if saturating and not ((flat > 1e-4) & (flat < 1 - 1e-4)).any():
        return "probabilities are all saturated at 0 or 1"
    return None
