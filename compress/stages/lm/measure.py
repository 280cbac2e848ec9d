"""The causal LM's benchmark stage: perplexity, time to first token and decode tokens/s of every engine folder.

Every engine is scored on the same held-out blocks the torch models were (perplexity from its prefill logits,
so int4 is measured, never assumed) and timed through onnxruntime-genai (deploy/runner/generation.py, the
code a device runs): time to first token at each prompt length, decode tokens/s at each batch size, medians
over rounds. Engines are timed one after another in the same process and threads, so ratios are fair.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from compress.config import PipelineConfig, Strict
from compress.config.base import NOT_IN_KEY
from compress.core.fileio import write_json
from compress.stages.contract import Stage, StageContext


# The export stage's fp32 folder of each torch model, whose torch reference it keeps (the baseline has none).
EXPORTED_AS = {"teacher": "teacher-onnxruntime-fp32", "distill": "student-onnxruntime-fp32"}


class LMBenchmarkConfig(Strict):
    prompt_lengths: list[int] = Field([32, 128], description="time to first token at these prompt lengths")
    new_tokens: int = Field(32, ge=2, description="tokens generated per timing round")
    batch_sizes: list[int] = Field([1, 4], description="decode tokens/s at these batch sizes")
    rounds: int = Field(3, ge=1)
    eval_blocks: int | None = Field(32, ge=1, description="held-out blocks each engine's perplexity is measured on")
    memory: bool = Field(True, description="peak resident memory of each engine generating alone in a fresh process")
    threads: int | None = Field(None, ge=1, json_schema_extra=NOT_IN_KEY)


BACKEND_NAMES = {"genai": "onnxruntime-genai", "onnxruntime": "onnxruntime", "openvino": "openvino"}


def engine_scores(folder: Path, blocks, limit: int | None):
    """An engine's TokenScores on the first `limit` blocks (prefill logits of each block, batch 1)."""
    from compress.tasks.causal_lm.metrics import TokenScores, score_logits
    from deploy.runner.ov_generation import open_generator

    generator = open_generator(str(folder), backend="onnxruntime")
    chosen = spread(len(blocks), limit)
    parts = {"nll": [], "tokens": [], "correct": [], "predictions": []}
    for i in chosen:
        block = blocks[i].numpy()
        logits = generator.prefill_logits(block[:-1].tolist())[None]
        mask = blocks.target_mask(i).numpy()[None] if hasattr(blocks, "target_mask") else None
        nll, tokens, correct, predictions = score_logits(logits, block[None, 1:], mask)
        for key, value in zip(parts, (nll, tokens, correct, predictions.astype(np.int32))):
            parts[key].append(value)
    documents = np.array([blocks.document_of_block(i) for i in chosen], dtype=np.int64)
    return TokenScores(**{k: np.concatenate(v) for k, v in parts.items()}, documents=documents)


def spread(total: int, limit: int | None) -> list[int]:
    """`limit` block indices spread evenly over the split (every document region, not the first few)."""
    if limit is None or limit >= total:
        return list(range(total))
    return [int(i) for i in np.linspace(0, total - 1, limit).round()]


def torch_scores_on(path: Path, chosen: list[int]):
    """A torch model's saved scores of the blocks the engines were scored on."""
    from compress.tasks.causal_lm.metrics import TokenScores

    scores = TokenScores.load(path)
    return TokenScores(scores.nll[chosen], scores.tokens[chosen], scores.correct[chosen], scores.documents[chosen],
                       scores.predictions[chosen])


