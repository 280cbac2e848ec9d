"""distill: train the student from the teacher with a weighted family of KD losses.

Without `losses` the objective is Hinton's `alpha * KD(T) + (1 - alpha) * CE`. KD losses run on
every training input, the transfer set (`data.transfer`) included; cross-entropy only on labels.

`recipe: patient` is Beyer et al. 2022 ("Knowledge distillation: a good teacher is patient and
consistent"): random views of every input (data.augment's crops for image files, a padded random
crop for arrays), the teacher run on the very view the student sees (never a cache of unaugmented
outputs), and `patience` times the epochs under a cosine schedule; the baseline trains as long on
the same views, so the gap between them is KD's alone. The paper's aggressive MixUp and function
matching at T 1 lost to plain KD on small students here (benchmarks/README.md): MixUp/CutMix come
from data.augment, where the user asks for them, and are then seen by both models alike.
`search: {trials, budget}` tries loss families, temperatures, alphas and learning rates with Optuna
(compress.distill.search) and keeps the best trial's student by val top-1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from compress.config import ADDED_LATER, MAX_EPOCHS, PipelineConfig, TrainConfig
from compress.core.errors import ConfigError, UsageError
from compress.data.splits import Split, join
from compress.data.transforms import batch_mixer
from compress.distill.objective import (LossSpec, Objective, check_feature_paths, check_loss_specs,
                                       check_transformer_losses, default_losses)
from compress.distill.search import SearchConfig, SearchFailed, TrialResult, kd_space, run_search
from compress.distill.train import NO_LABEL, accuracy, fit, is_main_process
from compress.models import build_model, load_model, model_outline, save_checkpoint
from compress.models.text_models import init_every_other
from compress.reporting.collect import read_metrics
from compress.stages.contract import Stage, StageContext
from compress.tasks.registry import task_for
from compress.stages.teacher import TeacherStage, student_weights_key, weights_path


# The patient recipe (Beyer et al. 2022): consistent random views, a long cosine schedule.
PATIENCE = 3
# crop_padding: arrays (digits, npz) get random shifted crops; image files take data.augment's crops.
PATIENT_DEFAULTS = {"schedule": "cosine", "crop_padding": 1}


class DistillConfig(TrainConfig):
    epochs: int = Field(20, ge=1)
    temperature: float = Field(4.0, gt=0, description="default temperature of the KD losses")
    alpha: float = Field(0.9, ge=0, le=1, description="without `losses`: weight of KD; 1 - alpha weighs CE")
    losses: list[LossSpec] | None = Field(None, description="weighted loss terms; default: Hinton KD + CE by alpha")
    teacher_cache: bool = Field(True, description="compute teacher outputs once when the inputs do not change")
    recipe: Literal["default", "patient"] = Field(
        "default", json_schema_extra=ADDED_LATER,
        description="patient: random views seen by teacher and student alike, `patience` x the epochs, cosine "
                    "(Beyer et al. 2022); the baseline trains as long")
    patience: int = Field(PATIENCE, ge=1, json_schema_extra=ADDED_LATER,
                          description="patient recipe: train this many times the epochs")
    search: SearchConfig | None = Field(None, json_schema_extra=ADDED_LATER,
                                        description="try loss families, temperatures, alphas and learning rates "
                                                    "with Optuna within a time budget; keep the best by val")

    def loss_specs(self) -> list[LossSpec]:
        return self.losses if self.losses is not None else default_losses(self.temperature, self.alpha)

    def resolved(self) -> "DistillConfig":
        """The settings the student trains with: the patient recipe's where the user set none."""
        if self.recipe != "patient":
            return self
        update: dict[str, Any] = {"epochs": self.epochs * self.patience}
        for name, value in PATIENT_DEFAULTS.items():
            if name not in self.model_fields_set:
                update[name] = value
        return self.model_copy(update=update)


    def check(self, pipeline: PipelineConfig) -> tuple[str, str] | None:
        if self.losses is not None and "alpha" in self.model_fields_set:
            return "alpha", "alpha weighs the default KD + CE; with `losses` give each loss a weight instead"
        if self.recipe == "patient" and task_for(pipeline).random_views:
            return "recipe", f"{task_for(pipeline).random_views} (task {task_for(pipeline).name})"
        if self.recipe == "patient" and self.epochs * self.patience > MAX_EPOCHS:
            return "patience", f"epochs {self.epochs} x patience {self.patience} is over {MAX_EPOCHS:,} epochs"
        if self.search is not None:
            problem = check_search(self.search, pipeline)
            if problem:
                return problem
        outline = role_outline(pipeline)
        return (check_loss_specs(self.loss_specs()) or check_feature_paths(self.loss_specs(), outline)
                or check_transformer_losses(self.loss_specs(), outline))



