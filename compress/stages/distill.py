"""distill: train the student with Hinton KD from the teacher plus cross-entropy on labels."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field

from compress.config import PipelineConfig, TrainConfig
from compress.distill.losses import HintonKD
from compress.distill.train import accuracy, fit, predict_logits
from compress.models import build_model, load_model, save_checkpoint
from compress.stages import register_stage
from compress.stages.base import Stage, StageContext
from compress.stages.teacher import model_spec


class DistillConfig(TrainConfig):
    epochs: int = Field(20, ge=1)
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.9, ge=0, le=1, description="weight of the KD term; 1 - alpha weighs cross-entropy")


@register_stage
class DistillStage(Stage):
    name = "distill"
    Config = DistillConfig
    reads = ("teacher",)

    def key_material(self, pipeline: PipelineConfig) -> dict[str, Any]:
        return {"student": pipeline.student.model_dump(mode="json"), "data": pipeline.data.model_dump(mode="json"),
                "seed": pipeline.seed}

    def run(self, ctx: StageContext) -> dict[str, Any]:
        cfg: DistillConfig = ctx.config
        data = ctx.data
        teacher, _ = load_model(ctx.path(ctx.outputs["teacher"]["checkpoint"]))
        # No augmentation: the inputs of every epoch are the same, so the teacher runs once.
        ctx.log("teacher logits computed once and reused (inputs do not change between epochs)")
        teacher_logits = predict_logits(teacher, data.x_train)
        kd = HintonKD(cfg.temperature)

        def loss_fn(student_logits: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor):
            kd_loss = kd(student_logits, teacher_logits[indices])
            ce_loss = F.cross_entropy(student_logits, labels)
            total = cfg.alpha * kd_loss + (1 - cfg.alpha) * ce_loss
            return total, {"kd": float(kd_loss.detach()), "ce": float(ce_loss.detach())}

        torch.manual_seed(ctx.pipeline.seed)
        spec = model_spec(ctx.pipeline.student, data)
        student = build_model(spec)
        result = fit(student, data.x_train, data.y_train, data.x_val, data.y_val, cfg, ctx.stage_dir,
                     ctx.pipeline.seed, loss_fn=loss_fn, log=ctx.log)
        val_top1 = accuracy(student, data.x_val, data.y_val)
        path = ctx.stage_dir / "student.pt"
        save_checkpoint(path, student, spec)
        ctx.log(f"student val top-1 {val_top1:.4f} (best epoch {result.best_epoch})")
        return {"checkpoint": ctx.relative(path), "val_top1": val_top1, "best_epoch": result.best_epoch,
                "metrics": ctx.relative(ctx.stage_dir / "metrics.jsonl")}
