"""Causal LMs: what KD buys on the example, and what a smaller, int4 student buys in tokens/s.

- kd (default part): examples/causal_lm/pipeline.yaml, run by `compress run` itself, once per seed (the seed
  changes the document split, the tokenizer's training documents' order, and every initialisation). Per seed:
  teacher, student alone and KD student perplexity on the held-out test documents, the KD/alone ratio with its
  95% paired bootstrap interval over documents (compress.tasks.causal_lm.metrics), and the share of the
  student-teacher gap KD closed. Seed 0 also builds the engines: int4 and int8 perplexity against fp32.
  Targets (issue 23): KD perplexity >= 5% below the student alone, closing >= 25% of the gap; int4 within
  +5% of fp32.
- speed: a realistically sized random-weight pair, no training: a Llama teacher of >= 100M parameters and a
  student of half its layers, built by onnxruntime-genai's model builder (fp32, and int4 for the student),
  timed by the harness the benchmark stage uses (deploy/runner/generation.py) at batch 1, and by
  onnxruntime-genai's own generator loop timed the way its benchmark_e2e.py does (the harness must be within
  10% of it). The same models as stateful OpenVINO IR folders (compress/stages/lm/openvino_lm.py: fp32, and
  NNCF int4 for the student), timed by the same harness and by openvino-genai's LLMPipeline with its own
  performance metrics (1000 / mean time per output token, what its benchmark_genai.py reports) on the same
  execution path (ATTENTION_BACKEND SDPA: the stateful model); its default, paged attention, is shown beside.
  The harness and the runtime's loop alternate round by round (load drifts weigh on both). Targets: student
  decode tokens/s >= 1.8x the teacher's; int4 >= 1.5x its fp32; int4 size <= 0.3x fp32; the harness within
  10% of each runtime's own loop.

- depth: the same target where the output projection stops dominating a token's reads: a TinyLlama-1.1B-shaped
  teacher and its half-depth student (fp32, onnxruntime-genai), beside the bound the weights read per token set.

    python benchmarks/causal_lm.py [--part kd|speed|depth|all] [--seeds 3] [--threads 2] [--work DIR]
    python benchmarks/causal_lm.py --smoke    # tiny models, one seed, both parts: about a minute
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compress.cli import main as compress_main  # noqa: E402
from compress.core.fileio import read_json  # noqa: E402
from compress.tasks.causal_lm.metrics import TokenScores, gap_closed, paired_perplexity_ratio  # noqa: E402

EXAMPLE = ROOT / "examples" / "causal_lm" / "pipeline.yaml"


def smoke_config(config: dict) -> dict:
    config["data"]["corpus"].update(block_size=32, vocab_size=300, max_documents=11)  # before _pydecimal.py
    config["teacher"]["kwargs"] = {"layers": 2, "hidden": 32, "heads": 2, "kv_heads": 1}
    config["teacher"]["train"]["epochs"] = 1
    config["student"]["kwargs"] = {"layers": 1, "hidden": 32, "heads": 2, "kv_heads": 1}
    config["stages"]["distill"].update(epochs=1, eval_blocks=4)
    config["stages"]["export"] = {"prompts": 1, "prompt_tokens": 8, "new_tokens": 4}
    config["stages"]["build"]["targets"] = ["onnxruntime:fp32", "onnxruntime:int4"]  # int8: the same builder call
    config["stages"]["benchmark"] = {"prompt_lengths": [8], "new_tokens": 4, "batch_sizes": [1], "rounds": 1,
                                     "eval_blocks": 4}
    return config


def kd_part(seeds: int, threads: int, smoke: bool, work: Path) -> list[str]:
    rows, lines = [], []
    for seed in range(seeds):
        config = yaml.safe_load(EXAMPLE.read_text())
        config["seed"], config["threads"] = seed, threads
        config["stages"]["benchmark"]["threads"] = threads
        if smoke:
            config = smoke_config(config)
        if seed > 0:  # engines once: their numbers do not depend on the seed's training
            for stage in ("export", "build", "benchmark", "report"):
                config["stages"].pop(stage, None)
            config.pop("gates", None)
        path = work / f"seed{seed}.yaml"
        path.write_text(yaml.safe_dump(config))
        run_dir = work / f"run{seed}"
        started = time.perf_counter()
        code = compress_main(["run", str(path), "--run-dir", str(run_dir)])
        if code != 0:
            raise SystemExit(f"compress run exited {code} for seed {seed}")
        record = read_json(run_dir / "run.json")["stages"]
        scores = {role: TokenScores.load(run_dir / record[role]["outputs"]["scores"])
                  for role in ("teacher", "baseline", "distill")}
        ratio = paired_perplexity_ratio(scores["distill"], scores["baseline"], seed)
        closed = gap_closed(scores["teacher"].perplexity, scores["baseline"].perplexity, scores["distill"].perplexity)
        rows.append({"seed": seed, "teacher": scores["teacher"].perplexity, "alone": scores["baseline"].perplexity,
                     "kd": scores["distill"].perplexity, "ratio": ratio, "closed": closed,
                     "minutes": (time.perf_counter() - started) / 60})
        if seed == 0 and "benchmark" in record:
            results = read_json(run_dir / record["benchmark"]["outputs"]["results"])
            engines = {r["artifact"]: r for r in results["rows"]}
            fp32 = engines.get("student-onnxruntime-fp32")
            for precision in ("int8", "int4"):
                quant = engines.get(f"student-onnxruntime-{precision}")
                if fp32 and quant:
                    lines.append(f"- {precision} weight-only: perplexity {quant['perplexity']:.3f} vs fp32 "
                                 f"{fp32['perplexity']:.3f} ({quant['perplexity'] / fp32['perplexity'] - 1:+.2%}), "
                                 f"size {quant['size_mb'] / fp32['size_mb']:.2f}x")
    table = ["| seed | teacher ppl | student alone | KD student | KD / alone (95% paired CI) | gap closed | minutes |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = r["ratio"]
        closed_cell = "-" if r["closed"] is None else f"{r['closed']:.0%}"
        table.append(f"| {r['seed']} | {r['teacher']:.2f} | {r['alone']:.2f} | {r['kd']:.2f} | {ratio['ratio']:.3f} "
                     f"({ratio['low']:.3f}-{ratio['high']:.3f}) | {closed_cell} | {r['minutes']:.1f} |")
    mean_ratio = statistics.mean(r["ratio"]["ratio"] for r in rows)
    closed = [r["closed"] for r in rows if r["closed"] is not None]
    table.append(f"\nmean KD/alone perplexity ratio {mean_ratio:.3f} (target <= 0.95); mean gap closed "
                 f"{statistics.mean(closed):.0%} (target >= 25%)" if closed else
                 f"\nmean KD/alone perplexity ratio {mean_ratio:.3f} (target <= 0.95); no teacher-student gap")
    return table + lines


def speed_part(threads: int, smoke: bool, work: Path) -> list[str]:
    import torch
    import transformers

    from compress.stages.lm.engines import build_folders, folder_mb
    from compress.stages.lm.openvino_lm import export_openvino
    from compress.tasks.causal_lm.corpus import save_hf_tokenizer
    from deploy.runner.decode_timing import time_generation
    from deploy.runner.generation import GreedyGenerator
    from deploy.runner.ov_generation import open_generator

    sizes = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                 vocab_size=512) if smoke else \
        dict(hidden_size=768, intermediate_size=2048, num_attention_heads=12, num_key_value_heads=4, vocab_size=32000)
    teacher_layers = 2 if smoke else 12
    save_hf_tokenizer(stdlib_tokenizer(min(sizes["vocab_size"], 8000)), work / "tokenizer")
    folders = {}
    for name, layers in (("teacher", teacher_layers), ("student", teacher_layers // 2)):
        torch.manual_seed(0)
        config = transformers.LlamaConfig(num_hidden_layers=layers, max_position_embeddings=1024, bos_token_id=0,
                                          eos_token_id=0, tie_word_embeddings=False, **sizes)
        model = transformers.LlamaForCausalLM(config)
        params = sum(p.numel() for p in model.parameters())
        hf = work / f"{name}-hf"
        model.save_pretrained(hf)
        for f in (work / "tokenizer").iterdir():
            (hf / f.name).write_bytes(f.read_bytes())
        del model
        precisions = ("fp32", "int4") if name == "student" else ("fp32",)
        onnxruntime = {precision: work / f"{name}-{precision}" for precision in precisions}
        missing = [(hf, out, p) for p, out in onnxruntime.items() if not (out / "genai_config.json").is_file()]
        if missing:
            build_folders(missing)
        folders.update({f"{name}-{p}": (out, params) for p, out in onnxruntime.items()})
        openvino = {precision: work / f"{name}-openvino-{precision}" for precision in precisions}
        missing = {p: out for p, out in openvino.items() if not (out / "openvino_model.xml").is_file()}
        if missing:
            export_openvino(hf, missing, group_size=32)
        folders.update({f"{name}-openvino-{p}": (out, params) for p, out in openvino.items()})
    prompt = list(range(1, 33))
    new_tokens = 16 if smoke else 64
    rounds = 1 if smoke else 9
    found = {}
    for name, (folder, params) in folders.items():
        openvino = "-openvino-" in name
        generator = open_generator(str(folder), threads=threads) if openvino else \
            GreedyGenerator(str(folder), backend="genai", threads=threads)
        own = openvino_genai_round(folder, prompt, new_tokens, threads, "SDPA") if openvino else \
            genai_round(folder, prompt, new_tokens, threads)
        paired = paired_rounds(lambda: time_generation(generator, prompt, new_tokens, rounds=1, warmup=0),
                               own, rounds)
        paged = None
        if openvino and not smoke:  # LLMPipeline's default: paged attention (continuous batching), another path
            paged_round = openvino_genai_round(folder, prompt, new_tokens, threads, None)
            paged_round()
            paged = statistics.median(paged_round() for _ in range(rounds))
        found[name] = {"params": params, "size_mb": folder_mb(folder), **paired, "paged": paged}
    table = ["| artifact | params | size MB | decode tok/s (harness) | decode tok/s (the runtime's own, same "
             "path) | harness / own (paired rounds, median and range) | openvino-genai default (paged "
             "attention) | first token ms |", "|---|---|---|---|---|---|---|---|"]
    for name, r in found.items():
        paged = f"{r['paged']:.1f}" if r["paged"] else "-"
        table.append(f"| {name} | {r['params'] / 1e6:.1f}M | {r['size_mb']:.1f} | {r['harness']:.1f} | {r['own']:.1f} | "
                     f"{r['ratio']:.2f} ({r['low']:.2f}-{r['high']:.2f}) | {paged} | {1000 * r['ttft']:.1f} |")
    table.append("")
    for runtime, prefix in (("onnxruntime-genai", ""), ("openvino", "openvino-")):
        t, s, q = found[f"teacher-{prefix}fp32"], found[f"student-{prefix}fp32"], found[f"student-{prefix}int4"]
        table.append(f"{runtime}: student / teacher decode tokens/s {s['harness'] / t['harness']:.2f}x (target >= 1.8x); "
                     f"int4 / fp32 {q['harness'] / s['harness']:.2f}x (target >= 1.5x); int4 size "
                     f"{q['size_mb'] / s['size_mb']:.2f}x fp32 (target <= 0.3x)")
    return table


def depth_part(threads: int, smoke: bool, work: Path) -> list[str]:
    """Student / teacher decode tokens/s where the output projection no longer dominates what a token reads: a
    teacher shaped like TinyLlama-1.1B (22 layers of hidden 2048, 32 query and 4 key-value heads, intermediate
    5632, vocabulary 32000; random weights) and its student of 11 layers, fp32 onnxruntime-genai and OpenVINO
    folders, timed by the harness in alternate rounds on each runtime. Beside it the bound memory traffic sets:
    the weights a token reads (every matrix but the embedding table, which is gathered), teacher over student."""
    import torch
    import transformers

    from compress.stages.lm.engines import build_folders, folder_mb
    from compress.stages.lm.openvino_lm import export_openvino
    from compress.tasks.causal_lm.corpus import save_hf_tokenizer
    from deploy.runner.decode_timing import time_generation
    from deploy.runner.generation import GreedyGenerator
    from deploy.runner.ov_generation import OpenVINOGenerator

    sizes = dict(hidden_size=64, intermediate_size=176, num_attention_heads=4, num_key_value_heads=2,
                 vocab_size=512) if smoke else \
        dict(hidden_size=2048, intermediate_size=5632, num_attention_heads=32, num_key_value_heads=4, vocab_size=32000)
    teacher_layers = 4 if smoke else 22
    tokenizer = work / "tokenizer"
    if not tokenizer.is_dir():
        save_hf_tokenizer(stdlib_tokenizer(min(sizes["vocab_size"], 8000)), tokenizer)
    found = {}
    for name, layers in (("teacher", teacher_layers), ("student", teacher_layers // 2)):
        out = work / f"{name}-fp32"
        if not (out / "genai_config.json").is_file():
            torch.manual_seed(0)
            config = transformers.LlamaConfig(num_hidden_layers=layers, max_position_embeddings=2048, bos_token_id=0,
                                              eos_token_id=0, tie_word_embeddings=False, **sizes)
            model = transformers.LlamaForCausalLM(config)
            model.save_pretrained(work / f"{name}-hf")
            del model
        for f in tokenizer.iterdir():
            (work / f"{name}-hf" / f.name).write_bytes(f.read_bytes())
        if not (out / "genai_config.json").is_file():
            build_folders([(work / f"{name}-hf", out, "fp32")])
        if not (work / f"{name}-openvino-fp32" / "openvino_model.xml").is_file():
            export_openvino(work / f"{name}-hf", {"fp32": work / f"{name}-openvino-fp32"}, group_size=32)
        params = transformers.AutoConfig.from_pretrained(work / f"{name}-hf")
        embedding = params.vocab_size * params.hidden_size
        with torch.device("meta"):
            total = sum(p.numel() for p in transformers.LlamaForCausalLM(params).parameters())
        found[name] = {"params": total, "read": total - embedding, "layers": layers}
    prompt = list(range(1, 33))
    new_tokens = 8 if smoke else 64
    rounds = 1 if smoke else 9
    lines = ["| model | runtime | layers | params | weights read per token | size MB | decode tok/s (median) |",
             "|---|---|---|---|---|---|---|"]
    summary = []
    for runtime, suffix in (("onnxruntime-genai", "fp32"), ("openvino", "openvino-fp32")):
        folders = {name: work / f"{name}-{suffix}" for name in found}
        generators = {name: OpenVINOGenerator(str(folder), threads=threads) if runtime == "openvino" else
                      GreedyGenerator(str(folder), backend="genai", threads=threads) for name, folder in folders.items()}
        rates = {name: [] for name in found}
        for generator in generators.values():
            generator.eos_ids = ()  # random weights: every round makes all its tokens
            time_generation(generator, prompt, new_tokens, rounds=1, warmup=0)
        for _ in range(rounds):
            for name, generator in generators.items():
                rates[name].append(time_generation(generator, prompt, new_tokens, rounds=1, warmup=0)["decode_tokens_per_s"])
        del generators
        ratios = [s / t for s, t in zip(rates["student"], rates["teacher"])]
        for name, r in found.items():
            lines.append(f"| {name} | {runtime} | {r['layers']} | {r['params'] / 1e6:.1f}M | {r['read'] / 1e6:.1f}M | "
                         f"{folder_mb(folders[name]):.1f} | {statistics.median(rates[name]):.2f} |")
        summary.append(f"{runtime}, TinyLlama-1.1B-shaped pair: student / teacher decode tokens/s "
                       f"{statistics.median(ratios):.2f}x (paired rounds {min(ratios):.2f}-{max(ratios):.2f}; target >= "
                       f"1.8x; the weights-read bound {found['teacher']['read'] / found['student']['read']:.2f}x)")
    return lines + [""] + summary


def stdlib_tokenizer(vocab_size: int):
    """A byte-level BPE trained on 40 of the standard library's modules: what the folders' tokenizers are made of
    (random weights need no better one; openvino-tokenizers converts it)."""
    import sysconfig

    from compress.tasks.causal_lm.corpus import train_tokenizer

    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:40]
    return train_tokenizer((f.read_text(errors="replace") for f in files), vocab_size)


def paired_rounds(harness_round, own_round, rounds: int) -> dict:
    """The harness and the runtime's own loop timed in alternate rounds (after one warm-up each), so that a load
    that changes over the run weighs on both alike: medians of each and of the per-round ratio, with its range."""
    harness_round()
    own_round()
    harness, own, ttft = [], [], []
    for _ in range(rounds):
        timed = harness_round()
        harness.append(timed["decode_tokens_per_s"])
        ttft.append(timed["time_to_first_token_s"])
        own.append(own_round())
    ratios = [h / o for h, o in zip(harness, own)]
    return {"harness": statistics.median(harness), "own": statistics.median(own), "ttft": statistics.median(ttft),
            "ratio": statistics.median(ratios), "low": min(ratios), "high": max(ratios)}


def openvino_genai_round(folder: Path, prompt: list[int], new_tokens: int, threads: int, attention: str | None):
    """One round of openvino-genai's LLMPipeline as its benchmark reports it: 1000 / mean time per output token
    of its performance metrics. `attention` "SDPA": the stateful model as the harness runs it; None:
    LLMPipeline's default, paged attention (continuous batching), a different execution of the same IR."""
    import numpy as np
    import openvino as ov
    import openvino_genai

    options = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"}
    if attention:
        options["ATTENTION_BACKEND"] = attention
    pipeline = openvino_genai.LLMPipeline(str(folder), "CPU", **options)
    config = openvino_genai.GenerationConfig()
    config.max_new_tokens, config.min_new_tokens, config.do_sample = new_tokens, new_tokens, False
    ids = ov.Tensor(np.array([prompt], dtype=np.int64))
    return lambda: 1000.0 / pipeline.generate(ids, config).perf_metrics.get_tpot().mean


