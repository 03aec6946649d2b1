"""hpatk.export: ONNX export of trained models and ONNX Runtime inference."""
