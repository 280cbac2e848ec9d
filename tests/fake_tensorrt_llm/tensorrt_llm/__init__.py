"""A stand-in for TensorRT-LLM's LLM API (the Jetson 0.12 layout: LLM, BuildConfig, SamplingParams at the top),
for machines without an NVIDIA GPU, where TensorRT-LLM cannot run.

It keeps the API's contract as the device code relies on it: `LLM(model=HF_FOLDER, tokenizer=..., dtype=...,
build_config=...)` "builds" (checks the architecture, keeps the build settings), `save(DIR)` writes an engine
folder, `LLM(model=ENGINE_DIR)` loads it, `generate([token_ids], sampling_params=...)` decodes greedily
(top_k 1 only) within max_seq_len and, as TensorRT-LLM, ends at `end_id` without returning it. The
arithmetic is torch's in float16, the engine's dtype. Not on the package path of the suite's own process: tests
put it on a device interpreter's PYTHONPATH.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

__version__ = "0.12.0"
ENGINE_FILE = "fake_engine.json"
SUPPORTED = ("LlamaForCausalLM", "GPT2LMHeadModel")


@dataclasses.dataclass
class BuildConfig:
    max_batch_size: int = 256
    max_input_len: int = 1024
    max_seq_len: int = 2048


@dataclasses.dataclass
class SamplingParams:
    max_new_tokens: int = 32  # the 0.12 spelling (max_tokens later)
    end_id: int | None = None
    top_k: int | None = None


@dataclasses.dataclass
class CompletionOutput:
    token_ids: list


@dataclasses.dataclass
class RequestOutput:
    prompt_token_ids: list
    outputs: list


class LLM:
    def __init__(self, model: str, tokenizer: str | None = None, dtype: str = "auto", build_config=None, **kwargs):
        import torch
        import transformers

        folder = Path(model)
        engine = folder / ENGINE_FILE
        if engine.is_file():
            self.settings = json.loads(engine.read_text())
        else:
            architectures = json.loads((folder / "config.json").read_text()).get("architectures") or []
            if not set(architectures) & set(SUPPORTED):
                raise ValueError(f"unsupported model architecture {architectures}")
            self.settings = {"dtype": dtype, "build_config": dataclasses.asdict(build_config or BuildConfig()),
                             "tokenizer": tokenizer}
        if self.settings["dtype"] != "float16":
            raise ValueError(f"this stand-in builds float16 engines, not {self.settings['dtype']}")
        self.source = folder
        self.model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float16).eval()

    def save(self, engine_dir: str) -> None:
        out = Path(engine_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name in ("config.json", "generation_config.json", "model.safetensors"):
            if (self.source / name).is_file():
                shutil.copy2(self.source / name, out / name)
        (out / ENGINE_FILE).write_text(json.dumps(self.settings))

    def generate(self, inputs, sampling_params: SamplingParams | None = None):
        import torch

        params = sampling_params or SamplingParams()
        if params.top_k != 1:
            raise ValueError("this stand-in decodes greedily only (top_k=1)")
        limit = self.settings["build_config"]["max_seq_len"]
        found = []
        for prompt in inputs:
            if len(prompt) + params.max_new_tokens > limit:
                raise ValueError(f"prompt + max_new_tokens over max_seq_len {limit}")
            ids = torch.tensor([list(prompt)])
            end = None if params.end_id is None or params.end_id < 0 else int(params.end_id)
            with torch.no_grad():
                out = self.model.generate(ids, max_new_tokens=params.max_new_tokens, do_sample=False,
                                          attention_mask=torch.ones_like(ids), eos_token_id=end,
                                          pad_token_id=end if end is not None else 0)
            tokens = out[0, len(prompt):].tolist()
            if end is not None and end in tokens:
                tokens = tokens[:tokens.index(end)]  # TensorRT-LLM leaves the end id out
            found.append(RequestOutput(list(prompt), [CompletionOutput(tokens)]))
        return found

    def shutdown(self) -> None:
        self.model = None
