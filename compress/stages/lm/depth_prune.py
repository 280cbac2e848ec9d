"""The causal LM's prune stage: depth pruning of the teacher (Minitron, Muralidharan et al. 2024; ShortGPT,
Men et al. 2024), the start of both students.

Each decoder layer's importance is measured on calibration blocks of the training split, and the least
important layers are dropped until `layers` remain:
- `perplexity` (Minitron's depth importance): the language-modelling loss with that one layer removed; the
  layer whose removal costs least goes first.
- `block_influence` (ShortGPT): 1 - cosine(layer input, layer output) per token, averaged; a layer that
  barely turns its input is least important. One forward pass instead of one per layer.
The pruned model then trains alone (baseline) and with KD (distill): Minitron's "prune, then distil".
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from compress.config import PipelineConfig, Strict
from compress.core.errors import ConfigError
from compress.stages.contract import Stage, StageContext


class LMPruneConfig(Strict):
    layers: int = Field(ge=1, description="decoder layers the student keeps")
    importance: Literal["perplexity", "block_influence"] = "perplexity"
    calibration_blocks: int = Field(16, ge=1, description="training blocks the importance is measured on")
    # An absent `student` section becomes the teacher's model: the shared prune stage's complete_pipeline does
    # that for every task before the task is known (compress.config.parse_config).


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

        cfg: LMPruneConfig = ctx.config
        teacher = load_lm(ctx.path(ctx.outputs["teacher"]["model"])).eval()
        total = count_layers(teacher)
        if cfg.layers >= total:
            raise ConfigError(ctx.pipeline.source_file, "stages.prune.layers",
                              f"{cfg.layers} layers is not fewer than the teacher's {total}")
        batch = calibration_batch(corpus_blocks(ctx, "train"), cfg.calibration_blocks)
        scores = (perplexity_importance if cfg.importance == "perplexity" else block_influence)(teacher, batch)
        ranked = sorted(range(total), key=lambda i: scores[i], reverse=True)
        keep = sorted(ranked[:cfg.layers])
        student = keep_layers(teacher, keep)
        ctx.log(f"{cfg.importance} importance per layer: "
                + ", ".join(f"{i}: {s:.4f}" for i, s in enumerate(scores)) + f"; keeping layers {keep}")
        save_lm(student, ctx.path(ctx.outputs["teacher"]["tokenizer"]), ctx.stage_dir / "model")
        loss = loss_without(student, batch, None)
        return {"model": ctx.relative(ctx.stage_dir / "model"), "kept_layers": keep, "importance": scores,
                "method": cfg.importance, "calibration_loss": round(loss, 4),
                "params": sum(p.numel() for p in student.parameters()),
                "teacher_params": sum(p.numel() for p in teacher.parameters())}