def genai_round(folder: Path, prompt: list[int], new_tokens: int, threads: int):
    """One round of decode tokens/s as onnxruntime-genai's benchmark_e2e.py times it: the generate_next_token
    calls after the first."""
    import onnxruntime_genai as og

    config = og.Config(str(folder))
    config.overlay('{"model": {"decoder": {"session_options": {"intra_op_num_threads": %d}}}}' % threads)
    model = og.Model(config)

    def one() -> float:
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(prompt) + new_tokens, do_sample=False)
        generator = og.Generator(model, params)
        generator.append_tokens(prompt)
        generator.generate_next_token()
        started = time.perf_counter()
        steps = 0
        while not generator.is_done() and steps < new_tokens - 1:
            generator.generate_next_token()
            steps += 1
        return steps / (time.perf_counter() - started)
    return one


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["kd", "speed", "depth", "all"], default="all")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--work", type=Path, help="keep the runs here (a rerun reuses every finished stage)")
    args = parser.parse_args()
    if args.smoke:  # smoke runs go two at a time on CI's 2 cores: one thread each, as the other scripts' smoke
        args.threads = 1
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        work = args.work or Path(folder)
        work.mkdir(parents=True, exist_ok=True)
        if args.part in ("kd", "all"):
            print("\n".join(kd_part(1 if args.smoke else args.seeds, args.threads, args.smoke, work)))
        if args.part in ("speed", "all"):
            (work / "speed").mkdir(exist_ok=True)
            print("\n".join(speed_part(args.threads, args.smoke, work / "speed")))
        if args.part in ("depth", "all"):
            (work / "depth").mkdir(exist_ok=True)
            print("\n".join(depth_part(args.threads, args.smoke, work / "depth")))


if __name__ == "__main__":
    main()
