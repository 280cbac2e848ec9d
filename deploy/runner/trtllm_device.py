"""TensorRT-LLM on the device: the engine built from a causal LM release's Hugging Face folder, and greedy decoding.

A TensorRT-LLM engine is tied to the GPU and the TensorRT-LLM release that build it, so the bundle carries the
student's Hugging Face folder (`model/`: config.json, safetensors weights, tokenizer) and the build settings
(manifest `engine.settings`: dtype, max batch, input and sequence lengths); `runner.py build-engine` builds the
engine with TensorRT-LLM's LLM API and saves it into the release (`engine/`), and `smoke`, `bench` and `generate`
load it from there. The LLM API moved between releases: the TensorRT-engine LLM is tensorrt_llm._tensorrt_engine's
since 1.0 (tensorrt_llm.LLM became the PyTorch backend), tensorrt_llm.llmapi's from 0.13 and tensorrt_llm's (the
Jetson 0.12 branch); SamplingParams' length is `max_tokens`, `max_new_tokens` before. Both are looked up.
Python 3.8; tensorrt_llm is imported only here, when a release asks for it.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import time
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

try:  # on the host: the deploy.runner package
    from .generation import GenerationError, WholeGenerationGenerator, read_hf_settings
except ImportError:  # on the device: loaded from the release folder
    from generation import GenerationError, WholeGenerationGenerator, read_hf_settings


def llm_api():
    """(LLM, BuildConfig, SamplingParams, version) of the installed TensorRT-LLM."""
    try:
        root = importlib.import_module("tensorrt_llm")
    except ImportError as e:
        raise GenerationError(f"this release's engine is built by TensorRT-LLM: tensorrt_llm cannot be imported ({e})")
    found = {}
    for module_name in ("tensorrt_llm._tensorrt_engine", "tensorrt_llm.llmapi", "tensorrt_llm", "tensorrt_llm.hlapi"):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        for name in ("LLM", "BuildConfig", "SamplingParams"):
            if name not in found and hasattr(module, name):
                found[name] = getattr(module, name)
    missing = [name for name in ("LLM", "BuildConfig", "SamplingParams") if name not in found]
    if missing:
        raise GenerationError(f"tensorrt_llm {getattr(root, '__version__', '?')} has no LLM API here "
                              f"({', '.join(missing)} not found)")
    return found["LLM"], found["BuildConfig"], found["SamplingParams"], getattr(root, "__version__", "unknown")


def sampling_fields(sampling_params) -> set:
    if dataclasses.is_dataclass(sampling_params):
        return {field.name for field in dataclasses.fields(sampling_params)}
    return set(inspect.signature(sampling_params).parameters)


def greedy_params(sampling_params, max_new_tokens: int, end_id: Optional[int]):
    """Greedy (top_k 1) SamplingParams for max_new_tokens, stopping at end_id (-1: never), in either spelling."""
    fields = sampling_fields(sampling_params)
    length = "max_tokens" if "max_tokens" in fields else "max_new_tokens"
    return sampling_params(**{length: int(max_new_tokens), "top_k": 1, "end_id": -1 if end_id is None else int(end_id)})


def build_engine(release: Path, manifest: dict) -> dict:
    """Build the TensorRT-LLM engine of the release's Hugging Face folder and save it into the release."""
    engine = manifest.get("engine") or {}
    settings = engine.get("settings") or {}
    folder = release / manifest.get("model_folder", "model")
    out = release / engine.get("folder", "engine")
    llm_class, build_config_class, _, version = llm_api()
    config = build_config_class()
    for key in ("max_batch_size", "max_input_len", "max_seq_len"):
        if key in settings:
            setattr(config, key, int(settings[key]))
    started = time.perf_counter()
    try:
        llm = llm_class(model=str(folder), tokenizer=str(folder), dtype=settings.get("dtype", "float16"),
                        build_config=config)
        try:
            llm.save(str(out))
        finally:
            shutdown(llm)
    except Exception as error:  # TensorRT-LLM raises its own types, and CUDA's, one per failure kind
        raise GenerationError(f"TensorRT-LLM {version} could not build the engine of {folder}: {first_line(error)}") \
            from None
    seconds = round(time.perf_counter() - started, 3)
    if not out.is_dir() or not any(out.iterdir()):
        raise GenerationError(f"TensorRT-LLM {version} saved no engine into {out}")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {"seconds": seconds, "builder": "tensorrt_llm", "tensorrt_llm": version, "engine_mb": round(size / 1e6, 4),
            "settings": settings}


