"""baseline: the same student trained alone (cross-entropy on the labels, no teacher).

Same architecture, seed and training options as `distill` (its section), so the report can show
what distillation bought: the benchmark scores both checkpoints on the same images (the test split
when there is one) and the report tests their difference image by image. With
`stages.export.recommend_from: [distill, baseline]` its checkpoint is exported, built and benchmarked
too, and recommended where it is the more accurate student. The transfer set has no labels, so the
student alone cannot learn from it.
"""

from __future__ import annotations

from typing import Any

from compress.config import KEY_DUMP, PipelineConfig, Strict
from compress.stages.contract import Stage, StageContext
from compress.stages.distill import train_student
from compress.stages.teacher import student_weights_key

KD_ONLY_FIELDS = {"temperature", "alpha", "losses", "teacher_cache"}


class BaselineConfig(Strict):
    """No options of its own: the budget is the distill stage's, which is the point of the comparison."""


def training_options(pipeline: PipelineConfig):
    distill = pipeline.stages["distill"]
    return distill, {k: v for k, v in distill.model_dump(**KEY_DUMP).items() if k not in KD_ONLY_FIELDS}


class BaselineStage(Stage):
    name = "baseline"
    Config = BaselineConfig
    optional = True
    reads = ("prune",)  # with stages.prune the student alone starts from the pruned teacher too
    distributed = True  # every torchrun rank trains; rank 0 writes

    def key_material(self, pipeline: PipelineConfig) -> dict[str, Any]:
        return {"student": pipeline.student.model_dump(mode="json"), **student_weights_key(pipeline),
                "data": pipeline.data.model_dump(mode="json"),
                "seed": pipeline.seed, "train": training_options(pipeline)[1]}

    def threads(self, pipeline: PipelineConfig) -> tuple[str, int] | None:
        """Distill's, as every other training option."""
        count = pipeline.stages["distill"].threads
        return ("stages.distill.threads", count) if count else None

    def run(self, ctx: StageContext) -> dict[str, Any]:
        cfg, _ = training_options(ctx.pipeline)
        ctx.log(f"student alone: {len(ctx.data.train)} labelled inputs, {cfg.epochs} epochs, seed {ctx.pipeline.seed}")
        return train_student(ctx, cfg, ctx.data.train)
