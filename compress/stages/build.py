"""build: one engine per `backend:precision` target, each in its own folder with engine.json.

When the export made baseline.onnx (`stages.export.recommend_from` lists baseline), the student
trained alone gets the engines this machine builds too (baseline.<backend>.<precision>), from its
fp32 ONNX; TensorRT and Triton stay the KD student's.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import Field, field_validator

from compress.config import ADDED_LATER, PipelineConfig, Strict, TopOneDrop
from compress.quantize.calibration import calibration_samples
from compress.stages.contract import Stage, StageContext
from compress.tasks.registry import task_for
from compress.stages.engine_parity import References, check_engine
from compress.stages.tensorrt_targets import (EXPORT_TARGETS, TensorRTOptions, check_targets, defer_tensorrt, export_sources,
                                  tensorrt_build_options, write_triton)


CALIBRATION_SAMPLES = 300


def auto_targets() -> list[str]:
    """ONNX Runtime and OpenVINO in every precision they build, TensorRT fp32/fp16 where a GPU and TensorRT are
    (its int8 takes the quantize stage's Q/DQ ONNX, so it is asked for by name)."""
    from deploy.engines import ENGINES

    targets = []
    for backend, engine in ENGINES.items():
        if backend == "tensorrt":
            targets += [f"tensorrt:{p}" for p in ("fp32", "fp16")] if engine.missing() is None else []
        elif engine.available():
            targets += [f"{backend}:{p}" for p in engine.precisions]
    return targets


def parse_target(target: str) -> tuple[str, str]:
    backend, _, precision = target.partition(":")
    return backend.strip(), (precision.strip() or "fp32")


class Int8AccuracyControl(Strict):
    max_accuracy_drop: TopOneDrop = Field(gt=0, description="top-1 drop allowed against the fp32 ONNX "
                                                         "(0.005 = half a point)")
    max_float_layers: int | None = Field(None, ge=0, description="at most this many ops back in float (default: any)")
    ranking_size: int = Field(300, ge=1, description="validation samples the per-op sensitivity is measured on")


# Validation samples the accuracy-controlled int8 build scores each candidate on (all of a smaller split).
CONTROL_SAMPLES = 5000


class BuildConfig(Strict):
    targets: list[str] = Field(default_factory=lambda: ["onnxruntime:fp32"],
                               description="backend[:precision], e.g. onnxruntime:fp32, openvino:bf16, tensorrt:fp16, "
                                           "triton; or auto: every backend and precision installed here")
    tensorrt: TensorRTOptions = Field(default_factory=TensorRTOptions)
    transformer_optimize: bool = Field(False, json_schema_extra=ADDED_LATER,
                                       description="onnxruntime:fp32 of a text model: ONNX Runtime's BERT fusions "
                                                   "(attention, LayerNorm, GELU); the artifact then runs on ORT only")
    int8_float_precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", json_schema_extra=ADDED_LATER,
        description="openvino:int8: the precision its ops left in float compute in (bf16 on AMX/AVX512-BF16 CPUs: "
                    "mixed int8 + bf16)")
    accuracy_control: Int8AccuracyControl | None = Field(
        None, json_schema_extra=ADDED_LATER,
        description="openvino:int8 calibrated here (no quantize stage): NNCF's quantize_with_accuracy_control "
                    "returns ops to float until the top-1 drop on the validation set fits the budget")

    @field_validator("targets", mode="before")
    @classmethod
    def _auto(cls, targets: Any) -> Any:
        """`targets: auto`: every backend x precision this machine builds, for the benchmark to choose from."""
        if targets == "auto" or targets == ["auto"]:
            return auto_targets()
        if isinstance(targets, list) and "auto" in targets:
            raise ValueError("auto stands alone: `targets: auto` builds every backend and precision installed here")
        return targets

    @field_validator("targets")
    @classmethod
    def _known_targets(cls, targets: list[str]) -> list[str]:
        from deploy.engines import ENGINES

        normalized = []
        for target in targets:
            backend, precision = parse_target(target)
            engine = ENGINES.get("tensorrt" if backend in EXPORT_TARGETS else backend)
            if engine is None:
                raise ValueError(f"unknown backend '{backend}'; known: {', '.join([*ENGINES, *EXPORT_TARGETS])}")
            if precision not in engine.precisions:
                raise ValueError(f"{backend} builds {', '.join(engine.precisions)}, not '{precision}'")
            # A deferrable backend (TensorRT without a GPU here) is built on the device instead.
            if not engine.available() and not getattr(engine, "deferrable", False):
                raise ValueError(f"{backend} is not installed here (pip install {backend})")
            normalized.append(f"{backend}:{precision}")
        if len(set(normalized)) != len(normalized):
            raise ValueError("a target is listed twice")
        return normalized

    def check(self, pipeline: PipelineConfig) -> tuple[str, str] | None:
        if self.transformer_optimize and not task_for(pipeline).transformer_graphs:
            return "transformer_optimize", "fuses Transformer ops of text models; this pipeline's data are not texts"
        if self.transformer_optimize and "onnxruntime:fp32" not in self.targets:
            return "transformer_optimize", "applies to the onnxruntime:fp32 target: add it to targets"
        if self.int8_float_precision != "fp32" and "openvino:int8" not in self.targets:
            return "int8_float_precision", ("applies to the openvino:int8 target (ONNX Runtime's CPU kernels have no "
                                            "bf16/fp16 for most ops): add openvino:int8 to targets")
        if self.accuracy_control is not None and "openvino:int8" not in self.targets:
            return "accuracy_control", "applies to the openvino:int8 target: add it to targets"
        if self.accuracy_control is not None and "quantize" in pipeline.stages:
            return "accuracy_control", ("openvino:int8 is built from the quantize stage's Q/DQ ONNX here: set "
                                        "max_accuracy_drop in stages.quantize instead")
        return check_targets(pipeline, self.targets, self.tensorrt)


