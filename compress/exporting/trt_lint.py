"""TensorRT lint of an ONNX graph, on the CPU, before any device sees it.

What TensorRT's ONNX parser would reject, or would build into a slow or wrong engine, is found
here at export time: an op the parser does not support, Q/DQ that is not signed int8 with zero
point 0 (explicit quantization in TensorRT is symmetric int8), a dynamic axis other than the
batch or a sequence, an opset outside the parser's range. The support table follows
onnx-tensorrt's docs/operators.md for TensorRT 10.x (the parser of JetPack 6 and later).

A Transformer export (BERT: embedding Gathers, LayerNormalization, Erf GELU, MatMul-Softmax-MatMul
attention masked through Equal/Where/Expand, int64 ids, a dynamic sequence axis) parses as it is;
what is worth knowing about it comes back as `notes`, which do not make the lint unclean.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from deploy.runner.harness import SEQUENCE_AXES

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
ORT_FUSED_FIX = ("build TensorRT from the ONNX before ONNX Runtime's transformer optimizer (its com.microsoft "
                 "Attention/SkipLayerNormalization/BiasGelu ops are ONNX Runtime's own)")
# Between an attention score MatMul and its Softmax (scale, mask), and between the Softmax and the value MatMul.
ATTENTION_SCORE_OPS = ("Add", "Mul", "Div", "Where", "Cast", "Sub")
ATTENTION_PROB_OPS = ("Where", "Cast", "Dropout", "Identity")
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
                                    ORT_FUSED_FIX if node.domain == "com.microsoft" else
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
    """Only axis 0 (the batch) and sequence axes may be dynamic: the profile covers batch x sequence."""
    initializers = {t.name for t in model.graph.initializer}
    findings = []
    for kind, values in (("input", model.graph.input), ("output", model.graph.output)):
        for value in values:
            if value.name in initializers:
                continue
            dims = _dims(value)
            # An input must be fixed; an output dim left unannotated ("?") is inferred by TensorRT.
            dynamic = [axis for axis, dim in enumerate(dims) if axis > 0 and not isinstance(dim, int)
                       and dim not in SEQUENCE_AXES and (kind == "input" or dim != "?")]
            if dynamic:
                findings.append(Finding("dynamic_axes", f"{kind} '{value.name}' has dynamic axes {dynamic} "
                                                        f"(shape {dims}); only the batch and sequence axes may be "
                                                        "dynamic", value.name,
                                        "export with a fixed input size (dynamic_axes on the batch, and on a "
                                        f"sequence axis named one of {', '.join(SEQUENCE_AXES)})"))
    return findings


def _real_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    initializers = {t.name for t in model.graph.initializer}
    return [value for value in model.graph.input if value.name not in initializers]


def note_inputs(model: onnx.ModelProto) -> list[Finding]:
    """int64 inputs (TensorRT may run them as int32) and sequence axes (built over a sequence range)."""
    values = _real_inputs(model)
    wide = [v.name for v in values if v.type.tensor_type.elem_type == onnx.TensorProto.INT64]
    sequence = [v.name for v in values if any(axis > 0 and dim in SEQUENCE_AXES for axis, dim in enumerate(_dims(v)))]
    notes = []
    if wide:
        notes.append(Finding("int64_input", f"int64 input(s) {', '.join(wide)}: TensorRT casts int64 to int32 where "
                                            "it has no int64 kernel (TensorRT 8.x always does); ids and masks fit "
                                            "in int32, and the session feeds each input in the engine's own dtype",
                             wide[0]))
    if sequence:
        notes.append(Finding("sequence_axis", f"input(s) {', '.join(sequence)} have a dynamic sequence axis: the "
                                              "optimisation profile spans min/opt/max sequence lengths, and a "
                                              "longer input is refused at run time", sequence[0]))
    return notes


def _score_matmul(name: str, producers: dict[str, onnx.NodeProto], constants: set[str], hops: int = 4) -> bool:
    """Whether `name` comes, through at most `hops` scale/mask ops, from a MatMul of two activations (Q.K^T)."""
    node = producers.get(name)
    if node is None:
        return False
    if node.op_type == "MatMul":
        return not constants & set(node.input)
    if node.op_type not in ATTENTION_SCORE_OPS or hops == 0:
        return False
    return any(_score_matmul(i, producers, constants, hops - 1) for i in node.input if i not in constants)


def attention_blocks(model: onnx.ModelProto) -> int:
    """MatMul (scores) -> scale/mask -> Softmax -> MatMul (values): the attention TensorRT fuses into MHA."""
    constants = set(_constant_tensors(model))
    producers = {output: node for node in model.graph.node for output in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    count = 0
    for node in model.graph.node:
        if node.op_type != "Softmax" or not _score_matmul(node.input[0], producers, constants):
            continue
        frontier, values = list(node.output), False
        for _ in range(3):  # the probabilities may pass a NaN guard (Where) or a Cast before the value MatMul
            following = [c for name in frontier for c in consumers.get(name, [])]
            values = values or any(c.op_type == "MatMul" for c in following)
            frontier = [o for c in following if c.op_type in ATTENTION_PROB_OPS for o in c.output]
        count += int(values)
    return count


def note_transformer(model: onnx.ModelProto) -> list[Finding]:
    """What a Transformer export holds, all parsed natively by TensorRT 10: one note, none for a CNN."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = {value.name for value in _real_inputs(model)}
    ops = [node.op_type for node in model.graph.node if node.domain in STANDARD_DOMAINS]
    embeddings = sum(1 for node in model.graph.node if node.op_type == "Gather" and len(node.input) > 1
                     and node.input[0] in initializers and node.input[1] in inputs)
    blocks = attention_blocks(model)
    parts = [f"{embeddings} embedding lookup(s) (Gather)" if embeddings else "",
             f"{ops.count('LayerNormalization')} LayerNormalization" if "LayerNormalization" in ops else "",
             f"{ops.count('Erf')} Erf GELU" if "Erf" in ops else "",
             f"{ops.count('Gelu')} Gelu" if "Gelu" in ops else "",
             f"{blocks} attention block(s) (MatMul-Softmax-MatMul, mask through Where/Expand/Equal)" if blocks else ""]
    notes = []
    if blocks or embeddings:
        notes.append(Finding("transformer", "Transformer graph: " + ", ".join(p for p in parts if p)
                             + "; TensorRT fuses the attention into its multi-head attention kernels where the "
                               "GPU and precision allow (an FP16 ONNX for the fastest)"))
    decomposed = {"ReduceMean", "Pow", "Sqrt"} <= set(ops) and "LayerNormalization" not in ops
    if decomposed and blocks:
        notes.append(Finding("layer_norm", "layer normalisation is decomposed (ReduceMean/Pow/Sqrt): in fp16 "
                                           "its variance can overflow", fix="export with opset >= 17, where it is one "
                                                                             "LayerNormalization op"))
    return notes


