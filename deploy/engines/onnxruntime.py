"""ONNX Runtime engine (CPU execution provider): fp32, and int8 as a Q/DQ ONNX.

int8 comes from the quantize stage's Q/DQ ONNX when there is one (the QAT/PTQ result is what ships);
otherwise the fp32 ONNX is quantized here with ORT's static quantization: QDQ format, per-channel
int8 weights, uint8 activations calibrated (min-max) on the `calibration` samples (an array for
an image model, a dict input name -> rows for a multi-input one). Either way the weights are
stored as int8 initializers (deploy.engines.qdq_fold), not fp32 behind a QuantizeLinear.

`transformer_optimize=True` builds fp32 through ONNX Runtime's transformer optimizer (BERT
fusions: SkipLayerNormalization, BiasGelu, Attention where it matches): faster on ONNX Runtime,
but its com.microsoft ops run nowhere else, so it is an ONNX Runtime artifact only.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from deploy.engines.interface import (Engine, EngineUnavailable, Session, calibration_batches, calibration_count,
                                      onnx_inputs)
from deploy.runner.harness import has_sequence_axis
from deploy.runner.sessions import OnnxRuntimeSession

# What int8 covers in a model with a sequence axis (a Transformer): the weighted ops. The attention
# mask's -inf/float-min bias and the NaN guards after Softmax have no finite range to quantize.
SEQUENCE_MODEL_OPS = ["MatMul", "Gemm", "Gather"]


def static_quantize(onnx_path: Path, out_path: Path, calibration: np.ndarray | dict[str, np.ndarray] | list,
                    batch_size: int = 32) -> dict[str, Any]:
    """ORT static quantization of an fp32 ONNX to QDQ with per-channel weights.

    `calibration`: an array for a single-input model, or a dict name -> rows (or a list of such
    batches) for a multi-input one, fed by name in each input's dtype. Returns what the sidecar
    adds to its quantization record (the op types, where they are limited).
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
    op_types = SEQUENCE_MODEL_OPS if has_sequence_axis(inputs) else None
    try:
        quant_pre_process(str(onnx_path), str(prepared), auto_merge=dynamic)
        quantize_static(str(prepared), str(out_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=op_types)
    finally:
        prepared.unlink(missing_ok=True)
    return {"op_types": list(op_types)} if op_types else {}


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


class OnnxRuntimeEngine(Engine):
    backend = "onnxruntime"
    precisions = ("fp32", "int8")

    module = "onnxruntime"

    def _build(self, onnx_path: Path, out_dir: Path, precision: str, **options: Any) -> tuple[Path, dict[str, Any]]:
        artifact = out_dir / "model.onnx"
        extra: dict[str, Any] = {"providers": ["CPUExecutionProvider"]}
        if options.get("transformer_optimize"):
            if precision != "fp32":
                raise EngineUnavailable("onnxruntime transformer_optimize builds fp32 only")
            extra["transformer_optimized"] = transformer_optimize(onnx_path, artifact)
        elif precision == "int8" and not (options.get("sources") or {}).get("qdq"):
            calibration = options.get("calibration")
            if not calibration_count(calibration):
                raise EngineUnavailable("onnxruntime int8 without a Q/DQ ONNX needs calibration samples")
            limited = static_quantize(onnx_path, artifact, calibration)
            extra["quantization"] = {"method": "onnxruntime static (QDQ, per-channel, min-max)",
                                     "calibration_samples": calibration_count(calibration), **limited}
        else:
            shutil.copyfile(onnx_path, artifact)
            if precision == "int8":
                extra["quantization"] = {"method": "Q/DQ ONNX from the quantize stage"}
        if precision == "int8":
            from deploy.engines.qdq_fold import fold_file

            extra["weights_int8"] = fold_file(artifact, artifact)
        return artifact, extra

    def load(self, artifact: Path, threads: int | None = None) -> Session:
        return OnnxRuntimeSession(artifact, threads, providers=["CPUExecutionProvider"])
