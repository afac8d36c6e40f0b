"""Inference on photos: face detection, the predictor, overlays and ONNX export."""
