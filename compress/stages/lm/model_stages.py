"""The causal LM's training stages: teacher (corpus, tokenizer, the teacher), baseline (the student alone)
and distill (the student from the teacher).

The teacher stage also prepares the corpus: the tokenizer (the teacher's own, the one data.corpus names, or a
byte-level BPE trained on the training documents) and the packed token files of every split. The students
read both from its outputs, so all three models see the same tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from compress.config import PipelineConfig, Strict
from compress.config.base import NOT_IN_KEY
from compress.core.errors import ConfigError
from compress.stages.contract import Stage, StageContext

LOSSES = ("forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl")


class LMTrainConfig(Strict):
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_fraction: float = Field(0.05, ge=0, lt=1)
    grad_clip: float = Field(1.0, gt=0)
    eval_blocks: int | None = Field(64, ge=1, description="validation blocks scored after each epoch (None: all)")
    threads: int | None = Field(None, ge=1, json_schema_extra=NOT_IN_KEY)


class HiddenConfig(Strict):
    weight: float = Field(1.0, gt=0)
    kind: Literal["cosine", "mse"] = "cosine"
    layer_map: list[tuple[int, int]] = Field(description="(student hidden state, teacher hidden state) pairs; "
                                                         "0 = embeddings, i = after layer i")


class LMDistillConfig(LMTrainConfig):
    loss: Literal[LOSSES] = Field("forward_kl", description="forward_kl (Hinton; DistilGPT2) | reverse_kl (MiniLLM) "
                                                            "| jsd (GKD) | skew_kl | skew_reverse_kl (DistiLLM)")
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the KD loss; 1 - alpha: cross-entropy on the data")
    temperature: float = Field(1.0, gt=0, description="forward_kl, reverse_kl, jsd")
    beta: float = Field(0.5, ge=0, le=1, description="jsd: 0 forward KL ... 1 reverse KL")
    skew: float = Field(0.1, ge=0, le=1, description="skew_kl, skew_reverse_kl: the mixture weight")
    on_policy: float = Field(0.0, ge=0, le=1, description="share of batches the student samples itself (GKD lambda)")
    teacher_top_k: int | None = Field(None, ge=1, description="cache the teacher's top-k log-probs on disk once "
                                                             "(forward_kl only) instead of running it every step")
    hidden: HiddenConfig | None = None
    shard_teacher: bool = Field(False, json_schema_extra=NOT_IN_KEY,
                                description="under torchrun, shard the teacher over the ranks with FSDP (a teacher "
                                            "too big for one device); no effect in one process")

    def check(self, pipeline: PipelineConfig) -> tuple[str, str] | None:
        if self.teacher_top_k is not None and self.loss != "forward_kl":
            return "teacher_top_k", f"the top-k teacher cache serves forward_kl; loss is {self.loss}"
        if self.teacher_top_k is not None and self.on_policy > 0:
            return "teacher_top_k", "on-policy batches are the student's own samples: no cache can hold them"
        return None

    def loss_params(self) -> dict[str, Any]:
        if self.loss in ("skew_kl", "skew_reverse_kl"):
            return {"alpha": self.skew}
        if self.loss == "jsd":
            return {"beta": self.beta, "temperature": self.temperature}
        return {"temperature": self.temperature}


class LMBaselineConfig(Strict):
    """The student alone; unset options follow stages.distill, so the two differ only by the teacher."""

    epochs: int | None = Field(None, ge=1)
    lr: float | None = Field(None, gt=0)


def corpus_blocks(ctx: StageContext, split: str):
    from compress.tasks.causal_lm.corpus import TokenBlocks

    return TokenBlocks(ctx.path(ctx.outputs["teacher"]["data"]), split)


def eval_split(ctx: StageContext) -> str:
    return "test" if ctx.outputs["teacher"].get("has_test") else "val"


def train_options(cfg, seed: int):
    from compress.tasks.causal_lm.lm_fit import TrainOptions

    return TrainOptions(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
                        warmup_fraction=cfg.warmup_fraction, grad_clip=cfg.grad_clip, seed=seed,
                        val_blocks=cfg.eval_blocks)


class LMTeacherStage(Stage):
    name = "teacher"

    def key_material(self, pipeline: PipelineConfig) -> dict[str, Any]:
        return {"teacher": pipeline.teacher.model_dump(mode="json"), "data": pipeline.data.model_dump(mode="json"),
                "seed": pipeline.seed}

    def threads(self, pipeline: PipelineConfig):
        train = pipeline.teacher.train
        return ("teacher.train.threads", train.threads) if train is not None and train.threads else None

    def run(self, ctx: StageContext) -> dict[str, Any]:
        import torch

        from compress.tasks.causal_lm import corpus as lm_corpus
        from compress.tasks.causal_lm.metrics import score_torch_model
        from compress.tasks.causal_lm.models import build_lm, save_lm, vocab_of
        from compress.tasks.causal_lm.lm_fit import train_lm

        plan, cfg, file = ctx.data, ctx.pipeline.teacher, ctx.pipeline.source_file
        tokenizer = self._tokenizer(ctx, plan)
        tokenizer_dir = ctx.stage_dir / "tokenizer"
        lm_corpus.save_hf_tokenizer(tokenizer, tokenizer_dir)
        masked = plan.corpus.prompt_column is not None
        meta = lm_corpus.pack_corpus(plan.documents(), tokenizer, plan.corpus.block_size, ctx.stage_dir / "data",
                                     plan.split_of(), file, "data", required=("train", "val"), masked=masked)
        for split, counts in meta["splits"].items():
            targets = f" ({counts['target_tokens']} of them responses: the loss counts those)" if masked else ""
            ctx.log(f"{split}: {counts['documents']} documents, {counts['tokens']} tokens{targets}, "
                    f"{counts['blocks']} blocks")
        vocab = tokenizer.get_vocab_size(with_added_tokens=True)
        torch.manual_seed(ctx.pipeline.seed)
        model = build_lm(cfg.model, cfg.kwargs, vocab, 4 * plan.corpus.block_size, meta["end_of_text_id"])
        lm_corpus.check_vocab_fits(vocab, vocab_of(model), file, "teacher.model")
        history = None
        if cfg.train is not None:
            options = train_options(LMTrainConfig(epochs=cfg.train.epochs, batch_size=cfg.train.batch_size,
                                                  lr=cfg.train.lr, weight_decay=cfg.train.weight_decay,
                                                  grad_clip=cfg.train.grad_clip or 1.0), ctx.pipeline.seed)
            history = train_lm(model, lm_corpus.TokenBlocks(ctx.stage_dir / "data", "train"),
                               lm_corpus.TokenBlocks(ctx.stage_dir / "data", "val"), options,
                               ctx.stage_dir / "training", ctx.log)
        save_lm(model, tokenizer_dir, ctx.stage_dir / "model")
        has_test = "test" in meta["splits"] and meta["splits"]["test"]["blocks"] > 0
        split = "test" if has_test else "val"
        scores = score_torch_model(model, lm_corpus.TokenBlocks(ctx.stage_dir / "data", split))
        scores.save(ctx.stage_dir / "scores.npz")
        summary = scores.summary()
        ctx.log(f"teacher {split} perplexity {summary['perplexity']:.2f}, next-token top-1 {summary['top1']:.3f}")
        return {"model": ctx.relative(ctx.stage_dir / "model"), "data": ctx.relative(ctx.stage_dir / "data"),
                "tokenizer": ctx.relative(tokenizer_dir), "scores": ctx.relative(ctx.stage_dir / "scores.npz"),
                "has_test": has_test, "split": split, "summary": summary, "corpus": meta,
                "params": sum(p.numel() for p in model.parameters()), "layers": _layers(model),
                "training": history}

    @staticmethod
    def _tokenizer(ctx: StageContext, plan):
        from compress.tasks.causal_lm import corpus as lm_corpus

        file = ctx.pipeline.source_file
        if plan.corpus.tokenizer is not None:
            return lm_corpus.load_tokenizer(plan.corpus.tokenizer, file, "data.corpus.tokenizer")
        if ctx.pipeline.teacher.model.startswith("hf:"):
            return lm_corpus.load_tokenizer(Path(ctx.pipeline.teacher.model[3:]), file, "teacher.model")
        split_of = plan.split_of()
        texts = (text for doc_id, text in plan.documents() if split_of(doc_id) == "train")
        ctx.log(f"training a byte-level BPE of {plan.corpus.vocab_size} tokens on the training documents")
        return lm_corpus.train_tokenizer(texts, plan.corpus.vocab_size)


def _layers(model) -> int:
    from compress.tasks.causal_lm.models import count_layers

    return count_layers(model)


def build_student(ctx: StageContext, teacher):
    """The student: the teacher's every other layer (init_from_teacher), or its own config with random weights."""
    import torch

    from compress.tasks.causal_lm.models import build_lm, every_other_layer, keep_layers, vocab_of

    cfg = ctx.pipeline.student
    if "prune" in ctx.outputs:
        from compress.tasks.causal_lm.models import load_lm

        return load_lm(ctx.path(ctx.outputs["prune"]["model"]))
    if cfg.init_from_teacher == "every_other":
        return keep_layers(teacher, every_other_layer(_layers(teacher)))
    torch.manual_seed(ctx.pipeline.seed + 1)
    corpus = ctx.outputs["teacher"]["corpus"]
    student = build_lm(cfg.model, cfg.kwargs, vocab_of(teacher), 4 * corpus["block_size"], corpus["end_of_text_id"])
    if vocab_of(student) != vocab_of(teacher):
        raise ConfigError(ctx.pipeline.source_file, "student.model",
                          f"the student's vocabulary ({vocab_of(student)}) is not the teacher's ({vocab_of(teacher)})")
    return student


