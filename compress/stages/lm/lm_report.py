"""The causal LM's report stage: report.md and a self-contained report.html from the benchmark's results.json.

What a reader needs to ship an LM: the perplexity gap KD closed against the student trained alone (with a
paired bootstrap interval over documents), what int8/int4 cost in perplexity, tokens/s against the teacher,
the greedy generations side by side, and the gates max_perplexity_increase and min_tokens_per_s.
"""

from __future__ import annotations

from typing import Any

from compress.config import PipelineConfig
from compress.core.fileio import read_json
from compress.reporting.task_report import device_section, publish_report
from compress.stages.contract import Stage, StageContext


def kd_lines(ctx: StageContext) -> tuple[list[str], dict | None]:
    """KD against the student alone and the teacher, on the whole held-out split the training stages scored."""
    from compress.tasks.causal_lm.metrics import TokenScores, gap_closed, paired_perplexity_ratio

    roles = ("teacher", "baseline", "distill")
    if not set(roles) <= set(ctx.outputs):
        return [], None
    scores = {role: TokenScores.load(ctx.path(ctx.outputs[role]["scores"])) for role in roles}
    kd = paired_perplexity_ratio(scores["distill"], scores["baseline"], ctx.pipeline.seed)
    vs_teacher = paired_perplexity_ratio(scores["distill"], scores["teacher"], ctx.pipeline.seed)
    ppl = {role: scores[role].perplexity for role in roles}
    closed = gap_closed(ppl["teacher"], ppl["baseline"], ppl["distill"])
    verdict = "KD helped" if kd["high"] < 1 else "KD hurt" if kd["low"] > 1 else "no difference the data can show"
    split = ctx.outputs["distill"]["split"]
    lines = ["## What distillation bought", "",
             f"On the whole {split} split ({int(scores['distill'].tokens.sum())} tokens of {kd['documents']} "
             "documents).", "",
             f"- KD student perplexity {ppl['distill']:.2f} against "
             f"{ppl['baseline']:.2f} for the student trained alone: ratio {kd['ratio']:.3f} "
             f"(95% paired bootstrap over {kd['documents']} documents: {kd['low']:.3f} to {kd['high']:.3f}): "
             f"**{verdict}**.",
             f"- Against the teacher ({ppl['teacher']:.2f}): ratio {vs_teacher['ratio']:.3f} "
             f"({vs_teacher['low']:.3f} to {vs_teacher['high']:.3f}).",
             "- Share of the student-to-teacher gap KD closed (log perplexity): "
             + (f"{closed:.0%}." if closed is not None else "no gap (the student alone is as good as the teacher)."),
             ""]
    return lines, {"kd_vs_alone": kd, "student_vs_teacher": vs_teacher, "gap_closed": closed, "verdict": verdict}


def prune_lines(ctx: StageContext) -> list[str]:
    """How the prune stage made the students' start from the teacher (depth, width, the parameters left)."""
    prune = ctx.outputs.get("prune")
    if not prune:
        return []
    parts = []
    if prune.get("method"):
        parts.append(f"kept decoder layers {prune['kept_layers']} by {prune['method']} importance")
    width = prune.get("width")
    if width:
        parts += [f"{key} {width['before'][key]} -> {width['after'][key]}{'' if key == 'hidden' else ' per layer'}"
                  for key in ("hidden", "heads", "kv_heads", "intermediate")
                  if width["before"].get(key) != width["after"].get(key)]
    return ["## How the students started", "",
            f"Both students (alone and KD) started from the teacher pruned ({'; '.join(parts)}; Minitron's "
            f"activation importance for width): {prune['params'] / 1e6:.2f}M of the teacher's "
            f"{prune['teacher_params'] / 1e6:.2f}M parameters, calibration loss {prune['calibration_loss']:.3f}.", ""]


