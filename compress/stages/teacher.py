"""teacher: load the user's checkpoint, or train the teacher when `teacher.train` is given."""

from __future__ import annotations

from typing import Any

import torch

from compress.config import PipelineConfig
from compress.distill.train import accuracy, fit
from compress.core.fileio import sha256_file
from compress.models import ModelSpec, build_model, load_model, save_checkpoint
from compress.stages.contract import Stage, StageContext


def model_spec(role_cfg, data) -> ModelSpec:
    channels, height, _ = data.input_shape
    return ModelSpec(role_cfg.model, channels, data.num_classes, height, dict(role_cfg.kwargs))


class TeacherStage(Stage):
    name = "teacher"

    def key_material(self, pipeline: PipelineConfig) -> dict[str, Any]:
        teacher = pipeline.teacher
        return {
            "teacher": teacher.model_dump(mode="json", exclude={"checkpoint"}),
            "checkpoint_sha256": sha256_file(teacher.checkpoint) if teacher.checkpoint else None,
            "data": pipeline.data.model_dump(mode="json"),
            "seed": pipeline.seed,
        }

    def run(self, ctx: StageContext) -> dict[str, Any]:
        cfg, data = ctx.pipeline.teacher, ctx.data
        spec = model_spec(cfg, data)
        if cfg.checkpoint is not None:
            ctx.log(f"loading {cfg.checkpoint}")
            model, _ = load_model(cfg.checkpoint, spec)
            best_epoch = None
        else:
            torch.manual_seed(ctx.pipeline.seed)
            model = build_model(spec)
            ctx.log(f"training {cfg.model} for {cfg.train.epochs} epochs")
            result = fit(model, data.x_train, data.y_train, data.x_val, data.y_val, cfg.train,
                         ctx.stage_dir, ctx.pipeline.seed, log=ctx.log)
            best_epoch = result.best_epoch
        val_top1 = accuracy(model, data.x_val, data.y_val)
        path = ctx.stage_dir / "teacher.pt"
        save_checkpoint(path, model, spec)
        ctx.log(f"teacher val top-1 {val_top1:.4f}")
        return {"checkpoint": ctx.relative(path), "val_top1": val_top1, "best_epoch": best_epoch}
