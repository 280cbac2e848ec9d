"""prune (optional): the student is the teacher, structurally pruned to a MACs or parameter budget.

torch-pruning's DepGraph removes whole channels (conv filters, linear units) and every layer that
shares them, in `rounds` steps that each take an equal share of the way to the budget; the teacher
distils into the pruned copy for `epochs_per_round` between steps (Hinton KD). The last step is
followed by the `distill` stage itself, which starts from this stage's checkpoint, as `baseline`
does (the same pruned weights trained without the teacher). The checkpoint stores the kept shapes
in its spec, so every later stage rebuilds it with `weights_only=True` loading.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, field_validator

from compress.config import PipelineConfig, TrainConfig
from compress.core.errors import ConfigError, UsageError
from compress.data.splits import join
from compress.distill.objective import Objective, default_losses
from compress.distill.train import accuracy, fit
from compress.models import count_params, load_model, model_outline, save_checkpoint
from compress.models.pruned_shapes import structure_of
from compress.models.pruning import (Budget, NotPrunable, accumulate_taylor_gradients, classifier_heads,
                                     head_widths, hidden_width_inputs, layer_widths, macs, prune_to)
from compress.tasks.registry import task_for
from compress.stages.contract import Stage, StageContext

MAX_ROUNDS = 50


class PruneConfig(TrainConfig):
    target_macs: float | None = Field(None, description="share of the teacher's MACs the student keeps, in (0, 1)")
    target_params: float | None = Field(None, description="share of the teacher's parameters the student keeps")
    method: Literal["magnitude", "bn_scale", "taylor"] = Field(
        "taylor", description="channel importance: weight magnitude, batch-norm scale, or first-order Taylor")
    ignore: list[str] = Field(default_factory=list, description="teacher modules kept whole (the head always is)")
    rounds: int = Field(1, ge=1, le=MAX_ROUNDS, description="pruning steps, with KD fine-tuning between them")
    epochs_per_round: int = Field(1, ge=1, description="KD epochs between two rounds")
    taylor_batches: int = Field(8, ge=1, description="training batches whose gradients rank channels (taylor)")
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.9, ge=0, le=1, description="weight of KD between rounds; 1 - alpha weighs CE")

    @field_validator("target_macs", "target_params")
    @classmethod
    def _fraction(cls, value: float | None) -> float | None:
        if value is not None and not 0 < value < 1:
            raise ValueError(f"{value} is not a fraction in (0, 1) of the teacher's (0.25 keeps a quarter)")
        return value

    @staticmethod
    def complete_pipeline(raw: dict[str, Any]) -> dict[str, Any]:
        """With stages.prune the student is the pruned teacher: an absent `student` section is the teacher's model."""
        teacher = raw.get("teacher")
        if "student" in raw or not isinstance(teacher, dict) or "model" not in teacher:
            return raw
        return {**raw, "student": {"model": teacher["model"], "kwargs": teacher.get("kwargs") or {}}}

    @property
    def budget(self) -> Budget:
        return Budget("macs", self.target_macs) if self.target_macs is not None else Budget("params", self.target_params)

    @property
    def budget_field(self) -> str:
        return "target_macs" if self.target_macs is not None else "target_params"

    def check(self, pipeline: PipelineConfig) -> tuple[str, str] | None:
        student_problem(pipeline)
        if "epochs" in self.model_fields_set:
            return "epochs", "set epochs_per_round (the KD epochs between two rounds); distill trains the rest"
        if (self.target_macs is None) == (self.target_params is None):
            return "target_macs", ("give target_macs or target_params, not both" if self.target_macs is not None
                                   else "give target_macs (or target_params): the teacher's share to keep, e.g. 0.25")
        outline = model_outline(task_for(pipeline).outline_spec(pipeline.teacher.model, pipeline.teacher.kwargs))
        return self.modules_problem(outline, pipeline.teacher.model) if outline is not None else None

    def modules_problem(self, teacher: torch.nn.Module, model_name: str) -> tuple[str, str] | None:
        """(field, message) for an `ignore` name the teacher lacks, or a criterion it cannot use."""
        names = [name for name, _ in teacher.named_modules() if name]
        for index, name in enumerate(self.ignore):
            if name not in names:
                return f"ignore[{index}]", f"no module '{name}' in teacher '{model_name}'; its modules: {', '.join(names)}"
        if self.method == "bn_scale" and not any(isinstance(m, torch.nn.modules.batchnorm._NormBase)
                                                 for m in teacher.modules()):
            return "method", f"bn_scale ranks channels by batch-norm scales; teacher '{model_name}' has no batch norm"
        return None


def student_problem(pipeline: PipelineConfig) -> None:
    """A student section that names anything but the teacher contradicts stages.prune: one line naming its field."""
    student, teacher, file = pipeline.student, pipeline.teacher, pipeline.source_file
    why = "with stages.prune the student is the pruned teacher: remove the student section"
    if student.model != teacher.model:
        raise ConfigError(file, "student.model", f"is '{student.model}', not the teacher's '{teacher.model}'; {why}")
    if student.kwargs != teacher.kwargs:
        raise ConfigError(file, "student.kwargs", f"differ from the teacher's; {why}")
    for name in ("checkpoint", "init_from_teacher"):
        if getattr(student, name) is not None:
            raise ConfigError(file, f"student.{name}", f"the pruned teacher's weights are the start; {why}")


