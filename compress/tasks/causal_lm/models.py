"""Causal LMs by name: `hf-config:llama|gpt2` sized by kwargs with random weights, `hf:FOLDER` read locally.

Models are plain transformers modules saved as Hugging Face folders (config.json, model.safetensors and the
tokenizer): the one form onnxruntime-genai's model builder, a device and a user's own tools all read. A student
can start from the teacher's every other layer (DistilGPT2's initialisation, Sanh et al. 2019).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from compress.core.errors import UsageError

# Our size names -> each config class's own, and the field that holds the positions.
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "llama": {"config": "LlamaConfig", "positions": "max_position_embeddings",
              "keys": {"layers": "num_hidden_layers", "hidden": "hidden_size", "heads": "num_attention_heads",
                       "kv_heads": "num_key_value_heads", "intermediate": "intermediate_size"}},
    "gpt2": {"config": "GPT2Config", "positions": "n_positions",
             "keys": {"layers": "n_layer", "hidden": "n_embd", "heads": "n_head", "intermediate": "n_inner"}},
}
DEFAULT_SIZES = {"layers": 4, "hidden": 256, "heads": 4}
SIZE_KEYS = {"positions"}  # beside the architecture's keys: the longest sequence (default: 4x the block size)


def check_lm_name(name: str) -> str | None:
    """None when `name` is a causal LM this task builds or reads, else why not."""
    if name.startswith("hf-config:"):
        arch = name.split(":", 1)[1]
        return None if arch in ARCHITECTURES else \
            f"unknown causal LM architecture '{arch}'; known: {', '.join(f'hf-config:{a}' for a in ARCHITECTURES)}"
    if name.startswith("hf:"):
        return hf_folder_problem(Path(name.split(":", 1)[1]))
    return f"'{name}' is not a causal LM: use hf-config:llama, hf-config:gpt2 or hf:FOLDER"


def hf_folder_problem(folder: Path) -> str | None:
    """Why a local Hugging Face folder is not a causal LM with weights (None when it is)."""
    config = folder / "config.json"
    if not config.is_file():
        return f"no config.json in {folder}"
    try:
        architectures = json.loads(config.read_text()).get("architectures") or []
    except (OSError, ValueError) as error:
        return f"{config} is not readable JSON: {error}"
    if not any(a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in architectures):
        return (f"{folder} holds {', '.join(architectures) or 'no architectures'}, not a causal LM head "
                "(an *ForCausalLM or *LMHeadModel); export the model with its language-model head")
    if not any(folder.glob("*.safetensors")):
        return f"no *.safetensors weights in {folder} (pickled .bin weights are not read: save with safetensors)"
    return None


def check_sizes(name: str, kwargs: dict[str, Any]) -> str | None:
    """Why kwargs cannot size an hf-config: model (an unknown key, heads not dividing hidden), or None."""
    if not name.startswith("hf-config:"):
        return f"kwargs size hf-config: models only; '{name}' brings its own config" if kwargs else None
    entry = ARCHITECTURES[name.split(":", 1)[1]]
    unknown = sorted(set(kwargs) - set(entry["keys"]) - SIZE_KEYS)
    if unknown:
        return f"{name} has no size '{unknown[0]}'; sizes: {', '.join([*entry['keys'], *SIZE_KEYS])}"
    sizes = {**DEFAULT_SIZES, **kwargs}
    if sizes["hidden"] % sizes["heads"]:
        return f"hidden {sizes['hidden']} is not a multiple of heads {sizes['heads']}"
    if sizes["heads"] % sizes.get("kv_heads", sizes["heads"]):
        return f"heads {sizes['heads']} is not a multiple of kv_heads {sizes['kv_heads']}"
    return None


def build_lm(name: str, kwargs: dict[str, Any], vocab_size: int, positions: int, eos_id: int = 0):
    """A causal LM of `name` with random weights (hf-config:) or its saved ones (hf:)."""
    import transformers

    if name.startswith("hf:"):
        folder = Path(name.split(":", 1)[1])
        problem = hf_folder_problem(folder)
        if problem:
            raise UsageError(problem)
        return transformers.AutoModelForCausalLM.from_pretrained(folder, dtype="float32")
    problem = check_sizes(name, kwargs)
    if problem:
        raise UsageError(problem)
    entry = ARCHITECTURES[name.split(":", 1)[1]]
    sizes = {**DEFAULT_SIZES, **kwargs}
    sizes.setdefault("intermediate", 4 * sizes["hidden"] if entry["config"] == "GPT2Config" else
                     _llama_intermediate(sizes["hidden"]))
    options = {entry["keys"][k]: v for k, v in sizes.items() if k in entry["keys"]}
    options[entry["positions"]] = int(sizes.get("positions", positions))
    config = getattr(transformers, entry["config"])(vocab_size=vocab_size, bos_token_id=eos_id, eos_token_id=eos_id,
                                                    tie_word_embeddings=False, **options)
    return getattr(transformers, entry["config"].replace("Config", "ForCausalLM" if "Llama" in entry["config"]
                                                         else "LMHeadModel"))(config)


def _llama_intermediate(hidden: int) -> int:
    """Llama's SwiGLU width: 8/3 of hidden rounded up to a multiple of 32."""
    return -(-int(hidden * 8 / 3) // 32) * 32


def decoder_layers(model):
    """The ModuleList of a causal LM's decoder blocks (Llama-style .model.layers, GPT-2's .transformer.h)."""
    for path in ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers"):
        owner = model
        for part in path.split("."):
            owner = getattr(owner, part, None)
        if owner is not None:
            return owner
    raise UsageError(f"{type(model).__name__}: cannot find its decoder layers to drop")


def keep_layers(teacher, keep: list[int]):
    """A copy of `teacher` with only the decoder layers `keep` (depth pruning, DistilGPT2's initialisation)."""
    import torch

    student = copy.deepcopy(teacher)
    layers = decoder_layers(student)
    kept = torch.nn.ModuleList([layers[i] for i in keep])
    for new_index, layer in enumerate(kept):  # Llama's attention indexes its KV cache by layer_idx
        attention = getattr(layer, "self_attn", None)
        if attention is not None and hasattr(attention, "layer_idx"):
            attention.layer_idx = new_index
    owner = student.model if hasattr(student, "model") and hasattr(student.model, "layers") else student.transformer
    setattr(owner, "layers" if hasattr(owner, "layers") else "h", kept)
    config = student.config
    for key in ("num_hidden_layers", "n_layer"):
        if hasattr(config, key):
            setattr(config, key, len(keep))
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in keep]
    return student


