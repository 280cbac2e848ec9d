"""ONNX Runtime engine (CPU execution provider): fp32, and int8 as a Q/DQ ONNX.

int8 comes from the quantize stage's Q/DQ ONNX when there is one (the QAT/PTQ result is what ships);
otherwise the fp32 ONNX is quantized here with ORT's static quantization: QDQ format, per-channel
int8 weights, uint8 activations calibrated (min-max) on the `calibration` samples. Either way the
weights are stored as int8 initializers (deploy.engines.qdq_fold), not fp32 behind a QuantizeLinear.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from deploy.engines.interface import Engine, EngineUnavailable, Session
from deploy.runner.sessions import OnnxRuntimeSession


def static_quantize(onnx_path: Path, out_path: Path, calibration: np.ndarray, batch_size: int = 32) -> None:
    """ORT static quantization of an fp32 ONNX to QDQ with per-channel weights."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    input_name = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(np.ascontiguousarray(calibration[i:i + batch_size], dtype=np.float32)
                                for i in range(0, len(calibration), batch_size))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {input_name: batch}

    prepared = out_path.with_name(f".{out_path.stem}.pre.onnx")  # ORT's recommended shape inference + fusions
    try:
        quant_pre_process(str(onnx_path), str(prepared))
        quantize_static(str(prepared), str(out_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    finally:
        prepared.unlink(missing_ok=True)


class OnnxRuntimeEngine(Engine):
    backend = "onnxruntime"
    precisions = ("fp32", "int8")

    module = "onnxruntime"

    def _build(self, onnx_path: Path, out_dir: Path, precision: str, **options: Any) -> tuple[Path, dict[str, Any]]:
        artifact = out_dir / "model.onnx"
        extra: dict[str, Any] = {"providers": ["CPUExecutionProvider"]}
        if precision == "int8" and not (options.get("sources") or {}).get("qdq"):
            calibration = options.get("calibration")
            if calibration is None or not len(calibration):
                raise EngineUnavailable("onnxruntime int8 without a Q/DQ ONNX needs calibration samples")
            static_quantize(onnx_path, artifact, calibration)
            extra["quantization"] = {"method": "onnxruntime static (QDQ, per-channel, min-max)",
                                     "calibration_samples": int(len(calibration))}
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