class _StudentStage(Stage):
    reads = ("teacher", "prune")
    distributed = True  # under torchrun every rank trains (DDP); rank 0 alone writes

    def train(self, ctx: StageContext, options_cfg, distill=None) -> dict[str, Any]:
        from compress.tasks.causal_lm.metrics import TokenScores, score_torch_model
        from compress.tasks.causal_lm.models import load_lm, save_lm
        from compress.tasks.causal_lm import lm_sharding
        from compress.tasks.causal_lm.lm_fit import train_lm

        teacher = load_lm(ctx.path(ctx.outputs["teacher"]["model"]))
        student = build_student(ctx, teacher)
        result = train_lm(student, corpus_blocks(ctx, "train"), corpus_blocks(ctx, "val"),
                          train_options(options_cfg, ctx.pipeline.seed), ctx.stage_dir / "training", ctx.log,
                          teacher=teacher if distill is not None else None, distill=distill, distributed=True)
        if lm_sharding.world()[0] != 0:
            return {}
        save_lm(student, ctx.path(ctx.outputs["teacher"]["tokenizer"]), ctx.stage_dir / "model")
        split = eval_split(ctx)
        scores = score_torch_model(student, corpus_blocks(ctx, split))
        scores.save(ctx.stage_dir / "scores.npz")
        teacher_scores = TokenScores.load(ctx.path(ctx.outputs["teacher"]["scores"]))
        summary = scores.summary(teacher_scores)
        ctx.log(f"student {split} perplexity {summary['perplexity']:.2f} (teacher "
                f"{teacher_scores.perplexity:.2f}), top-1 {summary['top1']:.3f}, agreement {summary['agreement']:.3f}")
        return {"model": ctx.relative(ctx.stage_dir / "model"), "scores": ctx.relative(ctx.stage_dir / "scores.npz"),
                "split": split, "summary": summary, "params": sum(p.numel() for p in student.parameters()),
                "layers": _layers(student), "training": result}


