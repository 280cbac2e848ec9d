"""The causal LM's export and build stages: onnxruntime-genai model folders with a KV cache.

onnxruntime-genai's model builder writes the ONNX graph (GroupQueryAttention over past/present key-values,
MatMulNBits for int4/int8 weight-only), genai_config.json and the tokenizer into one folder that
onnxruntime-genai runs as is, and that deploy/runner/generation.py runs with plain ONNX Runtime where
onnxruntime-genai is not installed. Export builds the fp32 folders of the teacher and the student and checks
them against torch: prefill logits (max |diff|) and greedy tokens, which must be identical. Build adds the
weight-only int8/int4 folders and measures how often their greedy tokens agree with torch's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from compress.config import PipelineConfig, Strict
from compress.core.errors import StageFailed
from compress.stages.contract import Stage, StageContext

PRECISIONS = ("fp32", "int8", "int4")
TENSORRT_PRECISIONS = ("fp16",)  # TensorRT-LLM's engine, built on the device from the student's folder


class LMExportConfig(Strict):
    atol: float = Field(1e-3, gt=0, description="largest |prefill logit - torch's| of an fp32 folder")
    prompts: int = Field(4, ge=1, description="held-out prompts whose greedy tokens must equal torch's")
    prompt_tokens: int = Field(24, ge=2)
    new_tokens: int = Field(16, ge=1)


class LMBuildConfig(Strict):
    targets: list[str] = Field(["onnxruntime:fp32", "onnxruntime:int4"],
                               description="onnxruntime:fp32|int8|int4 (onnxruntime-genai, weight-only MatMulNBits), "
                                           "openvino:fp32|int8|int4 (stateful IR, NNCF weight compression, "
                                           "openvino-genai), tensorrt:fp16 (TensorRT-LLM, built on the device)")
    block_size: Literal[16, 32, 64, 128, 256] = Field(32, description="int4/int8: weights per quantization block "
                                                                      "(openvino int4: the group size)")
    quantize_embeddings: bool = Field(True, description="int4/int8: the token embedding table too, not only MatMuls")

    @field_validator("targets")
    @classmethod
    def _known(cls, targets: list[str]) -> list[str]:
        for target in targets:
            backend, _, precision = target.partition(":")
            if backend == "tensorrt" and precision in TENSORRT_PRECISIONS:
                continue
            if backend not in ("onnxruntime", "openvino") or precision not in PRECISIONS:
                raise ValueError(f"unknown target '{target}'; causal LMs: onnxruntime:{'|'.join(PRECISIONS)}, "
                                 f"openvino:{'|'.join(PRECISIONS)} or tensorrt:{'|'.join(TENSORRT_PRECISIONS)}")
        return targets


# One child process runs onnxruntime-genai's model builder (its own command line, `python -m ...builder`) once per
# folder: torch, transformers and onnx are imported once for them all.
_BUILDER_RUNS = """
import json, runpy, sys
for argv in json.loads(sys.argv[1]):
    sys.argv = ["builder"] + argv
    try:
        runpy.run_module("onnxruntime_genai.models.builder", run_name="__main__", alter_sys=True)
    except SystemExit as exit:
        if exit.code not in (None, 0):
            raise
