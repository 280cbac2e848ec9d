"""A causal LM's TensorRT-LLM target: the folder a device builds its engine from, and what this machine checks of it.

A TensorRT-LLM engine is tied to the GPU and the TensorRT-LLM release that build it, so, like the image
classifiers' TensorRT engines, it is built on the device (deploy/runner/trtllm_device.py, TensorRT-LLM's LLM
API from a Hugging Face folder). Build writes `student-tensorrt-fp16/`: the student's Hugging Face folder
(config.json, safetensors weights, generation config, tokenizer) and `tensorrt_llm.json`, the engine's build
settings (float16, batch 1, the longest prompt and sequence the device will run). Checked here, without a GPU:
that TensorRT-LLM's LLM API builds the architecture, and how often torch in float16 (the engine's precision)
decodes the fp32 model's greedy tokens: the device's tokens are held to that agreement less the deploy's margin.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from compress.core.errors import StageFailed
from compress.core.fileio import read_json, write_json

SETTINGS_FILE = "tensorrt_llm.json"
# Hugging Face classes whose checkpoints TensorRT-LLM's LLM API converts (its supported-models list: Llama and
# Mistral, GPT-2, Qwen 2, Gemma, Phi, Falcon, GPT-J), by config.json's `architectures`.
ARCHITECTURES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "llama", "GPT2LMHeadModel": "gpt2",
                 "Qwen2ForCausalLM": "qwen", "GemmaForCausalLM": "gemma", "PhiForCausalLM": "phi",
                 "Phi3ForCausalLM": "phi3", "FalconForCausalLM": "falcon", "GPTJForCausalLM": "gptj"}
COPIED = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
          "special_tokens_map.json")


def architecture_of(hf_folder: Path) -> str:
    """config.json's architecture, refused in one line when TensorRT-LLM's LLM API cannot build it."""
    config = read_json(hf_folder / "config.json")
    names = config.get("architectures") or []
    known = [name for name in names if name in ARCHITECTURES]
    if not known:
        raise StageFailed("build", f"{hf_folder / 'config.json'}: architectures {names or 'unset'}: TensorRT-LLM's LLM "
                                   f"API builds {', '.join(sorted(ARCHITECTURES))}; drop the tensorrt target")
    return known[0]


def float16_tokens(hf_folder: Path, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    """Torch's greedy tokens of each prompt with the weights and activations in float16, as the engine runs."""
    import torch

    from compress.tasks.causal_lm.models import greedy_continuations, load_lm

    return greedy_continuations(load_lm(hf_folder).to(torch.float16).eval(), prompts, new_tokens)


def prepare_folder(hf_folder: Path, out: Path, prompts: list[list[int]], reference: list[list[int]],
                   new_tokens: int) -> dict[str, Any]:
    """Write the folder the device builds from and return its build settings and float16 agreement."""
    from deploy.runner.generation import greedy_agreement

    architecture = architecture_of(hf_folder)
    config = read_json(hf_folder / "config.json")
    max_seq_len = int(config.get("max_position_embeddings") or config["n_positions"])
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for name in COPIED:
        if (hf_folder / name).is_file():
            shutil.copy2(hf_folder / name, out / name)
    if not (out / "model.safetensors").is_file():
        raise StageFailed("build", f"{hf_folder}: no model.safetensors: TensorRT-LLM converts a safetensors checkpoint")
    longest_prompt = max(len(p) for p in prompts)
    settings = {"dtype": "float16", "max_batch_size": 1, "max_input_len": max(longest_prompt, max_seq_len // 2),
                "max_seq_len": max_seq_len, "architecture": architecture, "family": ARCHITECTURES[architecture]}
    write_json(out / SETTINGS_FILE, settings)
    found = greedy_agreement(float16_tokens(hf_folder, prompts, new_tokens), reference)
    parity = {"token_agreement": round(found["agreement"], 6), "identical_prompts": found["identical_prompts"],
              "prompts": found["prompts"], "measured_with": "torch float16 on this machine's CPU"}
    return {"settings": settings, "parity": parity}