def check_search(search: SearchConfig, pipeline: PipelineConfig) -> tuple[str, str] | None:
    """(field, message) for a loss family of the search that the objective could not build on these models."""
    outline = role_outline(pipeline)
    for i, name in enumerate(search.losses):
        specs = [LossSpec(name=name, weight=search.alpha[0]), LossSpec(name="ce", weight=1 - search.alpha[0])]
        problem = check_loss_specs(specs) or check_transformer_losses(specs, outline)
        if problem:
            return f"search.losses.{i}", problem[1]
    return None


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


def new_student(ctx: StageContext, teacher=None, log=None):
    """The student as every training of it starts: the pipeline's seed, then its weights' source."""
    import torch

    log = log or ctx.log
    torch.manual_seed(ctx.pipeline.seed)
    spec = ctx.task.model_spec(ctx.pipeline.student, ctx.data)
    if ctx.has("prune"):  # the student is the pruned teacher: its shapes and weights
        student, spec = load_model(ctx.path(ctx.outputs["prune"]["checkpoint"]))
        log(f"student starts from the pruned teacher ({ctx.outputs['prune']['checkpoint']})")
    elif weights_path(ctx.pipeline, "student") is not None:  # student.checkpoint, or an hf: folder's weights
        log(f"student starts from {weights_path(ctx.pipeline, 'student')}")
        student, _ = TeacherStage.load_checkpoint(ctx.pipeline, spec, log, role="student")
    else:
        student = build_model(spec)
    if teacher is not None and ctx.pipeline.student.init_from_teacher == "every_other":
        try:
            copied = init_every_other(student, teacher)
        except UsageError as error:  # nothing is trained or written yet
            raise ConfigError(ctx.pipeline.source_file, "student.init_from_teacher", str(error)) from None
        log(f"student starts from the teacher's embeddings and layers {copied} (init_from_teacher: every_other)")
    return student, spec


def train_student(ctx: StageContext, cfg: TrainConfig, train: Split, objective=None,
                  extra_modules=None, teacher=None, mixer=None) -> dict[str, Any]:
    """Build the student with the pipeline's seed, fit it, save it; outputs shared by distill and baseline."""
    student, spec = new_student(ctx, teacher)
    if objective is not None:
        objective = objective(student)
        extra_modules = objective.modules
    result = fit(student, train, ctx.data.val, cfg, ctx.stage_dir, ctx.pipeline.seed, loss_fn=objective,
                 log=ctx.log, extra_modules=extra_modules, distributed=True, mixer=mixer)
    if objective is not None:
        objective.close()
    return student_outputs(ctx, student, spec, result.best_epoch, ctx.stage_dir / "metrics.jsonl")


def student_outputs(ctx: StageContext, student, spec, best_epoch: int, metrics: Path) -> dict[str, Any]:
    """Save the trained student as the stage's student.pt; its val (and held-out test) top-1."""
    data = ctx.data
    val_top1 = accuracy(student, data.val)
    path = ctx.stage_dir / "student.pt"
    if is_main_process():
        save_checkpoint(path, student, spec)
    # The epoch was chosen on val; a held-out test split (data.test_fraction / test_path) says what it is worth.
    split, scored = data.scored_split()
    test_top1 = accuracy(student, scored) if split == "test" else None
    ctx.log(f"student val top-1 {val_top1:.4f} (best epoch {best_epoch})"
            + (f", test top-1 {test_top1:.4f}" if test_top1 is not None else ""))
    return {"checkpoint": ctx.relative(path), "val_top1": val_top1, "best_epoch": best_epoch,
            "metrics": ctx.relative(metrics), **({"test_top1": test_top1} if test_top1 is not None else {})}