def lint(model: onnx.ModelProto | str | Path) -> dict[str, Any]:
    """All findings of every check; `clean` is True when there are none."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    findings = check_opset(model) + check_ops(model) + check_qdq(model) + check_dynamic_axes(model)
    notes = note_inputs(model) + note_transformer(model)
    opset = next((o.version for o in model.opset_import if o.domain in STANDARD_DOMAINS), None)
    return {
        "clean": not findings,
        "opset": opset,
        "opset_range": [MIN_OPSET, MAX_OPSET],
        "ops": sorted({n.op_type for n in model.graph.node}),
        "qdq_nodes": sum(n.op_type in QDQ_OPS for n in model.graph.node),
        "findings": [asdict(f) for f in findings],
        "notes": [asdict(n) for n in notes],
    }


def summary_line(name: str, report: dict[str, Any]) -> str:
    if report["clean"]:
        notes = len(report.get("notes") or [])
        return (f"{name}: TensorRT lint clean (opset {report['opset']}, {len(report['ops'])} op types"
                + (f"; {notes} note(s) in trt_lint.json" if notes else "") + ")")
    first = report["findings"][0]
    more = len(report["findings"]) - 1
    return (f"{name}: TensorRT lint: {first['message']}" + (f" at {first['node']}" if first["node"] else "")
            + (f" (and {more} more)" if more else "") + (f"; fix: {first['fix']}" if first["fix"] else ""))
