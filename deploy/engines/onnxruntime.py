"""ONNX Runtime engine (CPU execution provider): fp32, and int8 as a Q/DQ or a dynamically quantized ONNX.

int8 comes from the quantize stage's Q/DQ ONNX when there is one (the QAT/PTQ result is what ships).
Otherwise the fp32 ONNX is quantized here. A graph with weights outside MatMul/Gemm/Gather (a CNN)
gets ORT's static quantization: QDQ format, per-channel int8 weights, uint8 activations calibrated
(min-max) on the `calibration` samples (an array for an image model, a dict input name -> rows for
a multi-input one). A graph whose weights all sit in MatMul/Gemm/Gather (a Transformer, an MLP) gets
every int8 form of deploy.engines.ort_quantize (static, dynamic, dynamic per-channel, fused +
dynamic), each timed here against the fp32 ONNX and scored against its outputs, and ships the
fastest within the accuracy budget (deploy.engines.int8_choice): on BERT shapes static Q/DQ was
slower than dynamic, and even than fp32 at short sequences. engine.json records every candidate's
numbers, the choice and why. Either way the weights are stored as int8 initializers
(deploy.engines.qdq_fold), not fp32 behind a QuantizeLinear.

Options of an int8 build by measurement: `check_inputs` (rows the candidates are scored on; the
calibration rows otherwise), `min_agreement` (top-1 agreement with the fp32 ONNX; the int8 engine
budget otherwise), `timing_batches`, `threads`.

`transformer_optimize=True` builds fp32 through ONNX Runtime's transformer optimizer (BERT
fusions: SkipLayerNormalization, BiasGelu, Attention where it matches): faster on ONNX Runtime,
but its com.microsoft ops run nowhere else, so it is an ONNX Runtime artifact only.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from deploy.engines.int8_choice import measure_and_choose, timing_length
from deploy.engines.interface import Engine, EngineUnavailable, Session, calibration_count, onnx_inputs
from deploy.engines.ort_quantize import dynamic_applies, int8_candidates, static_quantize, transformer_optimize
from deploy.runner.sessions import OnnxRuntimeSession


def open_onnx(path: Path, threads: int | None):
    return lambda: OnnxRuntimeSession(path, threads, providers=["CPUExecutionProvider"])


def measured_int8(onnx_path: Path, artifact: Path, calibration: Any, options: dict[str, Any]) -> dict[str, Any]:
    """Build every int8 candidate, time and score them against `onnx_path`, keep the chosen one as `artifact`.

    Returns the sidecar's quantization record: the chosen candidate's own record plus the choice.
    `options["timing"]` (rounds, timer) goes to measure_and_choose as is: the benchmark's smoke run, tests.
    """
    work = artifact.parent / ".int8-candidates"
    try:
        candidates = int8_candidates(onnx_path, work, calibration)
        inputs = onnx_inputs(onnx_path)
        threads = options.get("threads")
        check = options.get("check_inputs")
        choice = measure_and_choose(
            ("fp32", open_onnx(onnx_path, threads)),
            [(name, open_onnx(path, threads), record["method"]) for name, path, record in candidates],
            inputs, check if check is not None else calibration, timing_length(inputs, calibration),
            options.get("min_agreement"), options.get("timing_batches"), threads, **options.get("timing", {}))
        name, path, record = next(c for c in candidates if c[0] == choice["chosen"])
        shutil.copyfile(path, artifact)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    choice["checked_on"] = "the given check inputs" if options.get("check_inputs") is not None else \
        "the calibration samples"
    return {**record, "calibration_samples": calibration_count(calibration), "choice": choice}


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
            if dynamic_applies(onnx_path):
                extra["quantization"] = measured_int8(onnx_path, artifact, calibration, options)
            else:
                limited = static_quantize(onnx_path, artifact, calibration, op_types=options.get("int8_op_types"))
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