def searched_student(ctx: StageContext, search: SearchConfig, train_one, suggest, epochs: int, teacher=None,
                     what: str = "search") -> dict[str, Any]:
    """Run the search, then make the chosen trial's best weights the stage's student; the search's record beside."""
    import torch

    try:
        record = run_search(search, suggest, train_one, ctx.stage_dir / "search", ctx.pipeline.seed, epochs, ctx.log,
                            what)
    except SearchFailed as error:
        raise ConfigError(ctx.pipeline.source_file, f"stages.{ctx.name}.search.budget", str(error)) from None
    record = broadcast(record)  # rank 0 held the study; every rank loads the chosen weights
    student, spec = new_student(ctx, teacher, log=lambda _: None)
    folder = ctx.stage_dir / "search" / record["chosen_folder"]
    student.load_state_dict(torch.load(folder / "best.pt", map_location="cpu", weights_only=True))
    student.eval()
    best_epoch = best_epoch_of(folder / "metrics.jsonl")
    ctx.log(f"{what}: chose trial {record['chosen']['number']} of {len(record['trials'])} "
            f"({record['seconds']:.0f}s of a {record['budget_seconds']:.0f}s budget)")
    return {**student_outputs(ctx, student, spec, best_epoch, folder / "metrics.jsonl"), "search": record}


def broadcast(value):
    """Rank 0's value on every rank (itself without torchrun)."""
    import torch.distributed as dist

    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def best_epoch_of(metrics: Path) -> int:
    """The first epoch with the best val top-1 in a metrics.jsonl (fit keeps that epoch's weights)."""
    return max(read_metrics(metrics), key=lambda r: (r["val_top1"], -r["epoch"]))["epoch"]


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
        cfg: DistillConfig = ctx.config.resolved()
        teacher, _ = load_model(ctx.path(ctx.outputs["teacher"]["checkpoint"]))
        train = training_inputs(ctx.data)
        unlabeled = int((train.labels == NO_LABEL).sum())
        if unlabeled:
            ctx.log(f"transfer set: {unlabeled} inputs without labels (KD only), {len(train) - unlabeled} with labels")
        mixer = batch_mixer(ctx.pipeline.data.augment, ctx.data.num_classes)
        if cfg.recipe == "patient":
            ctx.log(f"patient recipe: {cfg.epochs} epochs ({ctx.config.epochs} x patience {cfg.patience}), "
                    f"{cfg.schedule} schedule, random views seen by teacher and student alike")
        outputs = {"recipe": cfg.recipe, "epochs": cfg.epochs}
        if cfg.search is not None:
            return {**outputs, **self.search(ctx, cfg, teacher, train, mixer)}
        specs = cfg.loss_specs()
        ctx.log("objective: " + " + ".join(f"{s.weight:g}*{s.name}" for s in specs))

        def objective(student):
            return Objective(specs, student, teacher, train, cfg, cfg.temperature, use_cache=cfg.teacher_cache,
                             file=ctx.pipeline.source_file, log=ctx.log, cache_dir=ctx.stage_dir / "teacher_cache",
                             mixes=mixer is not None)

        return {**outputs, **train_student(ctx, cfg, train, objective=objective, teacher=teacher, mixer=mixer)}

    @staticmethod
    def search(ctx: StageContext, cfg: DistillConfig, teacher, train: Split, mixer) -> dict[str, Any]:
        """Each trial: `alpha * LOSS(T) + (1 - alpha) * ce` at its learning rate, from the same initial student."""
        def train_one(params: dict[str, Any], work: Path, on_epoch) -> TrialResult:
            trial_cfg = cfg.model_copy(update={"lr": params["lr"], "temperature": params["temperature"]})
            specs = [LossSpec(name=params["loss"], weight=params["alpha"]),
                     LossSpec(name="ce", weight=1 - params["alpha"])]
            student, _ = new_student(ctx, teacher, log=lambda _: None)
            objective = Objective(specs, student, teacher, train, trial_cfg, params["temperature"],
                                  use_cache=cfg.teacher_cache, file=ctx.pipeline.source_file, log=lambda _: None,
                                  cache_dir=ctx.stage_dir / "teacher_cache", mixes=mixer is not None)
            try:
                result = fit(student, train, ctx.data.val, trial_cfg, work, ctx.pipeline.seed, loss_fn=objective,
                             log=lambda _: None, extra_modules=objective.modules, distributed=True, mixer=mixer,
                             on_epoch=on_epoch)
            finally:
                objective.close()
            return TrialResult(result.best_accuracy, result.epochs_trained)

        ctx.log(f"search: up to {cfg.search.trials} trials in {cfg.search.budget_seconds:.0f}s over loss "
                f"({', '.join(cfg.search.losses)}), temperature, alpha, lr; successive halving stops weak trials")
        return searched_student(ctx, cfg.search, train_one, kd_space(cfg.search, cfg.lr), cfg.epochs, teacher)
