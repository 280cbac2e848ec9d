"""Engines (ONNX Runtime, OpenVINO, TensorRT) and deploy targets (local, SSH, Jetson)."""
