"""TensorRT lint of an ONNX graph, on the CPU, before any device sees it.

What TensorRT's ONNX parser would reject, or would build into a slow or wrong engine, is found
here at export time: an op the parser does not support, Q/DQ that is not signed int8 with zero
point 0 (explicit quantization in TensorRT is symmetric int8), a dynamic axis other than the
batch, an opset outside the parser's range. The support table follows onnx-tensorrt's
docs/operators.md for TensorRT 10.x (the parser of JetPack 6 and later).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

# onnx-tensorrt opset range for TensorRT 10.3 (JetPack 6); newer parsers accept a superset.
MIN_OPSET, MAX_OPSET = 9, 20

SUPPORTED_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Bernoulli
BlackmanWindow Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh
CumSum DFT DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten
Floor GRU Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater
GreaterOrEqual GridSample GroupNormalization HammingWindow HannWindow HardSigmoid HardSwish Hardmax
Identity If ImageScaler InstanceNormalization IsInf IsNaN LRN LSTM LayerNormalization LeakyRelu Less
LessOrEqual Log LogSoftmax Loop LpNormalization LpPool MatMul Max MaxPool Mean
MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or PRelu Pad
ParametricSoftplus Pow QuantizeLinear RNN RandomNormal RandomNormalLike RandomUniform RandomUniformLike
Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin
ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RoiAlign Round STFT
ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice
Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK
Transpose Trilu Unique Unsqueeze Upsample Where Xor
""".split())

STANDARD_DOMAINS = ("", "ai.onnx")
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
FOLD_FIX = "fold constants before TensorRT: onnxslim (what stages.export.simplify runs on student.onnx)"
INT32_BIAS_FIX = ("keep biases in float, TensorRT fuses them into the int8 kernels itself (ONNX Runtime: "
                  "quantize_static(..., extra_options={'QuantizeBias': False}))")
SIGNED_INT8_FIX = ("quantize activations as signed int8 with zero point 0 (symmetric): NNCF "
                   "QuantizationParameters(signedness_to_force=True, mode=SYMMETRIC), or rewrite the Q/DQ pairs")


@dataclass
class Finding:
    check: str
    message: str
    node: str | None = None
    fix: str | None = None