class BuildStage(Stage):
    name = "build"
    Config = BuildConfig
    # distill, quantize and baseline: the torch models each engine is checked against (engine_parity.py)
    reads = ("export", "distill", "quantize", "baseline")

    def reads_in(self, pipeline: PipelineConfig) -> tuple[str, ...]:
        """Only export's key: it already holds the keys of the models it exported (of all three stages)."""
        return ("export",)

    def key_material(self, pipeline: PipelineConfig) -> dict[str, Any]:
        return {"data": pipeline.data.model_dump(mode="json"), "seed": pipeline.seed}  # calibration samples

    def run(self, ctx: StageContext) -> dict[str, Any]:
        from deploy.engines import get_engine

        onnx_path = ctx.path(ctx.outputs["export"]["onnx"])
        sources = export_sources(ctx)  # each engine picks its own: e.g. int8 from the Q/DQ ONNX when quantize ran
        calibration = calibration_samples(ctx.data.train, CALIBRATION_SAMPLES, ctx.pipeline.seed)
        engines, deferred, exports = [], [], []
        refs = None  # the reference models' outputs, made when the first engine is built
        for target in ctx.config.targets:
            backend, precision = parse_target(target)
            if backend in EXPORT_TARGETS:
                continue  # written after the engines, so that a built plan can be used
            out_dir = ctx.stage_dir / f"student.{backend}.{precision}"
            engine = get_engine(backend)
            options = {"sources": sources, "calibration": calibration}
            if ctx.config.transformer_optimize and target == "onnxruntime:fp32":
                options["transformer_optimize"] = True
            if precision == "int8":
                refs = refs or References(ctx)
                options.update(int8_choice_options(ctx, refs))
            if target == "openvino:int8":
                options["float_precision"] = ctx.config.int8_float_precision
            if ctx.config.accuracy_control and target == "openvino:int8":
                options.update(accuracy_control_options(ctx, ctx.config.accuracy_control))
            if backend == "tensorrt":
                options.update(tensorrt_build_options(ctx, ctx.config.tensorrt))
                reason = engine.missing()
                if reason:
                    entry = defer_tensorrt(ctx, out_dir, precision, engine.source(onnx_path, precision, sources),
                                           ctx.config.tensorrt, reason)
                    ctx.log(f"tensorrt {precision}: {reason}; the engine will be built on the device at deploy "
                            f"time ({entry['script']})")
                    deferred.append(entry)
                    continue
            built = engine.build(onnx_path, out_dir, precision, **options)
            refs = refs or References(ctx)
            checked = check_engine(refs, engine, built, "student", precision)
            ctx.log(f"{backend} {precision}: {ctx.relative(built.artifact)} in {built.sidecar['build_seconds']:.2f}s; "
                    f"{parity_line(checked)}")
            control = (built.sidecar.get("quantization") or {}).get("accuracy_control")
            choice = (built.sidecar.get("quantization") or {}).get("choice")
            if choice:
                ctx.log(f"{backend} {precision}: ships {choice['chosen']}, {choice['why']}")
            if control:
                ctx.log(f"{backend} {precision}: accuracy control: top-1 {control['top1']:.4f} (fp32 "
                        f"{control['float_top1']:.4f}), {len(control['reverted_ops'])} ops back in float: "
                        + (", ".join(control["reverted_ops"]) or "none"))
            engines.append({"model": "student", "backend": backend, "precision": precision,
                            "dir": ctx.relative(out_dir), "artifact": ctx.relative(built.artifact), "parity": checked,
                            **({"accuracy_control": control} if control else {}),
                            **({"int8_choice": {k: choice[k] for k in ("chosen", "why")}} if choice else {}),
                            **({"float_precision": built.sidecar["float_precision"]}
                               if built.sidecar.get("float_precision") else {})})
        for target in ctx.config.targets:
            backend, precision = parse_target(target)
            if backend == "triton":
                batch_sizes = getattr(ctx.pipeline.stages.get("benchmark"), "batch_sizes", [])
                exports.append(write_triton(ctx, precision, sources, engines, ctx.config.tensorrt, batch_sizes))
                ctx.log(f"triton {precision}: {exports[-1]['dir']} ({exports[-1]['format']})")
        baseline_onnx = ctx.outputs["export"].get("baseline_onnx")
        if baseline_onnx:
            engines += build_baseline(ctx, ctx.path(baseline_onnx), calibration, refs or References(ctx))
        return {"engines": engines, "deferred": deferred, "triton": exports}


