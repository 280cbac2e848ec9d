"""Quantization of the student with NNCF (PTQ, QAT) and checks of the Q/DQ ONNX it exports."""
