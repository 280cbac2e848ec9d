"""The causal LM's prune stage: depth and width pruning of the teacher (Minitron, Muralidharan et al. 2024;
ShortGPT, Men et al. 2024), the start of both students.

Each decoder layer's importance is measured on calibration blocks of the training split, and the least
important layers are dropped until `layers` remain:
- `perplexity` (Minitron's depth importance): the language-modelling loss with that one layer removed; the
  layer whose removal costs least goes first.
- `block_influence` (ShortGPT): 1 - cosine(layer input, layer output) per token, averaged; a layer that
  barely turns its input is least important. One forward pass instead of one per layer.
Width (`heads`, `intermediate`: compress.tasks.causal_lm.width) is pruned after depth, on the layers kept, by
Minitron's activation importance. The pruned model then trains alone (baseline) and with KD (distill):
Minitron's "prune, then distil".
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from compress.config import PipelineConfig, Strict
from compress.core.errors import ConfigError
from compress.stages.contract import Stage, StageContext


class LMPruneConfig(Strict):
    layers: int | None = Field(None, ge=1, description="decoder layers the student keeps (depth)")
    heads: int | None = Field(None, ge=1, description="query heads each layer keeps (width; whole KV groups)")
    intermediate: int | None = Field(None, ge=1, description="MLP channels each layer keeps (width)")
    hidden: int | None = Field(None, ge=1, description="hidden (embedding) channels the model keeps (width)")
    importance: Literal["perplexity", "block_influence"] = Field(
        "perplexity", description="depth: how a layer's importance is measured")
    calibration_blocks: int = Field(16, ge=1, description="training blocks the importance is measured on")

    @model_validator(mode="after")
    def _something_to_prune(self) -> "LMPruneConfig":
        if self.layers is None and self.heads is None and self.intermediate is None and self.hidden is None:
            raise ValueError("give layers (depth), heads, intermediate or hidden (width), or several")
        return self

    def check(self, pipeline: PipelineConfig) -> tuple[str, str] | None:
        """Widths and depth the teacher cannot reach, found before it trains (its shapes on the meta device)."""
        from compress.tasks.causal_lm.models import build_lm, check_lm_name, check_sizes, count_layers
        from compress.tasks.causal_lm.width import check_width

        teacher = pipeline.teacher
        if not teacher.model.startswith("hf-config:") or check_lm_name(teacher.model) or \
                check_sizes(teacher.model, teacher.kwargs):
            return None  # an hf: folder is checked when the stage reads it; a bad config is refused first
        with torch.device("meta"):
            model = build_lm(teacher.model, teacher.kwargs, 256, 64)
        if self.layers is not None and self.layers >= count_layers(model):
            return "layers", f"{self.layers} layers is not fewer than the teacher's {count_layers(model)}"
        return check_width(model, self.heads, self.intermediate, self.hidden)
    # An absent `student` section becomes the teacher's model: the shared prune stage's complete_pipeline does
    # that for every task before the task is known (compress.config.parse_config).


WIDTHS = ("hidden", "heads", "kv_heads", "intermediate")


def calibration_batch(blocks, count: int) -> torch.Tensor:
    step = max(1, len(blocks) // count)
    return torch.stack([blocks[i * step] for i in range(min(count, len(blocks)))])


def loss_without(model, batch: torch.Tensor, drop: int | None) -> float:
    from compress.tasks.causal_lm.models import count_layers, keep_layers

    kept = model if drop is None else keep_layers(model, [i for i in range(count_layers(model)) if i != drop])
    with torch.no_grad():
        logits = kept(input_ids=batch[:, :-1]).logits
        return float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten()))


def perplexity_importance(model, batch: torch.Tensor) -> list[float]:
    """Loss increase when each layer alone is removed (higher: more important)."""
    from compress.tasks.causal_lm.models import count_layers

    base = loss_without(model, batch, None)
    return [loss_without(model, batch, i) - base for i in range(count_layers(model))]


def block_influence(model, batch: torch.Tensor) -> list[float]:
    """1 - mean cosine between each layer's input and output hidden states (higher: more important)."""
    with torch.no_grad():
        hidden = model(input_ids=batch[:, :-1], output_hidden_states=True).hidden_states
    return [float(1 - torch.nn.functional.cosine_similarity(hidden[i], hidden[i + 1], dim=-1).mean())
            for i in range(len(hidden) - 1)]


class LMPruneStage(Stage):
    name = "prune"
    Config = LMPruneConfig
    optional = True
    reads = ("teacher",)

    def key_material(self, pipeline: PipelineConfig) -> dict[str, Any]:
        return {"seed": pipeline.seed}

    def run(self, ctx: StageContext) -> dict[str, Any]:
        from compress.stages.lm.model_stages import corpus_blocks
        from compress.tasks.causal_lm.models import count_layers, keep_layers, load_lm, save_lm
        from compress.tasks.causal_lm.width import check_width, prune_width, sizes, width_importance

        cfg: LMPruneConfig = ctx.config
        teacher = load_lm(ctx.path(ctx.outputs["teacher"]["model"])).eval()
        total = count_layers(teacher)
        if cfg.layers is not None and cfg.layers >= total:
            raise ConfigError(ctx.pipeline.source_file, "stages.prune.layers",
                              f"{cfg.layers} layers is not fewer than the teacher's {total}")
        problem = check_width(teacher, cfg.heads, cfg.intermediate, cfg.hidden)
        if problem:
            raise ConfigError(ctx.pipeline.source_file, f"stages.prune.{problem[0]}", problem[1])
        batch = calibration_batch(corpus_blocks(ctx, "train"), cfg.calibration_blocks)
        outputs: dict[str, Any] = {"kept_layers": list(range(total))}
        student = teacher
        if cfg.layers is not None:
            scores = (perplexity_importance if cfg.importance == "perplexity" else block_influence)(teacher, batch)
            ranked = sorted(range(total), key=lambda i: scores[i], reverse=True)
            keep = sorted(ranked[:cfg.layers])
            student = keep_layers(teacher, keep)
            ctx.log(f"{cfg.importance} importance per layer: "
                    + ", ".join(f"{i}: {s:.4f}" for i, s in enumerate(scores)) + f"; keeping layers {keep}")
            outputs.update(kept_layers=keep, importance=scores, method=cfg.importance)
        if (cfg.heads, cfg.intermediate, cfg.hidden) != (None, None, None):
            before = sizes(student)
            student = prune_width(student, width_importance(student, batch), cfg.heads, cfg.intermediate, cfg.hidden)
            after = sizes(student)
            ctx.log("width (activation importance): " + ", ".join(
                f"{key} {before[key]} -> {after[key]}" for key in WIDTHS if before[key] != after[key]))
            outputs["width"] = {"before": before, "after": after}
        save_lm(student, ctx.path(ctx.outputs["teacher"]["tokenizer"]), ctx.stage_dir / "model")
        loss = loss_without(student, batch, None)
        return {"model": ctx.relative(ctx.stage_dir / "model"), **outputs, "calibration_loss": round(loss, 4),
                "params": sum(p.numel() for p in student.parameters()),
                "teacher_params": sum(p.numel() for p in teacher.parameters())}