def timings(folder: Path, prompt_source: list[int], cfg: LMBenchmarkConfig, threads: int, context: int) -> dict:
    from deploy.runner.decode_timing import time_batch, time_generation
    from deploy.runner.ov_generation import open_generator

    generator = open_generator(str(folder), backend="auto", threads=threads)
    found: dict[str, Any] = {"backend": generator.backend, "ttft_s": {}, "decode_tokens_per_s": {}}
    for length in cfg.prompt_lengths:
        if length + cfg.new_tokens > context:
            continue
        prompt = (prompt_source * (length // max(1, len(prompt_source)) + 1))[:length]
        timed = time_generation(generator, prompt, cfg.new_tokens, rounds=cfg.rounds, eos_id=None)
        found["ttft_s"][str(length)] = round(timed["time_to_first_token_s"], 5)
        if length == min(cfg.prompt_lengths):
            found["decode_tokens_per_s"]["1"] = round(timed["decode_tokens_per_s"] or 0.0, 2)
    prompt = prompt_source[:min(cfg.prompt_lengths)]
    for batch in cfg.batch_sizes:
        if batch == 1:
            continue
        timed = time_batch(generator, [prompt] * batch, cfg.new_tokens, rounds=cfg.rounds)
        found["decode_tokens_per_s"][str(batch)] = round(timed["decode_tokens_per_s"] or 0.0, 2)
    return found


# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent (this process) across exec.
PEAK_MEMORY_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[1])
from ov_generation import open_generator
from harness import proc_status_kb
generator = open_generator(sys.argv[2], backend="auto", threads=int(sys.argv[3]))
generator.generate(json.loads(sys.argv[4]), int(sys.argv[5]))
print(proc_status_kb("VmHWM"))
"""


def peak_memory_mb(folder: Path, prompt: list[int], new_tokens: int, threads: int) -> float | None:
    """Peak resident memory of generating with the engine alone in a fresh process (the device runner's code:
    Python, numpy, ONNX Runtime and the model, nothing of torch), in MB."""
    import subprocess
    import sys

    runner = Path(__file__).resolve().parents[3] / "deploy" / "runner"
    done = subprocess.run([sys.executable, "-c", PEAK_MEMORY_SCRIPT, str(runner), str(folder), str(threads),
                           json.dumps(prompt), str(new_tokens)], capture_output=True, text=True)
    if done.returncode != 0:
        return None
    return round(int(done.stdout.split()[-1]) / 1024, 1)


class LMBenchmarkStage(Stage):
    name = "benchmark"
    Config = LMBenchmarkConfig
    optional = True
    reads = ("teacher", "baseline", "distill", "export", "build")

    def threads(self, pipeline: PipelineConfig):
        count = pipeline.stages[self.name].threads
        return ("stages.benchmark.threads", count) if count else \
            ("all cores: stages.benchmark.threads is unset", os.cpu_count() or 1)

    def run(self, ctx: StageContext) -> dict[str, Any]:
        from compress.measuring.environment import environment
        from compress.stages.lm.model_stages import corpus_blocks, eval_split

        cfg: LMBenchmarkConfig = ctx.config
        threads = self.threads(ctx.pipeline)[1]
        blocks = corpus_blocks(ctx, eval_split(ctx))
        chosen = spread(len(blocks), cfg.eval_blocks)
        count = len(chosen)
        teacher_scores = torch_scores_on(ctx.path(ctx.outputs["teacher"]["scores"]), chosen)
        rows = []
        for role in ("teacher", "baseline", "distill"):
            if role in ctx.outputs:
                scores = torch_scores_on(ctx.path(ctx.outputs[role]["scores"]), chosen)
                scores.save(ctx.stage_dir / f"{role}-torch.npz")
                rows.append({"artifact": f"{role}-torch", "role": role, "backend": "torch", "precision": "fp32",
                             **scores.summary(teacher_scores), "scores": ctx.relative(ctx.stage_dir / f"{role}-torch.npz"),
                             "params": ctx.outputs[role]["params"]})
        engines = dict(ctx.outputs.get("export", {}).get("engines", {}))
        engines.update(ctx.outputs.get("build", {}).get("engines", {}))
        for name in [name for name, engine in engines.items() if engine.get("built_on") == "device"]:
            ctx.log(f"{name}: built and measured on the device (deploy with --runtime tensorrt)")
            engines.pop(name)
        prompt_source = np.concatenate([blocks[i].numpy() for i in range(min(len(blocks), 4))]).tolist()
        context = 4 * ctx.outputs["teacher"]["corpus"]["block_size"]
        for name, engine in engines.items():
            folder = ctx.path(engine["folder"])
            scores = engine_scores(folder, blocks, cfg.eval_blocks)
            scores.save(ctx.stage_dir / f"{name}.npz")
            timed = timings(folder, prompt_source, cfg, threads, context)
            timed["peak_memory_mb"] = peak_memory_mb(folder, prompt_source[:min(cfg.prompt_lengths)], cfg.new_tokens,
                                                     threads) if cfg.memory else None
            row = {"artifact": name, "role": "teacher" if name.startswith("teacher") else "distill",
                   "backend": BACKEND_NAMES[timed["backend"]],
                   "precision": name.rsplit("-", 1)[1], **scores.summary(teacher_scores),
                   "scores": ctx.relative(ctx.stage_dir / f"{name}.npz"), "size_mb": engine["size_mb"],
                   "parity": engine.get("parity"), **timed}
            ctx.log(f"{name}: perplexity {row['perplexity']:.2f}, decode {row['decode_tokens_per_s'].get('1', 0):.0f} "
                    f"tokens/s at batch 1, first token {1000 * min(row['ttft_s'].values(), default=0):.1f} ms, "
                    f"{row['size_mb']:.1f} MB")
            rows.append(row)
        generations = self.generations(ctx, engines)
        results = {"task": "causal-lm", "generations": generations, "env": environment(threads), "split": eval_split(ctx), "eval_blocks": count,
                   "block_size": ctx.outputs["teacher"]["corpus"]["block_size"], "rows": rows,
                   "new_tokens": cfg.new_tokens}
        write_json(ctx.stage_dir / "results.json", results)
        return {"results": ctx.relative(ctx.stage_dir / "results.json")}

    @staticmethod
    def generations(ctx: StageContext, engines: dict[str, Any]) -> dict[str, Any]:
        """Greedy continuations of the held-out prompts by every torch model and engine, decoded to text."""
        from compress.stages.lm.engines import load_reference, torch_reference
        from deploy.runner.generation import load_tokenizer
        from deploy.runner.ov_generation import open_generator

        if "export" not in ctx.outputs:
            return {}
        prompts = ctx.outputs["export"]["prompts"]
        new_tokens = ctx.pipeline.stages["export"].new_tokens
        tokenizer = load_tokenizer(str(ctx.path(ctx.outputs["teacher"]["tokenizer"])))
        found = {"prompts": [tokenizer.decode(p) for p in prompts], "by": {}}
        for role in ("teacher", "baseline", "distill"):
            if role in ctx.outputs:
                exported = ctx.outputs["export"]["engines"].get(EXPORTED_AS.get(role, ""))
                _, tokens = load_reference(ctx.path(exported["reference"])) if exported else \
                    torch_reference(ctx.path(ctx.outputs[role]["model"]), prompts, new_tokens)
                found["by"][f"{role}-torch"] = [tokenizer.decode(t) for t in tokens]
        for name, engine in engines.items():
            generator = open_generator(str(ctx.path(engine["folder"])), backend="auto")
            found["by"][name] = [tokenizer.decode(generator.generate(p, new_tokens)) for p in prompts]
        return found
