"""What TensorRT cares about in a Q/DQ ONNX: the element type and zero points of every QuantizeLinear,
and of every DequantizeLinear that reads weights already stored as integers (no QuantizeLinear left).

TensorRT takes signed int8 with zero point 0 only; ONNX Runtime and OpenVINO take uint8 too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper


def qdq_form(path: str | Path) -> dict[str, Any]:
    """Counts of QuantizeLinear nodes and of integer-stored weights by type; whether every zero point is 0."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.output]}
    constants = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    constants.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node
                      if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"})
    by_type: dict[str, int] = {}
    nonzero = []
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear":
            continue
        kind = onnx.TensorProto.DataType.Name(types.get(node.output[0], onnx.TensorProto.UINT8)).lower()
        by_type[kind] = by_type.get(kind, 0) + 1
        zero_point = constants.get(node.input[2]) if len(node.input) > 2 else None
        if zero_point is not None and np.any(zero_point != 0):
            nonzero.append(node.name)
    stored = _stored_weights(model, constants, nonzero)
    return {"quantize_nodes": sum(by_type.values()), "by_type": by_type, "nonzero_zero_points": nonzero,
            "weights_stored": sum(stored.values()), "weights_stored_by_type": stored,
            "signed_int8_zero_point_0": set(by_type) | set(stored) == {"int8"} and not nonzero}


def _stored_weights(model: onnx.ModelProto, constants: dict[str, np.ndarray], nonzero: list[str]) -> dict[str, int]:
    """DequantizeLinear nodes reading an integer initializer, by its type; nonzero zero points go to `nonzero`."""
    types = {i.name: i.data_type for i in model.graph.initializer}
    stored: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in types:
            continue
        kind = onnx.TensorProto.DataType.Name(types[node.input[0]]).lower()
        stored[kind] = stored.get(kind, 0) + 1
        zero_point = constants.get(node.input[2]) if len(node.input) > 2 else None
        if zero_point is not None and np.any(zero_point != 0):
            nonzero.append(node.name)
    return stored