"""


def build_folders(jobs: list[tuple[Path, Path, str]], block_size: int = 32, quantize_embeddings: bool = True) -> None:
    """Run onnxruntime-genai's model builder on Hugging Face folders, one (hf_folder, out, precision) per job, in one
    subprocess (its memory goes with it).

    int8/int4 quantize every MatMul's weights (MatMulNBits, accuracy level 4: int8 activations on CPU) and, with
    `quantize_embeddings`, the token embedding table too (GatherBlockQuantized): at a realistic vocabulary the
    table is a large share of a small model's bytes.
    """
    import shutil

    runs = []
    for hf_folder, out, precision in jobs:
        argv = ["-m", str(hf_folder), "-i", str(hf_folder), "-o", str(out), "-p", precision, "-e", "cpu",
                "-c", str(out.parent / f".cache-{out.name}")]
        if precision != "fp32":
            argv += ["--extra_options", f"block_size={block_size}", "accuracy_level=4",
                     f"op_types_to_quantize={'MatMul/Gather' if quantize_embeddings else 'MatMul'}"]
        runs.append(argv)
    done = subprocess.run([sys.executable, "-c", _BUILDER_RUNS, json.dumps(runs)], capture_output=True, text=True)
    for _, out, _ in jobs:
        shutil.rmtree(out.parent / f".cache-{out.name}", ignore_errors=True)
    # The jobs ran in order: the first without its genai_config.json is the one that failed.
    failed = next((job for job in jobs if not (job[1] / "genai_config.json").is_file()), None)
    if failed is not None or done.returncode != 0:
        hf_folder, _, precision = failed or jobs[-1]
        lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        raise StageFailed("build", f"onnxruntime-genai's model builder failed on {hf_folder.name} ({precision}): "
                                   f"{lines[-1] if lines else done.returncode}")
    from compress.stages.lm.older_runtimes import rewrite_for_older_runtimes

    for _, out, _ in jobs:  # what is checked and measured here is what an older device's runtime loads
        decoder = json.loads((out / "genai_config.json").read_text())["model"]["decoder"]
        rewrite_for_older_runtimes(out / decoder.get("filename", "model.onnx"))


def held_out_prompts(ctx: StageContext, count: int, length: int) -> list[list[int]]:
    """Token ids of `count` prompts: the lines of data.corpus.prompts, else the starts of held-out blocks."""
    from compress.stages.lm.model_stages import corpus_blocks, eval_split

    prompts_file = ctx.pipeline.data.corpus.prompts if ctx.pipeline.data.corpus else None
    if prompts_file is not None:
        from deploy.runner.generation import load_tokenizer

        tokenizer = load_tokenizer(str(ctx.path(ctx.outputs["teacher"]["tokenizer"])))
        return [tokenizer.encode(line) for line in read_prompts(Path(prompts_file), ctx.pipeline.source_file)[:count]]
    blocks = corpus_blocks(ctx, eval_split(ctx))
    step = max(1, len(blocks) // count)
    return [blocks[i * step][:length].tolist() for i in range(min(count, len(blocks)))]


def read_prompts(path: Path, config_file: str) -> list[str]:
    from compress.core.errors import ConfigError

    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(config_file, "data.corpus.prompts",
                          f"{path} is not UTF-8 text (byte 0x{data[error.start]:02x} at offset {error.start})") from None
    prompts = [line.replace("\\n", "\n") for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ConfigError(config_file, "data.corpus.prompts", f"{path} holds no prompt (one per line)")
    return prompts


def torch_reference(hf_folder: Path, prompts: list[list[int]], new_tokens: int) -> tuple[list, list]:
    """Torch's prefill logits and greedy continuation of every prompt."""
    import torch

    from compress.tasks.causal_lm.models import greedy_continuations, load_lm

    model = load_lm(hf_folder).eval()
    with torch.no_grad():
        logits = [model(input_ids=torch.tensor([prompt])).logits[0].numpy() for prompt in prompts]
    return logits, greedy_continuations(model, prompts, new_tokens)


def save_reference(path: Path, logits: list, tokens: list) -> None:
    """Torch's prefill logits and greedy tokens of each prompt, kept so later stages compare without rerunning."""
    arrays = {f"logits_{i}": a for i, a in enumerate(logits)}
    arrays.update({f"tokens_{i}": np.asarray(t, dtype=np.int64) for i, t in enumerate(tokens)})
    np.savez(path, **arrays)


def load_reference(path: Path) -> tuple[list, list]:
    with np.load(path) as data:
        count = sum(1 for key in data.files if key.startswith("logits_"))
        return [data[f"logits_{i}"] for i in range(count)], [data[f"tokens_{i}"].tolist() for i in range(count)]


