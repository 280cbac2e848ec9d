"""OpenVINO engine (CPU plugin): IR from `openvino.convert_model` + `save_model`.

fp32 keeps fp32 weights; bf16 keeps them too and computes in bf16 (AVX512-BF16 / AMX-BF16 CPUs: the
plugin falls back to f32 elsewhere, and the session says what ran); fp16 stores fp16-compressed
weights (the CPU plugin decompresses them, and computes in bf16 or f32 on CPUs without fp16 arithmetic);
a session runs at the precision of its artifact (engine.json), not at the plugin's default
(deploy.runner.sessions.OPENVINO_PRECISION);
int8 converts the quantize stage's Q/DQ ONNX when there is one, otherwise runs NNCF PTQ on the
OpenVINO model with the `calibration` samples (an array, or a dict input name -> rows for a
multi-input model). A multi-input model (BERT) converts as is: its batch and sequence axes stay
dynamic, nothing is reshaped, and the CPU plugin runs any length.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import numpy as np

from compress.core.fileio import read_json
from deploy.engines.interface import (SIDECAR, Engine, EngineUnavailable, Session, calibration_batches,
                                      calibration_count, onnx_inputs)
from deploy.runner.harness import has_sequence_axis
from deploy.runner.sessions import OPENVINO_PRECISION, OpenVinoSession


def nncf_quantize_ir(model, calibration: np.ndarray | dict[str, np.ndarray] | list, batch_size: int = 32,
                     inputs: list[dict[str, Any]] | None = None):
    """NNCF PTQ of an OpenVINO model: int8 for the CPU, min-max ranges, no bias correction (as the quantize stage).

    `inputs` (the ONNX's input specs) type the batches of a dict calibration; an array needs none.
    A model with a sequence axis is quantized as NNCF's TRANSFORMER type, which leaves the attention
    mask and Softmax in float: quantized, the mask's huge negative bias lets padding leak in.
    """
    import logging

    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters

    logging.getLogger("nncf").setLevel(logging.WARNING)
    if inputs is None:
        inputs = [{"name": port.get_any_name(), "dtype": str(port.get_element_type().to_dtype())}
                  for port in model.inputs]
    batches = calibration_batches(calibration, inputs, batch_size)
    with contextlib.redirect_stdout(io.StringIO()):  # NNCF's progress bars
        return nncf.quantize(model, nncf.Dataset(batches), subset_size=len(batches),
                             target_device=nncf.TargetDevice.CPU,
                             model_type=nncf.ModelType.TRANSFORMER if has_sequence_axis(inputs) else None,
                             advanced_parameters=AdvancedQuantizationParameters(disable_bias_correction=True))


class OpenVinoEngine(Engine):
    backend = "openvino"
    precisions = ("fp32", "bf16", "fp16", "int8")

    module = "openvino"

    def _build(self, onnx_path: Path, out_dir: Path, precision: str, **options: Any) -> tuple[Path, dict[str, Any]]:
        import openvino as ov

        model = ov.convert_model(str(onnx_path))
        extra: dict[str, Any] = {"device": "CPU", "inference_precision_hint": OPENVINO_PRECISION[precision]}
        if precision == "int8" and not (options.get("sources") or {}).get("qdq"):
            calibration = options.get("calibration")
            if not calibration_count(calibration):
                raise EngineUnavailable("openvino int8 without a Q/DQ ONNX needs calibration samples")
            inputs = onnx_inputs(onnx_path)
            model = nncf_quantize_ir(model, calibration, inputs=inputs)
            extra["quantization"] = {"method": "NNCF PTQ of the OpenVINO model",
                                     "calibration_samples": calibration_count(calibration),
                                     **({"model_type": "transformer"} if has_sequence_axis(inputs) else {})}
        elif precision == "int8":
            extra["quantization"] = {"method": "Q/DQ ONNX from the quantize stage"}
        artifact = out_dir / "model.xml"
        ov.save_model(model, str(artifact), compress_to_fp16=precision == "fp16")
        return artifact, extra

    def load(self, artifact: Path, threads: int | None = None) -> Session:
        sidecar = Path(artifact).parent / SIDECAR
        precision = read_json(sidecar).get("precision") if sidecar.is_file() else None
        return OpenVinoSession(artifact, threads, precision)