def every_other_layer(count: int) -> list[int]:
    """Layers 0, 2, 4, ... of `count` (DistilGPT2 kept every other of GPT-2's 12)."""
    return list(range(0, count, 2))


def count_layers(model) -> int:
    return len(decoder_layers(model))


def positions_of(model) -> int:
    config = model.config
    return int(getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions"))


def vocab_of(model) -> int:
    return int(model.config.vocab_size)


def save_lm(model, tokenizer_folder: Path, folder: Path) -> None:
    """A Hugging Face folder: weights (safetensors), config, generation defaults and the tokenizer files."""
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (Path(tokenizer_folder) / name).is_file():
            shutil.copy2(Path(tokenizer_folder) / name, folder / name)


def load_lm(folder: Path):
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(folder, dtype="float32")


def greedy_continuations(model, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    """The model's greedy new tokens for each prompt (up to and including an eos), as transformers decodes them."""
    import torch

    tokens = []
    with torch.no_grad():
        for prompt in prompts:
            ids = torch.tensor([prompt])
            out = model.generate(ids, max_new_tokens=new_tokens, do_sample=False, attention_mask=torch.ones_like(ids),
                                 pad_token_id=model.config.eos_token_id)
            tokens.append(out[0, len(prompt):].tolist())
    return tokens