def first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def shutdown(llm) -> None:
    """Free the engine and its executor now (the LLM API starts worker processes), not at interpreter exit:
    `shutdown()` in current releases, the context manager's exit in 0.12's."""
    if hasattr(llm, "shutdown"):
        llm.shutdown()
    elif hasattr(llm, "__exit__"):
        llm.__exit__(None, None, None)


class TensorRTLLMGenerator(WholeGenerationGenerator):
    """Greedy decoding of the release's TensorRT-LLM engine, one prompt per call, with the stop id kept as the
    other generators keep it (TensorRT-LLM ends at end_id and may leave it out).

    The LLM API returns a generation when it is done: token_times takes the first token's time from a one-token
    generation and the last from the whole one (time to first token, then decode tokens/s over the rest); the
    times between are spread evenly, standing for no measurement of their own."""

    runtime = "TensorRT-LLM's LLM API"

    def __init__(self, release: Path, manifest: dict, threads: Optional[int] = None):
        model_folder = Path(release) / manifest.get("model_folder", "model")
        read_hf_settings(self, model_folder, threads)  # eos ids and vocabulary from the Hugging Face folder
        engine = manifest.get("engine") or {}
        self.folder = Path(release) / engine.get("folder", "engine")
        self.backend = "tensorrt-llm"
        self.context_length = int(engine.get("settings", {}).get("max_seq_len") or 0) or self.context_length
        if not self.folder.is_dir():
            raise GenerationError(f"{self.folder}: no TensorRT-LLM engine (python3 runner.py build-engine RELEASE)")
        llm_class, _, self._sampling, self.version = llm_api()
        try:
            self._llm = llm_class(model=str(self.folder), tokenizer=str(model_folder))
        except Exception as error:  # an engine built by another TensorRT-LLM or for another GPU, among others
            raise GenerationError(f"TensorRT-LLM {self.version} cannot load the engine in {self.folder}: "
                                  f"{first_line(error)}") from None
        self.providers = [f"TensorRT-LLM {self.version}"]

    def _once(self, prompt: List[int], max_new_tokens: int, end_id: Optional[int]) -> List[int]:
        params = greedy_params(self._sampling, max_new_tokens, end_id)
        (output,) = self._llm.generate([prompt], sampling_params=params)
        return [int(t) for t in output.outputs[0].token_ids]

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int, eos_id: Optional[int] = None) -> List[int]:
        rows = [[int(t) for t in prompt_ids]]
        self._check(rows, max_new_tokens)
        stops = self._stop_ids(eos_id)
        end_id = eos_id if eos_id is not None else (self.eos_ids[0] if self.eos_ids else None)
        tokens = self._once(rows[0], max_new_tokens, end_id)
        for i, token in enumerate(tokens):
            if token in stops:
                return tokens[:i + 1]
        if end_id is not None and len(tokens) < max_new_tokens:  # ended at end_id, which it left out
            tokens.append(int(end_id))
        return tokens

    def token_times(self, prompt_ids: Sequence[int], max_new_tokens: int,
                    eos_id: Optional[int] = None) -> Tuple[List[int], float, List[float]]:
        start = time.perf_counter()
        self.generate(prompt_ids, 1, eos_id)
        first = time.perf_counter() - start
        start = time.perf_counter()
        tokens = self.generate(prompt_ids, max_new_tokens, eos_id)
        last = time.perf_counter()
        if not tokens:
            return [], start, []
        times = list(np.linspace(start + first, last, len(tokens))) if len(tokens) > 1 else [start + first]
        return tokens, start, [float(t) for t in times]
