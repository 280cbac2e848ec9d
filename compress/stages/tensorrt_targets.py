"""The build stage's TensorRT and Triton targets: options, deferral to the device, repositories.

Kept apart from the build stage so that the stage stays a loop over targets. Without a CUDA GPU
(this is a CPU machine, or TensorRT is not installed) a TensorRT target is deferred: its folder
gets the source ONNX and a build_engine.sh, and the run records how the engine will be built on
the device instead of failing.
"""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from compress.config import ADDED_LATER, PipelineConfig, Strict
from compress.tasks.registry import task_for
from deploy.engines.trtexec import DEFAULT_WORKSPACE_MB, build_script, trtexec_args

EXPORT_TARGETS = ("triton",)
TIMING_CACHE = Path("cache") / "tensorrt.timing.cache"  # under the run dir: survives stage reruns


class TensorRTOptions(Strict):
    min_batch: int = Field(1, ge=1, description="optimisation profile: smallest batch")
    opt_batch: int = Field(8, ge=1, description="optimisation profile: batch the kernels are tuned for")
    max_batch: int = Field(32, ge=1, description="optimisation profile: largest batch (also Triton's max_batch_size)")
    workspace_mb: int = Field(DEFAULT_WORKSPACE_MB, ge=16, description="builder workspace pool limit")
    timing_cache: bool = Field(True, description="keep a timing cache in the run dir across builds")
    # Text models: the profile's sequence axis (tokens); max_sequence defaults to data.text.max_length.
    min_sequence: int = Field(1, ge=1, json_schema_extra=ADDED_LATER)
    opt_sequence: int | None = Field(None, ge=1, json_schema_extra=ADDED_LATER, description="default: max / 2")
    max_sequence: int | None = Field(None, ge=1, json_schema_extra=ADDED_LATER,
                                     description="default: data.text.max_length")

    @model_validator(mode="after")
    def _ordered(self) -> "TensorRTOptions":
        if not self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError(f"need min_batch <= opt_batch <= max_batch, got {self.min_batch}, {self.opt_batch}, "
                             f"{self.max_batch}")
        return self

    def sequence_range(self, max_length: int) -> tuple[int, int, int]:
        longest = self.max_sequence or max_length
        return self.min_sequence, self.opt_sequence or max(self.min_sequence, longest // 2), longest


def check_targets(pipeline: PipelineConfig, targets: list[str], options: TensorRTOptions) -> tuple[str, str] | None:
    """Cross-stage checks of TensorRT targets (the config loader turns them into one-line errors)."""
    if "tensorrt:int8" in targets and "quantize" not in pipeline.stages:
        return "targets", ("tensorrt:int8 builds from the Q/DQ ONNX of the quantize stage: add stages.quantize "
                           "or drop the target")
    longest = task_for(pipeline).max_sequence_length()  # inputs with a sequence axis get a profile over it
    if longest is not None and any(t.startswith("tensorrt:") for t in targets):
        low, opt, high = options.sequence_range(longest)
        if not low <= opt <= high:
            return "tensorrt.opt_sequence", f"need min_sequence <= opt_sequence <= max_sequence, got {low}, {opt}, {high}"
        if high < longest:
            return "tensorrt.max_sequence", (f"{high} is below data.text.max_length "
                                             f"{longest}: the profile must cover it")
    benchmark = pipeline.stages.get("benchmark")
    if any(t.startswith("tensorrt:") for t in targets) and benchmark is not None:
        too_big = [b for b in benchmark.batch_sizes if b > options.max_batch]
        if too_big:
            return "tensorrt.max_batch", (f"{options.max_batch} is below the benchmark batch sizes {too_big}; "
                                          "the engine's profile must cover them")
    return None


def export_sources(ctx) -> dict[str, Path]:
    """The ONNX files a build can start from: fp32 always, fp16 and Q/DQ when the export made them."""
    export = ctx.outputs["export"]
    keys = {"fp32": "onnx", "fp16": "onnx_fp16", "qdq": "onnx_qdq"}
    return {name: ctx.path(export[key]) for name, key in keys.items() if export.get(key)}


def tensorrt_build_options(ctx, options: TensorRTOptions) -> dict[str, Any]:
    built = {"min_batch": options.min_batch, "opt_batch": options.opt_batch, "max_batch": options.max_batch,
             "workspace_mb": options.workspace_mb,
             "timing_cache": ctx.run_dir / TIMING_CACHE if options.timing_cache else None}
    longest = ctx.task.max_sequence_length()
    if longest is not None:
        low, opt, high = options.sequence_range(longest)
        built.update(min_sequence=low, opt_sequence=opt, max_sequence=high)
    return built


def defer_tensorrt(ctx, out_dir: Path, precision: str, source: Path, options: TensorRTOptions,
                   reason: str) -> dict[str, Any]:
    """Leave a folder that builds the engine on the device: model.onnx + build_engine.sh."""
    from deploy.engines.interface import onnx_inputs
    from deploy.engines.tensorrt import input_profile_shapes, onnx_input, profile_shapes

    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, out_dir / "model.onnx")
    script = out_dir / "build_engine.sh"
    longest = ctx.task.max_sequence_length()
    if longest is not None:  # every input over batch x sequence
        low, opt, high = options.sequence_range(longest)
        per_input = input_profile_shapes(onnx_inputs(source), options.min_batch, options.opt_batch, options.max_batch,
                                         low, opt, high, source.name)
        script.write_text(build_script("model.onnx", "model.plan", precision, input_shapes=per_input))
        command = trtexec_args("model.onnx", "model.plan", precision, workspace_mb=options.workspace_mb,
                               input_shapes=per_input)
        shapes = per_input
    else:
        input_name, dims = onnx_input(source)
        shapes = profile_shapes(dims, options.min_batch, options.opt_batch, options.max_batch)
        script.write_text(build_script("model.onnx", "model.plan", precision, shapes["min"], shapes["opt"],
                                       shapes["max"], input_name))
        command = trtexec_args("model.onnx", "model.plan", precision, shapes["min"], shapes["opt"], shapes["max"],
                               input_name, options.workspace_mb)
    script.chmod(0o755)
    how = f"compress deploy {shlex.quote(str(ctx.run_dir))} --target ssh://USER@DEVICE/DIR --runtime tensorrt"
    return {"model": "student", "backend": "tensorrt", "precision": precision, "reason": reason, "how": how,
            "trtexec": " ".join(shlex.quote(a) for a in command), "dir": ctx.relative(out_dir),
            "script": ctx.relative(script), "shapes": shapes}


def write_triton(ctx, precision: str, sources: dict[str, Path], engines: list[dict],
                 options: TensorRTOptions, batch_sizes: list[int]) -> dict[str, Any]:
    """One model in stages/build/model_repository; the TensorRT plan of that precision when one was built."""
    from deploy.engines.tensorrt import SOURCE_KEY, select_source
    from deploy.triton import write_model_repository

    source = select_source(precision, sources["fp32"], sources)
    plan = next((ctx.path(e["artifact"]) for e in engines
                 if e["backend"] == "tensorrt" and e["precision"] == precision), None)
    name = ctx.pipeline.name if precision == "fp32" else f"{ctx.pipeline.name}_{precision}"
    root = ctx.stage_dir / "model_repository"
    model_dir = write_model_repository(root, name, source, options.max_batch, batch_sizes, plan)
    return {"model": "student", "backend": "triton", "precision": precision, "name": name,
            "repository": ctx.relative(root), "dir": ctx.relative(model_dir),
            "format": "tensorrt_plan" if plan else "onnx", "source": SOURCE_KEY[precision]}