def model_table(rows: list[dict]) -> list[str]:
    teacher_tps = next((r["decode_tokens_per_s"].get("1") for r in rows if r["artifact"].startswith("teacher-onnx")),
                       None)
    lines = ["| artifact | perplexity | top-1 | agreement | size MB | peak memory MB | first token ms | "
             "decode tok/s b1 | decode tok/s b4 | vs teacher |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        tps = r.get("decode_tokens_per_s", {})
        ttft = r.get("ttft_s", {})
        first = f"{1000 * ttft[min(ttft, key=int)]:.1f}" if ttft else "-"
        speed = f"{tps['1'] / teacher_tps:.2f}x" if tps.get("1") and teacher_tps else "-"
        lines.append(f"| {r['artifact']} | {r['perplexity']:.2f} | {r['top1']:.3f} | {r.get('agreement', 1.0):.3f} | "
                     f"{r.get('size_mb', '-')} | {r.get('peak_memory_mb') or '-'} | {first} | {tps.get('1', '-')} | "
                     f"{tps.get('4', '-')} | {speed} |")
    return lines


def gates(pipeline: PipelineConfig, rows: dict[str, dict], recommended: dict | None) -> list[dict[str, Any]]:
    found = []
    teacher = rows.get("teacher-torch")
    if pipeline.gates.max_perplexity_increase is not None and recommended and teacher:
        increase = recommended["perplexity"] / teacher["perplexity"] - 1
        found.append({"gate": "max_perplexity_increase", "passed": increase <= pipeline.gates.max_perplexity_increase,
                      "detail": f"{recommended['artifact']} {increase:+.1%} vs limit "
                                f"{pipeline.gates.max_perplexity_increase:+.0%}"})
    if pipeline.gates.min_tokens_per_s is not None and recommended:
        tps = recommended.get("decode_tokens_per_s", {}).get("1", 0.0)
        found.append({"gate": "min_tokens_per_s", "passed": tps >= pipeline.gates.min_tokens_per_s,
                      "detail": f"{recommended['artifact']} {tps:.0f} tokens/s vs {pipeline.gates.min_tokens_per_s:g}"})
    return found


def recommend(rows: list[dict], pipeline: PipelineConfig) -> dict | None:
    """The fastest student engine (batch 1 decode) within the perplexity gate, else the fastest one."""
    engines = [r for r in rows if r["role"] == "distill" and r.get("decode_tokens_per_s")]
    teacher = next((r for r in rows if r["artifact"] == "teacher-torch"), None)
    limit = pipeline.gates.max_perplexity_increase
    within = [r for r in engines if limit is None or teacher is None
              or r["perplexity"] / teacher["perplexity"] - 1 <= limit]
    pool = within or engines
    return max(pool, key=lambda r: r["decode_tokens_per_s"].get("1", 0.0)) if pool else None


def device_lines(devices: list[dict], report: dict[str, Any]) -> list[str]:
    """Each device's greedy check and batch-1 tokens/s, beside this machine's for the same folder, and the
    min_tokens_per_s gate judged on the device's own number (the device is where it must hold)."""
    host = {r["artifact"]: r for r in report.get("rows") or []}
    limit = report.get("min_tokens_per_s")

    def row_lines(row: dict) -> list[str]:
        tps = (row.get("decode_tokens_per_s") or {}).get("1")
        here = (host.get(row.get("artifact")) or {}).get("decode_tokens_per_s", {}).get("1")
        accuracy = row.get("accuracy") or {}
        ttft = row.get("time_to_first_token_s")
        lines = [f"| {row.get('artifact', '?')} | {row.get('backend', '?')} | {tps if tps is not None else '-'} | "
                 f"{f'{tps / here:.2f}x' if tps and here else '-'} | "
                 f"{f'{1000 * ttft:.1f}' if ttft else '-'} | "
                 f"{accuracy.get('agreement_with_host', float('nan')):.1%} "
                 f"({accuracy.get('identical_prompts', '?')}/{accuracy.get('prompts', '?')} prompts identical) | "
                 f"{accuracy.get('min_agreement', float('nan')):.1%} |"]
        if limit is not None and tps is not None:
            lines += ["", f"- min_tokens_per_s on this device: {'PASS' if tps >= limit else 'FAIL'} "
                          f"({row.get('artifact')} {tps:.0f} tokens/s vs {limit:g})"]
        return lines

    return device_section(
        devices, "Measured by the device's runner after each deploy: the shipped prompts decoded greedily and compared "
                 "with this machine's tokens from the same engine folder (a TensorRT-LLM engine, which only the device "
                 "builds, with torch's fp32 tokens) before `current` was switched, then batch-1 generation timed as "
                 "here.",
        ["| artifact | runtime | decode tok/s b1 | device / this machine | first token ms | greedy agreement with "
         "this machine | required |", "|---|---|---|---|---|---|---|"], row_lines)


def torch_results(ctx: StageContext) -> dict[str, Any]:
    """Without a benchmark stage: the torch models' scores as the training stages measured them."""
    from compress.measuring.environment import environment

    teacher = ctx.outputs["teacher"]
    rows = [{"artifact": f"{role}-torch", "role": role, "backend": "torch", "precision": "fp32",
             **ctx.outputs[role]["summary"], "scores": ctx.outputs[role]["scores"], "params": ctx.outputs[role]["params"]}
            for role in ("teacher", "baseline", "distill") if role in ctx.outputs]
    blocks = teacher["corpus"]["splits"][teacher["split"]]["blocks"]
    return {"rows": rows, "env": environment(None), "split": teacher["split"], "eval_blocks": blocks,
            "block_size": teacher["corpus"]["block_size"], "new_tokens": 0}


def device_built_lines(ctx: StageContext) -> list[str]:
    """Engines built on the device (TensorRT-LLM): what was checked here; their numbers come with the deploy."""
    built = {name: e for name, e in (ctx.outputs.get("build", {}).get("engines") or {}).items()
             if e.get("built_on") == "device"}
    if not built:
        return []
    lines = ["## Built on the device", ""]
    for name, engine in built.items():
        settings, parity = engine.get("tensorrt_llm") or {}, engine.get("parity") or {}
        lines.append(f"- {name}: TensorRT-LLM {settings.get('dtype', '?')} engine of the {settings.get('architecture', '?')}"
                     f" student (batch {settings.get('max_batch_size', '?')}, up to {settings.get('max_seq_len', '?')} "
                     f"tokens), built by the device from the {engine.get('size_mb', 0):.1f} MB folder; here torch in "
                     f"float16 decodes the fp32 greedy tokens on {parity.get('token_agreement', float('nan')):.0%} of "
                     f"positions. Deploy it with --runtime tensorrt: the device builds, checks and times it.")
    return lines + [""]


class LMReportStage(Stage):
    name = "report"
    reads = ("benchmark", "teacher", "prune", "baseline", "distill", "export", "build")

    def key_material(self, pipeline: PipelineConfig) -> dict[str, Any]:
        return {"gates": pipeline.gates.model_dump(mode="json"), "name": pipeline.name}

    def run(self, ctx: StageContext) -> dict[str, Any]:
        results = read_json(ctx.path(ctx.outputs["benchmark"]["results"])) if "benchmark" in ctx.outputs else \
            torch_results(ctx)
        rows = results["rows"]
        by_name = {r["artifact"]: r for r in rows}
        recommended = recommend(rows, ctx.pipeline)
        verdicts = gates(ctx.pipeline, by_name, recommended)
        kd, kd_summary = kd_lines(ctx)
        env = results["env"]
        lines = [f"# {ctx.pipeline.name}: causal LM deployment report", "",
                 f"Written by `compress run`. Perplexity is token-weighted on {results['eval_blocks']} held-out "
                 f"{results['split']} blocks of {results['block_size']} tokens (documents never split across "
                 f"train/val/test). Timings: {env.get('cpu', 'CPU')}, {env.get('threads', '?')} threads, "
                 f"{results['new_tokens']} new tokens per round, medians.", ""]
        if recommended:
            lines += [f"**Recommended: {recommended['artifact']}** ({recommended['perplexity']:.2f} perplexity, "
                      f"{recommended['decode_tokens_per_s'].get('1', 0):.0f} tokens/s at batch 1).", ""]
        lines += ["## Models and engines", ""] + model_table(rows) + [""]
        lines += ["Agreement: share of positions where the artifact's next token equals the teacher's. Engines' "
                  "perplexity comes from their own prefill logits, int4 included.", ""]
        lines += device_built_lines(ctx) + prune_lines(ctx) + kd
        quant = [(r, by_name.get(r["artifact"].rsplit("-", 1)[0] + "-fp32") or by_name.get("student-onnxruntime-fp32"))
                 for r in rows if r["role"] == "distill" and r["precision"] in ("int8", "int4")]
        quant = [(r, fp32) for r, fp32 in quant if fp32]
        if quant:
            lines += ["## What weight-only quantization cost", "",
                      "Each against the fp32 engine of its runtime (ONNX Runtime's where that runtime has none).", ""]
            for r, fp32 in quant:
                lines.append(f"- {r['artifact']}: perplexity {r['perplexity'] / fp32['perplexity'] - 1:+.1%}, size "
                             f"{r['size_mb'] / fp32['size_mb']:.2f}x, decode tokens/s "
                             f"{r['decode_tokens_per_s'].get('1', 0) / max(1e-9, fp32['decode_tokens_per_s'].get('1', 0)):.2f}x "
                             f"of fp32; greedy tokens agree with torch on "
                             f"{(r.get('parity') or {}).get('token_agreement', float('nan')):.0%} of positions")
            lines.append("")
        generations = results.get("generations") or {}
        if generations.get("prompts"):
            lines += ["## Generations (greedy, held-out prompts)", ""]
            for i, prompt in enumerate(generations["prompts"]):
                lines += [f"### Prompt {i + 1}", "", "```", prompt, "```", ""]
                for name, texts in generations["by"].items():
                    lines += [f"- {name}:", "```", texts[i], "```"]
                lines.append("")
        if verdicts:
            lines += ["## Gates", ""] + [f"- {g['gate']}: {'PASS' if g['passed'] else 'FAIL'} ({g['detail']})"
                                         for g in verdicts] + [""]
        report = {"recommended": recommended["artifact"] if recommended else None, "gates": verdicts,
                  "kd": kd_summary, "rows": rows, "min_tokens_per_s": ctx.pipeline.gates.min_tokens_per_s}
        publish_report(ctx.stage_dir, ctx.run_dir, "\n".join(lines), ctx.pipeline.name, report, device_lines)
        for g in verdicts:
            ctx.log(f"gate {g['gate']}: {'PASS' if g['passed'] else 'FAIL'} ({g['detail']})")
        return {"report": ctx.relative(ctx.stage_dir / "report.md"), "html": ctx.relative(ctx.stage_dir / "report.html"),
                "json": ctx.relative(ctx.stage_dir / "report.json"), "recommended": report["recommended"],
                "gates": verdicts, "gates_passed": all(g["passed"] for g in verdicts)}
