"""baseline: the same student trained alone (cross-entropy on the labels, no teacher).

Same architecture, seed and training options as `distill` (its section), so the report can show
what distillation bought: the benchmark scores both checkpoints on the same images (the test split
when there is one) and the report tests their difference image by image. With
`stages.export.recommend_from: [distill, baseline]` its checkpoint is exported, built and benchmarked
too, and recommended where it is the more accurate student. The transfer set has no labels, so the
student alone cannot learn from it.

With the patient recipe it trains as many epochs as the KD student (`patience` x epochs). When the
distill stage searches (`stages.distill.search`), the student alone gets a search of its own with
the same trials and budget, over its learning rate and label smoothing: a best-of-N KD student
against one baseline run would flatter KD. `search: false` turns that off, and the report says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from compress.config import ADDED_LATER, KEY_DUMP, PipelineConfig, Strict
from compress.data.transforms import batch_mixer
from compress.distill.search import TrialResult, alone_space
from compress.distill.train import fit
from compress.stages.contract import Stage, StageContext
from compress.stages.distill import new_student, searched_student, train_student
from compress.stages.teacher import student_weights_key

KD_ONLY_FIELDS = {"temperature", "alpha", "losses", "teacher_cache", "recipe", "patience", "search"}


class BaselineConfig(Strict):
    """The budget is the distill stage's, which is the point of the comparison."""

    search: bool | None = Field(None, json_schema_extra=ADDED_LATER,
                                description="search lr and label smoothing with the distill search's trials "
                                            "and budget (default: whenever stages.distill.search is set)")


def training_options(pipeline: PipelineConfig):
    """Distill's training settings as the student trains them (the patient recipe's epochs), without KD's."""
    distill = pipeline.stages["distill"].resolved()
    return distill, {k: v for k, v in distill.model_dump(**KEY_DUMP).items() if k not in KD_ONLY_FIELDS}


def searches(pipeline: PipelineConfig) -> bool:
    """Whether the student alone gets a search: the distill stage searches and baseline.search is not false."""
    own = pipeline.stages["baseline"].search if "baseline" in pipeline.stages else None
    return pipeline.stages["distill"].search is not None and own is not False


class BaselineStage(Stage):
    name = "baseline"
    Config = BaselineConfig
    optional = True
    reads = ("prune",)  # with stages.prune the student alone starts from the pruned teacher too
    distributed = True  # every torchrun rank trains; rank 0 writes

    def key_material(self, pipeline: PipelineConfig) -> dict[str, Any]:
        return {"student": pipeline.student.model_dump(mode="json"), **student_weights_key(pipeline),
                "data": pipeline.data.model_dump(mode="json"),
                "seed": pipeline.seed, "train": training_options(pipeline)[1],
                **({"search": pipeline.stages["distill"].search.model_dump(**KEY_DUMP)} if searches(pipeline) else {})}

    def threads(self, pipeline: PipelineConfig) -> tuple[str, int] | None:
        """Distill's, as every other training option."""
        count = pipeline.stages["distill"].threads
        return ("stages.distill.threads", count) if count else None

    def run(self, ctx: StageContext) -> dict[str, Any]:
        cfg, _ = training_options(ctx.pipeline)
        ctx.log(f"student alone: {len(ctx.data.train)} labelled inputs, {cfg.epochs} epochs, seed {ctx.pipeline.seed}")
        # data.augment's MixUp/CutMix only: the patient recipe's mixing is how KD shows the teacher's views
        mixer = batch_mixer(ctx.pipeline.data.augment, ctx.data.num_classes)
        if not searches(ctx.pipeline):
            return train_student(ctx, cfg, ctx.data.train, mixer=mixer)
        search = cfg.search

        def train_one(params: dict[str, Any], work: Path, on_epoch) -> TrialResult:
            trial_cfg = cfg.model_copy(update=params)
            student, _ = new_student(ctx, log=lambda _: None)
            result = fit(student, ctx.data.train, ctx.data.val, trial_cfg, work, ctx.pipeline.seed,
                         log=lambda _: None, distributed=True, mixer=mixer, on_epoch=on_epoch)
            return TrialResult(result.best_accuracy, result.epochs_trained)

        ctx.log(f"search (the same budget as distill's): up to {search.trials} trials in "
                f"{search.budget_seconds:.0f}s over lr and label smoothing")
        return searched_student(ctx, search, train_one, alone_space(search, cfg.lr), cfg.epochs,
                                what="baseline search")