def taylor_batches(split, cfg: PruneConfig, seed: int):
    """The first `taylor_batches` shuffled training batches (labelled), on the CPU where pruning runs."""
    order = np.random.default_rng(seed).permutation(len(split))
    for count, (x, labels, _) in enumerate(split.train_loader(order.tolist(), cfg.batch_size, seed, 0,
                                                              torch.device("cpu"))):
        if count == cfg.taylor_batches:
            break
        yield x, labels


def cost(model: torch.nn.Module, example) -> dict[str, int]:
    return {"macs": macs(model, example), "params": count_params(model)}


class PruneStage(Stage):
    name = "prune"
    Config = PruneConfig
    optional = True
    reads = ("teacher",)

    def key_material(self, pipeline: PipelineConfig) -> dict[str, Any]:
        return {"data": pipeline.data.model_dump(mode="json"), "seed": pipeline.seed}

    def run(self, ctx: StageContext) -> dict[str, Any]:
        cfg: PruneConfig = ctx.config
        data, file = ctx.data, ctx.pipeline.source_file
        teacher, spec = load_model(ctx.path(ctx.outputs["teacher"]["checkpoint"]))
        problem = cfg.modules_problem(teacher, spec.name)  # validate checked the config's outline; this, the model
        if problem:
            raise ConfigError(file, f"stages.prune.{problem[0]}", problem[1])
        torch.manual_seed(ctx.pipeline.seed)
        # Inputs with a sequence axis are traced at their longest: the MACs budget holds for the longest input.
        example = ctx.task.example_inputs(data, 2, ctx.task.max_sequence_length())
        keep = [*cfg.ignore, *classifier_heads(teacher, example), *hidden_width_inputs(teacher)]
        before = cost(teacher, example)
        ctx.log(f"pruning {spec.name} to {cfg.budget.fraction:.0%} of its {cfg.budget.metric} ({before['macs']:,} MACs, "
                f"{before['params']:,} params) in {cfg.rounds} round(s), {cfg.method} importance; kept whole: "
                f"{', '.join(keep)}")
        student, rounds = copy.deepcopy(teacher), []
        for step in range(1, cfg.rounds + 1):
            student, entry = self._round(ctx, cfg, teacher, student, example, keep, before, step)
            rounds.append(entry)
        after = cost(student, example)
        path = ctx.stage_dir / "student.pruned.pt"
        save_checkpoint(path, student, dataclasses.replace(spec, pruned=structure_of(teacher, student)))
        return {"checkpoint": ctx.relative(path), "method": cfg.method, "metric": cfg.budget.metric,
                "target": cfg.budget.fraction, "teacher": before, "student": after,
                "macs_ratio": after["macs"] / before["macs"], "params_ratio": after["params"] / before["params"],
                "layers": layer_widths(teacher, student), "heads": head_widths(teacher, student), "rounds": rounds, "kept_whole": keep,
                "teacher_val_top1": ctx.outputs["teacher"].get("val_top1"), "val_top1": rounds[-1]["val_top1_pruned"]}

    def _round(self, ctx: StageContext, cfg: PruneConfig, teacher, student, example, keep: list[str],
               before: dict[str, int], step: int) -> tuple[torch.nn.Module, dict[str, Any]]:
        """One pruning step to its share of the way, then (but after the last) KD from the unpruned teacher."""
        data, file = ctx.data, ctx.pipeline.source_file
        if cfg.method == "taylor":
            accumulate_taylor_gradients(student, taylor_batches(data.train, cfg, ctx.pipeline.seed + step))
            data.train.close()  # the loader (and its workers) of those few batches
        fraction = 1 - (1 - cfg.budget.fraction) * step / cfg.rounds
        try:
            student, ratio = prune_to(student, example, cfg.method, Budget(cfg.budget.metric, fraction),
                                      before[cfg.budget.metric], keep)
        except NotPrunable as error:
            raise ConfigError(file, "teacher.model", f"'{ctx.pipeline.teacher.model}': {error}; keep it whole with "
                                                     "stages.prune.ignore") from None
        except UsageError as error:
            raise ConfigError(file, f"stages.prune.{cfg.budget_field}", str(error)) from None
        entry = {"round": step, "target": fraction, "channel_ratio": ratio, **cost(student, example),
                 "val_top1_pruned": accuracy(student, data.val)}
        ctx.log(f"round {step}/{cfg.rounds}: {ratio:.1%} of each layer's channels removed, "
                f"{entry['macs'] / before['macs']:.1%} of the MACs, {entry['params'] / before['params']:.1%} of the "
                f"params; val top-1 {entry['val_top1_pruned']:.4f} before KD")
        if step < cfg.rounds:
            train = join(data.train, data.transfer)
            objective = Objective(default_losses(cfg.temperature, cfg.alpha), student, teacher, train, cfg,
                                  cfg.temperature, file=file, section="stages.prune", log=ctx.log,
                                  cache_dir=ctx.stage_dir / "teacher_cache")
            fit(student, train, data.val, cfg.model_copy(update={"epochs": cfg.epochs_per_round}),
                ctx.stage_dir / f"round{step}", ctx.pipeline.seed, loss_fn=objective, log=ctx.log)
            objective.close()
            entry["val_top1_tuned"] = accuracy(student, data.val)
            ctx.log(f"round {step}/{cfg.rounds}: val top-1 {entry['val_top1_tuned']:.4f} after {cfg.epochs_per_round} "
                    "KD epoch(s)")
        return student, entry
