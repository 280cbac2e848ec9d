"""Q/DQ ONNX of a quantized student, its parity against the fake-quantized torch model, and its form.

`qdq_form` lists what TensorRT cares about: the element type and zero points of every QuantizeLinear
(TensorRT takes signed int8 with zero point 0 only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from compress.distill.train import predict_logits
from compress.export import export_onnx, parity


def qdq_form(path: str | Path) -> dict[str, Any]:
    """Counts of QuantizeLinear nodes by output type, and whether every known zero point is 0."""
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
    return {"quantize_nodes": sum(by_type.values()), "by_type": by_type, "nonzero_zero_points": nonzero,
            "signed_int8_zero_point_0": set(by_type) == {"int8"} and not nonzero}


def export_qdq(checkpoint: Path, path: Path, x: np.ndarray, opset: int, dynamic_batch: bool,
               min_top1_agreement: float, simplify: bool = True) -> dict[str, Any]:
    """Strip the quantized checkpoint to Q/DQ, export it (dynamo=False) and compare it on `x`.

    Simplifying folds the Identity nodes the TorchScript exporter puts in front of zero points, so
    every Q/DQ node reads constants (what TensorRT's parser expects); parity is taken afterwards.
    """
    from compress.export import onnx_logits, simplify_onnx
    from compress.quantize.nncf_quant import load_quantized, strip

    quantized, spec, _ = load_quantized(checkpoint)
    example = torch.from_numpy(np.ascontiguousarray(x[:2], dtype=np.float32))
    export_onnx(strip(quantized, example), tuple(x.shape[1:]), path, opset, dynamic_batch)
    if simplify:
        simplify_onnx(path)
    report: dict[str, Any] = parity(predict_logits(quantized, x).numpy(), onnx_logits(path, x))
    report["min_top1_agreement"] = min_top1_agreement
    # A value on a rounding boundary may land one int8 step apart: judge by agreement, report the error.
    report["passed"] = report["top1_agreement"] >= min_top1_agreement
    report["form"] = qdq_form(path)
    return report
