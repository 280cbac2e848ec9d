"""Small ONNX graphs for the TensorRT tests: an exported CNN and hand-built Q/DQ graphs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from compress.exporting.torch_to_onnx import export_onnx


def cnn_onnx(path: Path, opset: int = 17) -> Path:
    """A small digits-shaped CNN (1x8x8 in, 10 logits out) exported with a dynamic batch."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                                torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(16, 10))
    export_onnx(model, (1, 8, 8), path, opset)
    return path


def qdq_conv_graph(zero_point_type: int = TensorProto.INT8, zero_point: int = 0, with_zero_point: bool = True,
                   input_shape=("batch", 1, 8, 8), extra_node: onnx.NodeProto | None = None,
                   opset: int = 17) -> onnx.ModelProto:
    """input -> Q/DQ -> Conv(weights through Q/DQ) -> Relu -> output, as a quantizer writes it."""
    np_type = helper.tensor_dtype_to_np_dtype(zero_point_type)
    weights = np.random.default_rng(0).standard_normal((4, 1, 3, 3)).astype(np.float32)
    initializers = [
        numpy_helper.from_array(np.array(0.02, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(zero_point, np_type), "x_zero_point"),
        numpy_helper.from_array(np.round(weights / 0.01).astype(np.int8), "w_quantized"),
        numpy_helper.from_array(np.array(0.01, np.float32), "w_scale"),
        numpy_helper.from_array(np.array(0, np.int8), "w_zero_point"),
    ]
    zp = ["x_zero_point"] if with_zero_point else []
    nodes = [
        helper.make_node("QuantizeLinear", ["input", "x_scale", *zp], ["x_q"], name="input_q"),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", *zp], ["x_dq"], name="input_dq"),
        helper.make_node("DequantizeLinear", ["w_quantized", "w_scale", "w_zero_point"], ["w_dq"], name="weight_dq"),
        helper.make_node("Conv", ["x_dq", "w_dq"], ["conv"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"], name="relu"),
    ]
    last = "relu"
    if extra_node is not None:
        nodes.append(extra_node)
        last = extra_node.output[0]
    nodes.append(helper.make_node("Identity", [last], ["output"], name="out"))
    graph = helper.make_graph(
        nodes, "qdq_conv",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(input_shape))],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [input_shape[0], 4, 8, 8])],
        initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return model
