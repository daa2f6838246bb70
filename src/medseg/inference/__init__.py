"""Inference: whole-volume prediction, the predictor, ONNX export."""
