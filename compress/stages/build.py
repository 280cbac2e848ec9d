"""build: one engine per `backend:precision` target, each in its own folder with engine.json."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from compress.config import PipelineConfig, Strict
from compress.quantize.calibration import calibration_samples
from compress.stages import register_stage
from compress.stages.base import Stage, StageContext


SOURCE_KEYS = {"fp32": "onnx", "qdq": "onnx_qdq", "fp16": "onnx_fp16"}  # sources[...] <- export output
CALIBRATION_SAMPLES = 300


def parse_target(target: str) -> tuple[str, str]:
    backend, _, precision = target.partition(":")
    return backend.strip(), (precision.strip() or "fp32")


class BuildConfig(Strict):
    targets: list[str] = Field(default_factory=lambda: ["onnxruntime:fp32"],
                               description="backend[:precision], e.g. onnxruntime:fp32")

    @field_validator("targets")
    @classmethod
    def _known_targets(cls, targets: list[str]) -> list[str]:
        from deploy.engines import ENGINES

        normalized = []
        for target in targets:
            backend, precision = parse_target(target)
            engine = ENGINES.get(backend)
            if engine is None:
                raise ValueError(f"unknown backend '{backend}'; known: {', '.join(ENGINES)}")
            if precision not in engine.precisions:
                raise ValueError(f"{backend} builds {', '.join(engine.precisions)}, not '{precision}'")
            if not engine.available():
                raise ValueError(f"{backend} is not installed here (pip install {backend})")
            normalized.append(f"{backend}:{precision}")
        if len(set(normalized)) != len(normalized):
            raise ValueError("a target is listed twice")
        return normalized


@register_stage
class BuildStage(Stage):
    name = "build"
    Config = BuildConfig
    reads = ("export",)

    def key_material(self, pipeline: PipelineConfig) -> dict[str, Any]:
        return {"data": pipeline.data.model_dump(mode="json"), "seed": pipeline.seed}  # calibration samples

    def run(self, ctx: StageContext) -> dict[str, Any]:
        from deploy.engines import get_engine

        onnx_path = ctx.path(ctx.outputs["export"]["onnx"])
        # Every engine picks its own source: e.g. int8 from the Q/DQ ONNX when quantize ran.
        sources = {precision: ctx.path(ctx.outputs["export"][key]) for precision, key in SOURCE_KEYS.items()
                   if ctx.outputs["export"].get(key)}
        calibration = calibration_samples(ctx.data.x_train, CALIBRATION_SAMPLES, ctx.pipeline.seed)
        engines = []
        for target in ctx.config.targets:
            backend, precision = parse_target(target)
            out_dir = ctx.stage_dir / f"student.{backend}.{precision}"
            built = get_engine(backend).build(onnx_path, out_dir, precision, sources=sources,
                                              calibration=calibration)
            ctx.log(f"{backend} {precision}: {ctx.relative(built.artifact)} in {built.sidecar['build_seconds']:.2f}s")
            engines.append({"model": "student", "backend": backend, "precision": precision,
                            "dir": ctx.relative(out_dir), "artifact": ctx.relative(built.artifact)})
        return {"engines": engines}
