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
import logging
from pathlib import Path
from typing import Any

import numpy as np

from compress.core.fileio import read_json
from deploy.engines.interface import (SIDECAR, Engine, EngineUnavailable, Session, calibration_batches,
                                      calibration_count, onnx_inputs)
from deploy.runner.harness import has_sequence_axis
from deploy.runner.sessions import OPENVINO_PRECISION, OpenVinoSession, openvino_core


@contextlib.contextmanager
def one_core():
    """While NNCF runs, its `ov.Core()` and `ov.compile_model` (a Core each) use the process's one Core.

    Cores of the CPU plugin must be freed in the reverse of the order they were made, or the thread is
    left on an unmapped signal stack (see deploy.runner.sessions.openvino_core); NNCF's accuracy control
    keeps several compiled models, each with a Core of its own, and frees them in any order. The next
    signal with a Python handler then killed the process with SIGSEGV.
    """
    import openvino as ov

    core = openvino_core()
    saved = ov.Core, ov.compile_model
    ov.Core = lambda *args, **kwargs: core
    ov.compile_model = lambda model, device_name="AUTO", config=None, **kwargs: core.compile_model(
        model, device_name, config or {})
    try:
        yield
    finally:
        ov.Core, ov.compile_model = saved


def ptq_settings(inputs: list[dict[str, Any]]) -> tuple[dict[str, Any], Any]:
    """What both NNCF entry points are told: int8 for the CPU, a model with a sequence axis as NNCF's TRANSFORMER
    type, min-max ranges without bias correction (as the quantize stage); (keyword options, advanced parameters)."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters

    options = {"target_device": nncf.TargetDevice.CPU,
               "model_type": nncf.ModelType.TRANSFORMER if has_sequence_axis(inputs) else None}
    return options, AdvancedQuantizationParameters(disable_bias_correction=True)


def nncf_quantize_ir(model, calibration: np.ndarray | dict[str, np.ndarray] | list, batch_size: int = 32,
                     inputs: list[dict[str, Any]] | None = None):
    """NNCF PTQ of an OpenVINO model: int8 for the CPU, min-max ranges, no bias correction (as the quantize stage).

    `inputs` (the ONNX's input specs) type the batches of a dict calibration; an array needs none.
    A model with a sequence axis is quantized as NNCF's TRANSFORMER type, which leaves the attention
    mask and Softmax in float: quantized, the mask's huge negative bias lets padding leak in.
    """
    import nncf

    logging.getLogger("nncf").setLevel(logging.WARNING)
    if inputs is None:
        inputs = [{"name": port.get_any_name(), "dtype": str(port.get_element_type().to_dtype())}
                  for port in model.inputs]
    batches = calibration_batches(calibration, inputs, batch_size)
    options, advanced = ptq_settings(inputs)
    with contextlib.redirect_stdout(io.StringIO()), one_core():  # NNCF's progress bars; its Cores
        return nncf.quantize(model, nncf.Dataset(batches), subset_size=len(batches), advanced_parameters=advanced,
                             **options)


class RevertedOps(logging.Handler):
    """Collects the op names NNCF's accuracy restorer logs as reverted to float (it returns only the model)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.reverted: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Reverted "):
            self.reverted += [line.strip() for line in message.splitlines()[1:] if line.strip()]


def nncf_quantize_ir_controlled(model, calibration: Any, validation: tuple[Any, np.ndarray], control: dict[str, Any],
                                inputs: list[dict[str, Any]], batch_size: int = 32) -> tuple[Any, dict[str, Any]]:
    """NNCF's `quantize_with_accuracy_control`: PTQ, then ops back to float (most sensitive first) while the
    top-1 drop on `validation` (inputs, labels) is above `control["max_accuracy_drop"]`.

    A task whose measure is not top-1 gives `control["metric"]` (compiled model, [(feed, labels)] -> a score,
    higher is better) and `control["metric_name"]` (a detector's mAP: its labels index the images it scores).
    Returns the model and what was done: the budget, the float and final score, and the reverted ops.
    """
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    val_inputs, val_labels = validation
    items = list(zip(calibration_batches(val_inputs, inputs, batch_size),
                     [val_labels[i:i + batch_size] for i in range(0, len(val_labels), batch_size)]))

    def top1(compiled, batches) -> float:
        correct = total = 0
        for feed, labels in batches:
            logits = compiled(feed)[0]
            correct += int((np.argmax(logits, 1) == labels).sum())
            total += len(labels)
        return correct / max(total, 1)

    metric = control.get("metric") or top1
    name = control.get("metric_name", "top1")
    float_score = metric(ov_compile(model), items)

    restorer = AdvancedAccuracyRestorerParameters(ranking_subset_size=control.get("ranking_size"))
    if control.get("max_float_layers") is not None:
        restorer.max_num_iterations = control["max_float_layers"]
    options, advanced = ptq_settings(inputs)
    handler = RevertedOps()
    logger = logging.getLogger("nncf")
    level = logger.level
    # NNCF's own console handler stays at warnings: the INFO records are for RevertedOps, not the run log.
    quieted = [(h, h.level) for h in logger.handlers]
    for h, _ in quieted:
        h.setLevel(max(h.level, logging.WARNING))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with contextlib.redirect_stdout(io.StringIO()), one_core():  # NNCF's progress bars; its Cores
            quantized = nncf.quantize_with_accuracy_control(
                model, nncf.Dataset(calibration_batches(calibration, inputs, batch_size)),
                nncf.Dataset(items, lambda item: item[0]), metric, max_drop=control["max_accuracy_drop"],
                drop_type=nncf.DropType.ABSOLUTE, subset_size=calibration_count(calibration),
                advanced_quantization_parameters=advanced, advanced_accuracy_restorer_parameters=restorer, **options)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        for h, saved in quieted:
            h.setLevel(saved)
    final_score = metric(ov_compile(quantized), items)
    record = {"max_accuracy_drop": control["max_accuracy_drop"], f"float_{name}": float_score, name: final_score,
              "drop": float_score - final_score, "met": float_score - final_score <= control["max_accuracy_drop"] + 1e-12,
              "reverted_ops": handler.reverted}
    return quantized, record


def ov_compile(model):
    return openvino_core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})


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
            control = options.get("accuracy_control")
            if control:
                model, record = nncf_quantize_ir_controlled(model, calibration, options["validation"], control, inputs)
                method = {"method": "NNCF PTQ with accuracy control of the OpenVINO model", "accuracy_control": record}
            else:
                model = nncf_quantize_ir(model, calibration, inputs=inputs)
                method = {"method": "NNCF PTQ of the OpenVINO model"}
            extra["quantization"] = {**method, "calibration_samples": calibration_count(calibration),
                                     **({"model_type": "transformer"} if has_sequence_axis(inputs) else {})}
        elif precision == "int8":
            extra["quantization"] = {"method": "Q/DQ ONNX from the quantize stage"}
        if precision == "int8" and options.get("float_precision") not in (None, "fp32"):
            extra["float_precision"] = options["float_precision"]
        artifact = out_dir / "model.xml"
        ov.save_model(model, str(artifact), compress_to_fp16=precision == "fp16")
        return artifact, extra

    def load(self, artifact: Path, threads: int | None = None) -> Session:
        sidecar = Path(artifact).parent / SIDECAR
        recorded = read_json(sidecar) if sidecar.is_file() else {}
        return OpenVinoSession(artifact, threads, recorded.get("precision"),
                               float_precision=recorded.get("float_precision"))
