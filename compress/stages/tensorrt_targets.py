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

from compress.config import PipelineConfig, Strict
from deploy.engines.trtexec import DEFAULT_WORKSPACE_MB, build_script, trtexec_args

EXPORT_TARGETS = ("triton",)
TIMING_CACHE = Path("cache") / "tensorrt.timing.cache"  # under the run dir: survives stage reruns


class TensorRTOptions(Strict):
    min_batch: int = Field(1, ge=1, description="optimisation profile: smallest batch")
    opt_batch: int = Field(8, ge=1, description="optimisation profile: batch the kernels are tuned for")
    max_batch: int = Field(32, ge=1, description="optimisation profile: largest batch (also Triton's max_batch_size)")
    workspace_mb: int = Field(DEFAULT_WORKSPACE_MB, ge=16, description="builder workspace pool limit")
    timing_cache: bool = Field(True, description="keep a timing cache in the run dir across builds")

    @model_validator(mode="after")
    def _ordered(self) -> "TensorRTOptions":
        if not self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError(f"need min_batch <= opt_batch <= max_batch, got {self.min_batch}, {self.opt_batch}, "
                             f"{self.max_batch}")
        return self


def check_targets(pipeline: PipelineConfig, targets: list[str], options: TensorRTOptions) -> tuple[str, str] | None:
    """Cross-stage checks of TensorRT targets (the config loader turns them into one-line errors)."""
    if "tensorrt:int8" in targets and "quantize" not in pipeline.stages:
        return "targets", ("tensorrt:int8 builds from the Q/DQ ONNX of the quantize stage: add stages.quantize "
                           "or drop the target")
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
    return {"min_batch": options.min_batch, "opt_batch": options.opt_batch, "max_batch": options.max_batch,
            "workspace_mb": options.workspace_mb,
            "timing_cache": ctx.run_dir / TIMING_CACHE if options.timing_cache else None}


def defer_tensorrt(ctx, out_dir: Path, precision: str, source: Path, options: TensorRTOptions,
                   reason: str) -> dict[str, Any]:
    """Leave a folder that builds the engine on the device: model.onnx + build_engine.sh."""
    from deploy.engines.tensorrt import onnx_input, profile_shapes

    input_name, dims = onnx_input(source)
    shapes = profile_shapes(dims, options.min_batch, options.opt_batch, options.max_batch)
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, out_dir / "model.onnx")
    script = out_dir / "build_engine.sh"
    script.write_text(build_script("model.onnx", "model.plan", precision, shapes["min"], shapes["opt"],
                                   shapes["max"], input_name))
    script.chmod(0o755)
    command = trtexec_args("model.onnx", "model.plan", precision, shapes["min"], shapes["opt"], shapes["max"],
                           input_name, options.workspace_mb)
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