def compare(folder: Path, prompts, reference_logits, reference_tokens, new_tokens: int) -> dict[str, Any]:
    """Max |prefill logit diff| and the share of greedy tokens equal to torch's (position by position)."""
    from deploy.runner.generation import greedy_agreement
    from deploy.runner.ov_generation import open_generator

    generator = open_generator(str(folder), backend="onnxruntime")
    diffs = [float(np.abs(generator.prefill_logits(prompt) - logits).max())
             for prompt, logits in zip(prompts, reference_logits)]
    found = greedy_agreement([generator.generate(prompt, new_tokens) for prompt in prompts], reference_tokens)
    return {"max_abs_diff": round(max(diffs), 6), "token_agreement": round(found["agreement"], 4),
            "identical_prompts": found["identical_prompts"], "prompts": len(prompts)}


def openvino_genai_check(folders: list[Path], prompts, new_tokens: int) -> list[int]:
    """Per folder, on how many prompts openvino-genai's own LLMPipeline decodes the very tokens this toolchain's
    loop does."""
    from compress.stages.lm.openvino_lm import genai_greedy
    from deploy.runner.ov_generation import open_generator

    counts = []
    for folder, theirs in zip(folders, genai_greedy(folders, prompts, new_tokens)):
        generator = open_generator(str(folder))
        ours = [generator.generate(p, new_tokens) for p in prompts]
        stops = set(generator.eos_ids)
        counts.append(sum(_same_greedy(a, b, stops) for a, b in zip(ours, theirs)))
    return counts


def _same_greedy(ours: list[int], theirs: list[int], stops: set[int]) -> bool:
    """The same greedy sequence: ours ends with the stop token when there is one; openvino-genai's may not."""
    return ours == theirs or (bool(ours) and ours[-1] in stops and ours[:-1] == theirs)


def folder_mb(folder: Path) -> float:
    return round(sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6, 3)


class LMExportStage(Stage):
    name = "export"
    Config = LMExportConfig
    optional = True
    reads = ("teacher", "distill")

    def run(self, ctx: StageContext) -> dict[str, Any]:
        cfg: LMExportConfig = ctx.config
        prompts = held_out_prompts(ctx, cfg.prompts, cfg.prompt_tokens)
        found = {}
        folders = {role: (ctx.path(ctx.outputs[role]["model"]),
                          ctx.stage_dir / f"{'teacher' if role == 'teacher' else 'student'}-onnxruntime-fp32")
                   for role in ("teacher", "distill")}
        build_folders([(hf_folder, out, "fp32") for hf_folder, out in folders.values()])
        for hf_folder, out in folders.values():
            logits, tokens = torch_reference(hf_folder, prompts, cfg.new_tokens)
            reference = ctx.stage_dir / f"{out.name}.reference.npz"
            save_reference(reference, logits, tokens)
            parity = compare(out, prompts, logits, tokens, cfg.new_tokens)
            ctx.log(f"{out.name}: prefill max |diff| {parity['max_abs_diff']:.2e}, greedy tokens identical on "
                    f"{parity['identical_prompts']}/{parity['prompts']} prompts")
            if parity["max_abs_diff"] > cfg.atol or parity["identical_prompts"] != parity["prompts"]:
                raise StageFailed("export", f"{out.name} differs from torch: prefill max |diff| "
                                            f"{parity['max_abs_diff']:.2e} (atol {cfg.atol:g}), greedy tokens identical "
                                            f"on {parity['identical_prompts']}/{parity['prompts']} prompts")
            found[out.name] = {"folder": ctx.relative(out), "parity": parity, "size_mb": folder_mb(out),
                               "reference": ctx.relative(reference)}
        return {"engines": found, "prompts": prompts}