def accuracy_control_options(ctx: StageContext, control: Int8AccuracyControl) -> dict[str, Any]:
    """The budget and the validation inputs + labels NNCF scores each candidate on."""
    val = ctx.data.val
    inputs, labels = val.sample(range(len(val)), CONTROL_SAMPLES)
    ctx.log(f"openvino int8: accuracy control, budget {control.max_accuracy_drop:g} top-1 on {len(labels)} "
            "validation samples (NNCF quantize_with_accuracy_control)")
    return {"accuracy_control": control.model_dump(), "validation": (inputs, labels)}


def int8_choice_options(ctx: StageContext, refs: References) -> dict[str, Any]:
    """What an int8 engine that chooses its form by measurement (deploy.engines.int8_choice) is scored and timed
    with: the inputs and the agreement budget the engine parity check applies after it, the benchmark's batch
    sizes and threads."""
    bench = ctx.pipeline.stages.get("benchmark")
    return {"check_inputs": refs.inputs, "min_agreement": ctx.pipeline.gates.engine_agreement("int8"),
            "timing_batches": getattr(bench, "batch_sizes", None),
            "threads": getattr(bench, "threads", None) or os.cpu_count()}


def parity_line(checked: dict[str, Any]) -> str:
    verdict = "" if checked["passed"] else f" BELOW {checked['min_agreement']:g}"
    return (f"top-1 agreement {checked['top1_agreement']:.4f}{verdict} with {checked['reference']}, max |diff| "
            f"{checked['max_abs_error']:.2e}")


def build_baseline(ctx: StageContext, onnx_path, calibration, refs: References) -> list[dict[str, Any]]:
    """The student alone's engines: every target built here, from its own fp32 ONNX (int8 calibrated like PTQ)."""
    from deploy.engines import get_engine

    engines = []
    for target in ctx.config.targets:
        backend, precision = parse_target(target)
        if backend in EXPORT_TARGETS or backend == "tensorrt":
            ctx.log(f"baseline: {backend} {precision} is built for the KD student only")
            continue
        out_dir = ctx.stage_dir / f"baseline.{backend}.{precision}"
        engine = get_engine(backend)
        extra = int8_choice_options(ctx, refs) if precision == "int8" else {}
        built = engine.build(onnx_path, out_dir, precision, sources={"fp32": onnx_path}, calibration=calibration,
                             **extra)
        checked = check_engine(refs, engine, built, "baseline", precision)
        ctx.log(f"baseline {backend} {precision}: {ctx.relative(built.artifact)} in "
                f"{built.sidecar['build_seconds']:.2f}s; {parity_line(checked)}")
        engines.append({"model": "baseline", "backend": backend, "precision": precision,
                        "dir": ctx.relative(out_dir), "artifact": ctx.relative(built.artifact), "parity": checked})
    return engines
