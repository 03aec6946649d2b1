"""hpatk.export: ONNX export of trained models and ONNX Runtime inference.

Cheap to import: torch, onnx and onnxruntime load inside the functions that use them.

    from hpatk.export import export_checkpoint, OnnxClassifier

    export_checkpoint("run1/best_macro_f1.pt", "model.onnx")
    export_run("run5", "ensemble.onnx", tta="flips")   # all folds -> one averaged model
    clf = OnnxClassifier("model.onnx", provider="cpu")
    pred = clf.predict(images)      # uint8 (B, 4, H, W) raw stains -> Prediction
"""

from hpatk.export.ensemble import export_ensemble, export_run
from hpatk.export.metadata import decode_metadata, encode_metadata, validate_metadata
from hpatk.export.onnx import (
    ExportOptions,
    ExportResult,
    ExportSpec,
    export_checkpoint,
    exporter_kinds,
    register_exporter,
)
from hpatk.export.runtime import (
    OnnxClassifier,
    OnnxGenerator,
    Prediction,
    ProviderReport,
    check_model_file,
    create_session,
    read_metadata,
    requested_providers,
)
from hpatk.export.triton import write_triton_repo

__all__ = [
    "ExportOptions",
    "ExportResult",
    "ExportSpec",
    "OnnxClassifier",
    "OnnxGenerator",
    "Prediction",
    "ProviderReport",
    "check_model_file",
    "create_session",
    "decode_metadata",
    "encode_metadata",
    "export_checkpoint",
    "export_ensemble",
    "export_run",
    "exporter_kinds",
    "read_metadata",
    "register_exporter",
    "requested_providers",
    "validate_metadata",
    "write_triton_repo",
]