class LMBuildStage(Stage):
    name = "build"
    Config = LMBuildConfig
    optional = True
    reads = ("export", "distill")

    def run(self, ctx: StageContext) -> dict[str, Any]:
        cfg: LMBuildConfig = ctx.config
        export = ctx.outputs["export"]
        prompts = export["prompts"]
        hf_folder = ctx.path(ctx.outputs["distill"]["model"])
        new_tokens = ctx.pipeline.stages["export"].new_tokens
        logits, tokens = load_reference(ctx.path(export["engines"]["student-onnxruntime-fp32"]["reference"]))
        openvino = {precision: ctx.stage_dir / f"student-openvino-{precision}" for backend, precision in
                    (target.split(":") for target in cfg.targets) if backend == "openvino"}
        if openvino:
            from compress.stages.lm.openvino_lm import export_openvino

            export_openvino(hf_folder, openvino, cfg.block_size)
            genai_counts = dict(zip(openvino, openvino_genai_check(list(openvino.values()), prompts, new_tokens)))
        onnxruntime = [(hf_folder, ctx.stage_dir / f"student-onnxruntime-{precision}", precision)
                       for backend, precision in (target.split(":") for target in cfg.targets)
                       if backend == "onnxruntime" and precision != "fp32"]
        if onnxruntime:
            build_folders(onnxruntime, cfg.block_size, cfg.quantize_embeddings)
        built = {}
        for target in cfg.targets:
            backend, precision = target.split(":")
            name = f"student-{backend}-{precision}"
            if backend == "onnxruntime" and precision == "fp32":
                built[name] = dict(export["engines"][name], precision=precision)
                continue
            if backend == "tensorrt":
                built[name] = self.tensorrt_folder(ctx, hf_folder, ctx.stage_dir / name, prompts, tokens, new_tokens)
                continue
            out = ctx.stage_dir / name
            parity = compare(out, prompts, logits, tokens, new_tokens)
            if backend == "openvino":
                parity["genai_identical_prompts"] = genai_counts[precision]
            ctx.log(f"{name}: greedy tokens agree with torch's fp32 on {parity['token_agreement']:.0%} of positions "
                    f"({parity['identical_prompts']}/{parity['prompts']} prompts identical), "
                    f"prefill max |diff| {parity['max_abs_diff']:.3f}"
                    + (f"; openvino-genai's LLMPipeline decodes the harness's tokens on "
                       f"{parity['genai_identical_prompts']}/{parity['prompts']} prompts" if backend == "openvino" else ""))
            exact = ctx.pipeline.stages["export"].atol
            if precision == "fp32" and (parity["max_abs_diff"] > exact or parity["identical_prompts"] != parity["prompts"]):
                raise StageFailed("build", f"{name} differs from torch: prefill max |diff| {parity['max_abs_diff']:.2e} "
                                           f"(atol {exact:g}), greedy tokens identical on "
                                           f"{parity['identical_prompts']}/{parity['prompts']} prompts")
            built[name] = {"folder": ctx.relative(out), "parity": parity, "size_mb": folder_mb(out),
                           "precision": precision}
        return {"engines": built}

    @staticmethod
    def tensorrt_folder(ctx: StageContext, hf_folder: Path, out: Path, prompts, tokens, new_tokens: int) -> dict:
        """The folder a device builds its TensorRT-LLM engine from; its float16 agreement measured here."""
        from compress.stages.lm.tensorrt_llm_prep import prepare_folder

        made = prepare_folder(hf_folder, out, prompts, tokens, new_tokens)
        parity = made["parity"]
        ctx.log(f"{out.name}: built on the device by TensorRT-LLM ({made['settings']['architecture']}, float16); "
                f"torch float16 here decodes the fp32 greedy tokens on {parity['token_agreement']:.0%} of positions")
        return {"folder": ctx.relative(out), "parity": parity, "size_mb": folder_mb(out), "precision": "fp16",
                "built_on": "device", "tensorrt_llm": made["settings"]}

    def key_material(self, pipeline: PipelineConfig) -> dict[str, Any]:
        return {"export": pipeline.stages["export"].model_dump()} if "export" in pipeline.stages else {}