class LMBaselineStage(_StudentStage):
    name = "baseline"
    Config = LMBaselineConfig
    optional = True

    def key_material(self, pipeline: PipelineConfig) -> dict[str, Any]:
        return {"student": pipeline.student.model_dump(mode="json"), "options": self.options(pipeline).model_dump(),
                "seed": pipeline.seed}

    @staticmethod
    def options(pipeline: PipelineConfig) -> LMTrainConfig:
        distill = pipeline.stages.get("distill") or LMDistillConfig()
        own = pipeline.stages.get("baseline") or LMBaselineConfig()
        fields = {k: getattr(distill, k) for k in LMTrainConfig.model_fields}
        fields.update({k: v for k, v in own.model_dump().items() if v is not None})
        return LMTrainConfig(**fields)

    def run(self, ctx: StageContext) -> dict[str, Any]:
        return self.train(ctx, self.options(ctx.pipeline))


class LMDistillStage(_StudentStage):
    name = "distill"
    Config = LMDistillConfig

    def key_material(self, pipeline: PipelineConfig) -> dict[str, Any]:
        return {"student": pipeline.student.model_dump(mode="json"), "seed": pipeline.seed}

    def run(self, ctx: StageContext) -> dict[str, Any]:
        from compress.tasks.causal_lm.token_losses import check_layer_map
        from compress.tasks.causal_lm.lm_fit import DistillOptions

        cfg: LMDistillConfig = ctx.config
        hidden = cfg.hidden
        if hidden is not None:
            student_layers = len(ctx.outputs["prune"]["kept_layers"]) if "prune" in ctx.outputs else \
                (ctx.outputs["teacher"]["layers"] + 1) // 2 if ctx.pipeline.student.init_from_teacher else \
                ctx.pipeline.student.kwargs.get("layers", 4)
            problem = check_layer_map(hidden.layer_map, student_layers, ctx.outputs["teacher"]["layers"])
            if problem:
                raise ConfigError(ctx.pipeline.source_file, "stages.distill.hidden.layer_map", problem)
        distill = DistillOptions(loss=cfg.loss, alpha=cfg.alpha, params=cfg.loss_params(),
                                 hidden_weight=hidden.weight if hidden else 0.0,
                                 hidden_kind=hidden.kind if hidden else "cosine",
                                 layer_map=[tuple(pair) for pair in hidden.layer_map] if hidden else [],
                                 on_policy=cfg.on_policy, teacher_top_k=cfg.teacher_top_k,
                                 shard_teacher=cfg.shard_teacher)
        ctx.log(f"KD: {cfg.loss} ({', '.join(f'{k} {v:g}' for k, v in cfg.loss_params().items())}), alpha {cfg.alpha:g}"
                + (f", hidden states {hidden.kind} x{hidden.weight:g}" if hidden else "")
                + (f", on-policy {cfg.on_policy:g}" if cfg.on_policy else ""))
        if cfg.shard_teacher and not _under_torchrun():
            ctx.log("shard_teacher: one process, so the teacher is not sharded (run under torchrun to shard it)")
        return self.train(ctx, cfg, distill)


def _under_torchrun() -> bool:
    from compress.tasks.causal_lm import lm_sharding

    return lm_sharding.world()[1] > 1
