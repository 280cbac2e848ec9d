"""An FP16 copy of an fp32 ONNX graph, with fp32 inputs and outputs.

TensorRT 11 builds only strongly typed networks (no FP16 builder flag), so an FP16 engine comes
from an FP16 ONNX; TensorRT 10 builds the same file the same way. Weights and constants become
float16 (clipped to its range), a Cast after each graph input and before each graph output keeps
the model's interface float32, so the runner, Triton and the benchmark feed it like the fp32 one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FP16_MAX = float(np.finfo(np.float16).max)
# Inputs the ONNX spec types as float32 whatever the data type: they stay float32.
FLOAT32_ONLY_INPUTS = {("Resize", 2), ("Upsample", 1)}


def _to_fp16(tensor: TensorProto) -> TensorProto:
    array = np.clip(numpy_helper.to_array(tensor), -FP16_MAX, FP16_MAX).astype(np.float16)
    return numpy_helper.from_array(array, tensor.name)


def _float32_only(graph: onnx.GraphProto) -> set[str]:
    return {node.input[index] for node in graph.node for op, index in FLOAT32_ONLY_INPUTS
            if node.op_type == op and len(node.input) > index}


def convert_to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return an FP16 copy; the graph's inputs and outputs keep their fp32 type and names."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    keep = _float32_only(graph)
    for index, tensor in enumerate(graph.initializer):
        if tensor.data_type == TensorProto.FLOAT and tensor.name not in keep:
            graph.initializer[index].CopyFrom(_to_fp16(tensor))
    for node in graph.node:
        for attribute in node.attribute:
            if node.op_type == "Constant" and attribute.name == "value" and attribute.t.data_type == TensorProto.FLOAT \
                    and node.output[0] not in keep:
                attribute.t.CopyFrom(_to_fp16(attribute.t))
            if node.op_type in ("Cast", "ConstantOfShape") and attribute.name == "to" and attribute.i == TensorProto.FLOAT:
                attribute.i = TensorProto.FLOAT16
            if node.op_type == "ConstantOfShape" and attribute.name == "value" and attribute.t.data_type == TensorProto.FLOAT:
                attribute.t.CopyFrom(_to_fp16(attribute.t))

    initializers = {t.name for t in graph.initializer}
    casts_in = []
    for value in graph.input:
        if value.name in initializers or value.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        half = f"{value.name}_fp16"
        for node in graph.node:
            node.input[:] = [half if name == value.name else name for name in node.input]
        casts_in.append(helper.make_node("Cast", [value.name], [half], name=f"{value.name}_to_fp16",
                                         to=TensorProto.FLOAT16))
    casts_out = []
    for value in graph.output:
        if value.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        half = f"{value.name}_fp16"
        for node in graph.node:
            node.output[:] = [half if name == value.name else name for name in node.output]
            node.input[:] = [half if name == value.name else name for name in node.input]
        casts_out.append(helper.make_node("Cast", [half], [value.name], name=f"{value.name}_to_fp32",
                                          to=TensorProto.FLOAT))
    nodes = casts_in + list(graph.node) + casts_out
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]  # stale fp32 annotations; re-inferred below
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def write_fp16_copy(src: Path, dst: Path) -> Path:
    model = convert_to_fp16(onnx.load(str(src)))
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(dst))
    return dst