def _constant_tensors(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    tensors = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            tensors[node.output[0]] = node.attribute[0].t
    return tensors


def check_opset(model: onnx.ModelProto) -> list[Finding]:
    version = next((o.version for o in model.opset_import if o.domain in STANDARD_DOMAINS), None)
    if version is None or MIN_OPSET <= version <= MAX_OPSET:
        return []
    return [Finding("opset", f"opset {version} is outside the TensorRT ONNX parser's range "
                             f"{MIN_OPSET}..{MAX_OPSET}", fix=f"export with stages.export.opset between "
                                                             f"{MIN_OPSET} and {MAX_OPSET}")]


def check_ops(model: onnx.ModelProto) -> list[Finding]:
    findings = []
    for node in model.graph.node:
        name = node.name or node.output[0]
        if node.domain not in STANDARD_DOMAINS:
            findings.append(Finding("op", f"{node.domain}::{node.op_type} is not a standard ONNX op; TensorRT "
                                          "parses it only through a plugin", name,
                                    "export without runtime-specific fused ops (no ONNX Runtime optimisation "
                                    "before TensorRT)"))
        elif node.op_type not in SUPPORTED_OPS:
            findings.append(Finding("op", f"{node.op_type} is not supported by TensorRT's ONNX parser", name,
                                    "replace the layer in the model, or fold it away before export"))
    return findings


def _resolve(name: str, constants: dict[str, onnx.TensorProto], producers: dict[str, onnx.NodeProto]
             ) -> tuple[onnx.TensorProto | None, int]:
    """The constant behind `name`, following Identity nodes; and how many Identity nodes were crossed."""
    hops = 0
    while name not in constants and name in producers and producers[name].op_type == "Identity":
        name, hops = producers[name].input[0], hops + 1
    return constants.get(name), hops


def _qdq_input(node, index, what, constants, producers, findings) -> onnx.TensorProto | None:
    name = node.name or node.output[0]
    tensor, hops = _resolve(node.input[index], constants, producers)
    if tensor is None:
        findings.append(Finding("qdq", f"{node.op_type} {what} is computed at run time; TensorRT needs a constant",
                                name, FOLD_FIX))
    elif hops:
        findings.append(Finding("qdq", f"{node.op_type} {what} comes through {hops} Identity node(s), not an "
                                       "initializer; TensorRT's parser expects a constant", name, FOLD_FIX))
    return tensor


def check_qdq(model: onnx.ModelProto) -> list[Finding]:
    """TensorRT's explicit quantization: signed int8 Q/DQ with zero point 0 and constant scales."""
    constants = _constant_tensors(model)
    producers = {output: node for node in model.graph.node for output in node.output}
    findings: list[Finding] = []
    for node in model.graph.node:
        if node.op_type not in QDQ_OPS:
            continue
        name = node.name or node.output[0]
        _qdq_input(node, 1, "scale", constants, producers, findings)
        if len(node.input) > 2 and node.input[2]:
            zero_point = _qdq_input(node, 2, "zero point", constants, producers, findings)
            if zero_point is None:
                continue
            dtype = zero_point.data_type
        elif node.op_type == "QuantizeLinear":  # without a zero point the output is uint8 unless output_dtype
            dtype = next((a.i for a in node.attribute if a.name == "output_dtype" and a.i), onnx.TensorProto.UINT8)
            zero_point = None
        else:  # DequantizeLinear without a zero point reads its input's type
            quantized, _ = _resolve(node.input[0], constants, producers)
            dtype = quantized.data_type if quantized is not None else onnx.TensorProto.INT8
            zero_point = None
        if dtype != onnx.TensorProto.INT8:
            findings.append(Finding("qdq", f"{node.op_type} is {onnx.TensorProto.DataType.Name(dtype).lower()}; "
                                           "TensorRT supports signed int8 Q/DQ only", name,
                                    INT32_BIAS_FIX if dtype == onnx.TensorProto.INT32 else SIGNED_INT8_FIX))
        elif zero_point is not None and np.any(numpy_helper.to_array(zero_point) != 0):
            values = numpy_helper.to_array(zero_point).ravel()[:4].tolist()
            findings.append(Finding("qdq", f"{node.op_type} zero point is {values}, not 0 (TensorRT quantization "
                                           "is symmetric)", name, SIGNED_INT8_FIX))
    return findings


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    shape = value.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in shape.dim]


def check_dynamic_axes(model: onnx.ModelProto) -> list[Finding]:
    """Only axis 0 (the batch) may be dynamic: the optimisation profile covers the batch alone."""
    initializers = {t.name for t in model.graph.initializer}
    findings = []
    for kind, values in (("input", model.graph.input), ("output", model.graph.output)):
        for value in values:
            if value.name in initializers:
                continue
            dims = _dims(value)
            # An input must be fixed; an output dim left unannotated ("?") is inferred by TensorRT.
            dynamic = [axis for axis, dim in enumerate(dims)
                       if axis > 0 and not isinstance(dim, int) and (kind == "input" or dim != "?")]
            if dynamic:
                findings.append(Finding("dynamic_axes", f"{kind} '{value.name}' has dynamic axes {dynamic} "
                                                        f"(shape {dims}); only the batch axis may be dynamic",
                                        value.name, "export with a fixed input size (dynamic_axes on axis 0 only)"))
    return findings


def lint(model: onnx.ModelProto | str | Path) -> dict[str, Any]:
    """All findings of every check; `clean` is True when there are none."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    findings = check_opset(model) + check_ops(model) + check_qdq(model) + check_dynamic_axes(model)
    opset = next((o.version for o in model.opset_import if o.domain in STANDARD_DOMAINS), None)
    return {
        "clean": not findings,
        "opset": opset,
        "opset_range": [MIN_OPSET, MAX_OPSET],
        "ops": sorted({n.op_type for n in model.graph.node}),
        "qdq_nodes": sum(n.op_type in QDQ_OPS for n in model.graph.node),
        "findings": [asdict(f) for f in findings],
    }


def summary_line(name: str, report: dict[str, Any]) -> str:
    if report["clean"]:
        return f"{name}: TensorRT lint clean (opset {report['opset']}, {len(report['ops'])} op types)"
    first = report["findings"][0]
    more = len(report["findings"]) - 1
    return (f"{name}: TensorRT lint: {first['message']}" + (f" at {first['node']}" if first["node"] else "")
            + (f" (and {more} more)" if more else "") + (f"; fix: {first['fix']}" if first["fix"] else ""))
