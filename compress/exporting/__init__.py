"""Graph tools: torch to ONNX, parity, the FP16 copy, the Q/DQ form and the TensorRT lint."""
