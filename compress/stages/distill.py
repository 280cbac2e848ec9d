"""distill: train the student from the teacher with a weighted family of KD losses.

Without `losses` the objective is Hinton's `alpha * KD(T) + (1 - alpha) * CE`. KD losses run on
every training input, the transfer set (`data.transfer`) included; cross-entropy only on labels.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from compress.config import PipelineConfig, TrainConfig
from compress.core.errors import ConfigError, UsageError
from compress.data.splits import Split, join
from compress.data.transforms import batch_mixer
from compress.distill.objective import (LossSpec, Objective, check_feature_paths, check_loss_specs,
                                       check_transformer_losses, default_losses)
from compress.distill.train import NO_LABEL, accuracy, fit, is_main_process
from compress.models import build_model, load_model, model_outline, save_checkpoint
from compress.models.text_models import init_every_other
from compress.stages.contract import Stage, StageContext
from compress.tasks.registry import task_for
from compress.stages.teacher import TeacherStage, student_weights_key, weights_path


class DistillConfig(TrainConfig):
    epochs: int = Field(20, ge=1)
    temperature: float = Field(4.0, gt=0, description="default temperature of the KD losses")
    alpha: float = Field(0.9, ge=0, le=1, description="without `losses`: weight of KD; 1 - alpha weighs CE")
    losses: list[LossSpec] | None = Field(None, description="weighted loss terms; default: Hinton KD + CE by alpha")
    teacher_cache: bool = Field(True, description="compute teacher outputs once when the inputs do not change")

    def loss_specs(self) -> list[LossSpec]:
        return self.losses if self.losses is not None else default_losses(self.temperature, self.alpha)

    def check(self, pipeline: PipelineConfig) -> tuple[str, str] | None:
        if self.losses is not None and "alpha" in self.model_fields_set:
            return "alpha", "alpha weighs the default KD + CE; with `losses` give each loss a weight instead"
        outline = role_outline(pipeline)
        return (check_loss_specs(self.loss_specs()) or check_feature_paths(self.loss_specs(), outline)
                or check_transformer_losses(self.loss_specs(), outline))


def role_outline(pipeline: PipelineConfig):
    """role -> the role's model built on the meta device at the task's placeholder geometry (or None)."""
    task = task_for(pipeline)

    def outline(role: str):
        role_cfg = getattr(pipeline, role)
        return model_outline(task.outline_spec(role_cfg.model, role_cfg.kwargs))

    return outline


def training_inputs(data) -> Split:
    """Labelled train split followed by the transfer set (label NO_LABEL)."""
    return join(data.train, data.transfer)


def train_student(ctx: StageContext, cfg: TrainConfig, train: Split, objective=None,
                  extra_modules=None, teacher=None) -> dict[str, Any]:
    """Build the student with the pipeline's seed, fit it, save it; outputs shared by distill and baseline."""
    import torch

    data = ctx.data
    torch.manual_seed(ctx.pipeline.seed)
    spec = ctx.task.model_spec(ctx.pipeline.student, data)
    if ctx.has("prune"):  # the student is the pruned teacher: its shapes and weights
        student, spec = load_model(ctx.path(ctx.outputs["prune"]["checkpoint"]))
        ctx.log(f"student starts from the pruned teacher ({ctx.outputs['prune']['checkpoint']})")
    elif weights_path(ctx.pipeline, "student") is not None:  # student.checkpoint, or an hf: folder's weights
        ctx.log(f"student starts from {weights_path(ctx.pipeline, 'student')}")
        student, _ = TeacherStage.load_checkpoint(ctx.pipeline, spec, ctx.log, role="student")
    else:
        student = build_model(spec)
    if teacher is not None and ctx.pipeline.student.init_from_teacher == "every_other":
        try:
            copied = init_every_other(student, teacher)
        except UsageError as error:  # nothing is trained or written yet
            raise ConfigError(ctx.pipeline.source_file, "student.init_from_teacher", str(error)) from None
        ctx.log(f"student starts from the teacher's embeddings and layers {copied} (init_from_teacher: every_other)")
    if objective is not None:
        objective = objective(student)
        extra_modules = objective.modules
    result = fit(student, train, data.val, cfg, ctx.stage_dir, ctx.pipeline.seed, loss_fn=objective,
                 log=ctx.log, extra_modules=extra_modules, distributed=True,
                 mixer=batch_mixer(ctx.pipeline.data.augment, data.num_classes))
    if objective is not None:
        objective.close()
    val_top1 = accuracy(student, data.val)
    path = ctx.stage_dir / "student.pt"
    if is_main_process():
        save_checkpoint(path, student, spec)
    # The epoch was chosen on val; a held-out test split (data.test_fraction / test_path) says what it is worth.
    split, scored = data.scored_split()
    test_top1 = accuracy(student, scored) if split == "test" else None
    ctx.log(f"student val top-1 {val_top1:.4f} (best epoch {result.best_epoch})"
            + (f", test top-1 {test_top1:.4f}" if test_top1 is not None else ""))
    return {"checkpoint": ctx.relative(path), "val_top1": val_top1, "best_epoch": result.best_epoch,
            "metrics": ctx.relative(ctx.stage_dir / "metrics.jsonl"),
            **({"test_top1": test_top1} if test_top1 is not None else {})}


class DistillStage(Stage):
    name = "distill"
    Config = DistillConfig
    reads = ("teacher", "prune")
    distributed = True  # every torchrun rank trains; rank 0 writes

    def key_material(self, pipeline: PipelineConfig) -> dict[str, Any]:
        return {"student": pipeline.student.model_dump(mode="json"), **student_weights_key(pipeline),
                "data": pipeline.data.model_dump(mode="json"),
                "seed": pipeline.seed}

    def run(self, ctx: StageContext) -> dict[str, Any]:
        cfg: DistillConfig = ctx.config
        teacher, _ = load_model(ctx.path(ctx.outputs["teacher"]["checkpoint"]))
        train = training_inputs(ctx.data)
        unlabeled = int((train.labels == NO_LABEL).sum())
        if unlabeled:
            ctx.log(f"transfer set: {unlabeled} inputs without labels (KD only), {len(train) - unlabeled} with labels")
        specs = cfg.loss_specs()
        ctx.log("objective: " + " + ".join(f"{s.weight:g}*{s.name}" for s in specs))

        def objective(student):
            return Objective(specs, student, teacher, train, cfg, cfg.temperature, use_cache=cfg.teacher_cache,
                             file=ctx.pipeline.source_file, log=ctx.log, cache_dir=ctx.stage_dir / "teacher_cache")

        return train_student(ctx, cfg, train, objective=objective, teacher=teacher)
