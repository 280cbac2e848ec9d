"""The ONNX rewrites the ONNX Runtime engine builds from: static Q/DQ int8, dynamic int8, transformer fusions.

Static (`static_quantize`): activation scales fixed by calibration, a QuantizeLinear/DequantizeLinear
pair around every quantized op; the fast form for CNNs, and the one TensorRT-style tools read.
Dynamic (`dynamic_quantize`, what `onnxruntime.quantization.quantize_dynamic` and optimum do for
BERT on CPU): int8 weights, activations quantized on every call (DynamicQuantizeLinear ->
MatMulInteger), no calibration; it covers MatMul, Gemm and the embedding Gathers, so it applies to
graphs whose weights sit only there (`dynamic_applies`: Transformers, MLPs), read from the graph.
Its activation scale is taken per call over the whole tensor, so a row's outputs move slightly with
the other rows of its batch and with the values under padding; engine.json says so.

`int8_candidates` writes every form that applies, for deploy.engines.int8_choice to time and score.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from deploy.engines.interface import calibration_batches, onnx_inputs
from deploy.runner.harness import cpu_features, has_sequence_axis

# What int8 covers in a model with a sequence axis (a Transformer): the weighted ops. The attention
# mask's -inf/float-min bias and the NaN guards after Softmax have no finite range to quantize.
SEQUENCE_MODEL_OPS = ["MatMul", "Gemm", "Gather"]
# The ops ONNX Runtime's dynamic quantization covers: a graph with weights elsewhere (Conv) keeps static.
DYNAMIC_OPS = ("MatMul", "Gemm", "Gather")
DYNAMIC_NOTE = ("activations are quantized per call over the whole batch: a row's outputs move slightly with the "
                "other rows of its batch and with the token ids under padding")


# x86 CPUs whose int8 dot products go through 16-bit sums (AVX2's vpmaddubsw): without VNNI or AMX,
# ONNX Runtime's u8s8 kernels saturate there when 8-bit weights meet large activations. On digits'
# small CNN, 8-bit weights lost 1.4-12.8 points of top-1 on an AVX2-only EPYC; 7-bit ones 0.8 at most.
INT8_DOT_FEATURES = ("avx_vnni", "avx512_vnni", "amx_int8")


def saturating_int8_kernels() -> bool:
    """Whether this is an x86 CPU whose int8 kernels can saturate 8-bit weights (ORT's reduce_range case)."""
    import platform

    features = cpu_features()
    x86 = platform.machine().lower() in ("x86_64", "amd64", "i686")
    return x86 and "avx2" in features and not any(f in features for f in INT8_DOT_FEATURES)


def static_quantize(onnx_path: Path, out_path: Path, calibration: np.ndarray | dict[str, np.ndarray] | list,
                    batch_size: int = 32, op_types: tuple[str, ...] | None = None) -> dict[str, Any]:
    """ORT static quantization of an fp32 ONNX to QDQ with per-channel weights.

    `calibration`: an array for a single-input model, or a dict name -> rows (or a list of such
    batches) for a multi-input one, fed by name in each input's dtype. Returns what the sidecar
    adds to its quantization record: the op types, where they are limited; 7-bit weights, where this
    CPU's kernels would saturate 8-bit ones (the artifact then also runs right on VNNI CPUs, a little coarser).
    `op_types` limits what is quantized (a detector keeps its box decoding in float: one int8 scale cannot
    hold pixel coordinates and scores in [0, 1] together).
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    inputs = onnx_inputs(onnx_path)
    batches = calibration_batches(calibration, inputs, batch_size)
    input_name = inputs[0]["name"]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(batches)

        def get_next(self):
            batch = next(self.batches, None)
            return batch if batch is None or isinstance(batch, dict) else {input_name: batch}

    prepared = out_path.with_name(f".{out_path.stem}.pre.onnx")  # ORT's recommended shape inference + fusions
    # A dynamic axis beside the batch: symbolic shape inference must merge the dims the attention
    # mask broadcasts (the sequence and a Shape-derived copy of it), or it gives up.
    dynamic = any(isinstance(dim, str) for spec in inputs for dim in spec["shape"][1:])
    op_types = op_types or (SEQUENCE_MODEL_OPS if has_sequence_axis(inputs) else None)
    seven_bit = saturating_int8_kernels()
    try:
        quant_pre_process(str(onnx_path), str(prepared), auto_merge=dynamic)
        quantize_static(str(prepared), str(out_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=seven_bit, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=op_types)
    finally:
        prepared.unlink(missing_ok=True)
    record: dict[str, Any] = {"op_types": list(op_types)} if op_types else {}
    if seven_bit:
        record["weight_bits"] = 7
        record["weight_bits_reason"] = ("this x86 CPU has no VNNI or AMX: ONNX Runtime's int8 kernels sum in 16 bits "
                                        "and would saturate 8-bit weights")
    return record


def dynamic_quantize(onnx_path: Path, out_path: Path, per_channel: bool = False) -> dict[str, Any]:
    """ORT dynamic quantization: MatMul/Gemm weights int8 (per tensor, or per output channel), embedding
    Gathers int8, activations uint8 quantized per call. Returns its sidecar record."""
    import logging

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)  # "consider pre-processing": a note for static calibration, not this
    try:
        # Fused ops (com.microsoft's BiasGelu) have no ONNX shape inference: their outputs are float all the same.
        quantize_dynamic(str(onnx_path), str(out_path), op_types_to_quantize=list(DYNAMIC_OPS),
                         per_channel=per_channel, weight_type=QuantType.QInt8,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    finally:
        logger.setLevel(level)
    return {"op_types": list(DYNAMIC_OPS), "per_channel": per_channel, "note": DYNAMIC_NOTE}


def weighted_op_types(onnx_path: Path) -> set[str]:
    """The op types that read a float weight (an initializer of two or more dimensions)."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
    weights = {t.name for t in graph.initializer if len(t.dims) >= 2 and t.data_type in floats}
    return {node.op_type for node in graph.node if any(name in weights for name in node.input)}


def dynamic_applies(onnx_path: Path) -> bool:
    """Whether dynamic quantization covers every weight of the graph: MatMul or Gemm weights, none elsewhere."""
    ops = weighted_op_types(onnx_path)
    return bool(ops & {"MatMul", "Gemm"}) and ops <= set(DYNAMIC_OPS)


def transformer_optimize(onnx_path: Path, out_path: Path, model_type: str = "bert", num_heads: int = 0,
                         hidden_size: int = 0) -> dict[str, Any]:
    """ONNX Runtime's transformer fusions of an fp32 ONNX (0 heads / hidden size: read from the graph).

    Returns what the sidecar records: the model type and how many of each fused op were made.
    """
    from onnxruntime.transformers.optimizer import optimize_model

    optimized = optimize_model(str(onnx_path), model_type=model_type, num_heads=num_heads, hidden_size=hidden_size)
    optimized.save_model_to_file(str(out_path))
    fused = {op: int(n) for op, n in (optimized.get_fused_operator_statistics() or {}).items() if n}
    return {"model_type": model_type, "fused_ops": fused}


def int8_candidates(onnx_path: Path, work: Path, calibration: Any) -> list[tuple[str, Path, dict[str, Any]]]:
    """Every int8 form of a graph `dynamic_applies` to: (name, file, its sidecar record), in the order ties go.

    dynamic first (per-tensor weights: quantize_dynamic's default, the plain recipe, so only a clear gain
    displaces it), static (QDQ, per-channel, calibrated: the standard form other tools read), dynamic
    per-channel, and ORT's transformer fusions (SkipLayerNormalization, Gelu, Attention where the graph
    matches) followed by dynamic quantization, when the fusions fuse anything (ONNX Runtime's ops only).
    """
    work.mkdir(parents=True, exist_ok=True)
    candidates = []
    for name, per_channel in (("dynamic", False), ("static", None), ("dynamic-per-channel", True)):
        path = work / f"{name}.onnx"
        if per_channel is None:
            candidates.append((name, path, {"method": "onnxruntime static (QDQ, per-channel, min-max)",
                                            **static_quantize(onnx_path, path, calibration)}))
            continue
        kind = "per-channel" if per_channel else "per-tensor"
        candidates.append((name, path, {"method": f"onnxruntime dynamic ({kind} int8 weights)",
                                        **dynamic_quantize(onnx_path, path, per_channel)}))
    fused = work / "fused.fp32.onnx"
    fusion = transformer_optimize(onnx_path, fused)
    if fusion["fused_ops"]:
        path = work / "fused-dynamic.onnx"
        candidates.append(("fused-dynamic", path, {"method": "onnxruntime transformer fusions, then dynamic "
                                                             "(per-tensor int8 weights)",
                                                   "transformer_optimized": fusion, **dynamic_quantize(fused, path)}))
    fused.unlink(missing_ok=True)
    return candidates
